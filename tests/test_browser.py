"""The SVG flame graph and the speedscope export in a real browser.

Debian's headless ``/usr/bin/chromium`` driven by playwright-core (installed
by ``npm ci`` in tests/browser; it never downloads a browser).  Locally the
tests skip with the reason when chromium, node or playwright-core are
missing; with ``CI`` set they fail instead, so CI never silently skips them.
Screenshots go to pytest's tmp directory (path printed with ``-s``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from ctprof.render import export, load_any, write_svg
from ctprof.render.top import function_totals

HERE = os.path.dirname(os.path.abspath(__file__))
BROWSER_DIR = os.path.join(HERE, "browser")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _requirements() -> str:
    """Node binary path; skips (or fails under CI) when something is missing."""
    node = shutil.which("node")
    missing = []
    if not node:
        missing.append("node (apt-get install nodejs)")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")):
        missing.append("playwright-core (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci)")
    if missing:
        reason = "browser test needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set: this test must run, not skip)")
        pytest.skip(reason)
    return node


def _run(node: str, script: str, *args: str) -> dict:
    env = dict(os.environ, CHROMIUM=CHROMIUM, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
    res = subprocess.run([node, os.path.join(BROWSER_DIR, script), *args], capture_output=True, text=True,
                         timeout=90, cwd=BROWSER_DIR, env=env)
    assert res.returncode == 0, f"{script} failed:\n{res.stderr[-3000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def _png_size(path: str):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "screenshot is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _expected_match(frames, regex: str, total: int) -> float:
    """What "Matched:" must say: matched boxes, nested ones counted once."""
    import re
    hits = sorted((f for f in frames if re.search(regex, f["name"])), key=lambda f: (f["x"], -f["width"]))
    count, end = 0, -1.0
    for f in hits:
        if f["x"] >= end - 0.002:
            count += int(f["value"])
            end = f["x"] + f["width"]
    return round(100.0 * count / total, 2)


def test_svg_zoom_reset_search_in_chromium(tmp_path):
    node = _requirements()
    profile = load_any(os.path.join(HERE, "data", "realistic.folded"))
    svg = tmp_path / "flame.svg"
    write_svg(profile, str(svg), title="ctprof browser test")
    shot = tmp_path / "flame.png"
    regex = "^Particle::|resolve_contact"
    r = _run(node, "drive.js", str(svg), str(shot), "Simulation::collide()", regex)

    assert r["errors"] == [] and r["requests"] == []
    # only our search prompt: the frame named <script>alert(1)</script> ran nothing
    assert r["dialogs"] == 1 and r["dialogType"] == "prompt"
    initial = {f["name"]: f for f in r["initial"]}
    zoomed = {f["name"]: f for f in r["zoomed"]}
    target = "Simulation::collide()"
    # collide() has one caller, so its box holds the function's whole total
    _, totals, grand = function_totals(profile)
    value = totals[(target, "")]
    unit = profile.unit(profile.default_metric())
    assert r["details"] == f"{target} ({value:,} {unit}, {100.0 * value / grand:.2f}%)"
    # clicked frame fills the width, its children widen in proportion,
    # ancestors are shown faded at full width, everything else hidden
    assert zoomed[target]["width"] == pytest.approx(1180, abs=0.01)
    assert zoomed[target]["x"] == pytest.approx(10, abs=0.01)
    scale = 1180 / initial[target]["width"]
    child = zoomed["Grid::neighbours(int, int)"]
    assert child["cls"] == ""
    assert child["width"] == pytest.approx(initial["Grid::neighbours(int, int)"]["width"] * scale, rel=1e-3)
    assert child["width"] > initial["Grid::neighbours(int, int)"]["width"] * 2
    assert child["label"] == "Grid::neighbours(int, int)"
    for ancestor in ("all", "_start", "main", "run_simulation", "Simulation::step(double)"):
        assert zoomed[ancestor]["cls"] == "parent" and zoomed[ancestor]["width"] == pytest.approx(1180, abs=0.01)
    for other in ("load_config", "checkpoint", "Simulation::integrate(std::vector<Particle, "
                  "std::allocator<Particle> >&, double)", "interpreter"):
        assert zoomed[other]["cls"] == "hide"
    assert r["unzoomClassWhenZoomed"] == ""
    # reset restores every box
    assert r["unzoomClassAfterReset"] == "hide"
    assert len(r["reset"]) == len(r["initial"]) > 0
    for before, after in zip(r["initial"], r["reset"]):
        assert (after["x"], after["width"], after["cls"]) == (before["x"], before["width"], "")
    # search: highlight and "Matched: x%"
    pct = float(r["matched"].removeprefix("Matched: ").rstrip("%"))
    assert pct == pytest.approx(_expected_match(list(_frames(svg)), regex, profile.total()), abs=0.01)
    highlighted = {f["name"] for f in r["searched"] if f["fill"] == "#e600e6"}
    assert highlighted == {"Particle::update(double)", "resolve_contact(Particle&, Particle&)"}
    width, height = _png_size(str(shot))
    assert width == 1200 and height > 200
    print(f"\nflame graph screenshot: {shot}")


def _frames(svg_path):
    """(name, x, width, value) of every frame box in the SVG file."""
    import xml.etree.ElementTree as ET
    ns = "{http://www.w3.org/2000/svg}"
    root = ET.parse(str(svg_path)).getroot()
    for g in root.find(f".//{ns}g[@id='frames']").findall(f"{ns}g"):
        title = g.find(f"{ns}title").text
        rect = g.find(f"{ns}rect")
        cut = title.rfind(" (")
        yield {"name": title[:cut], "x": float(rect.get("x")), "width": float(rect.get("width")),
               "value": int(title[cut + 2:].split(" ")[0].replace(",", ""))}


def test_speedscope_export_opens_in_speedscope(tmp_path):
    node = _requirements()
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "speedscope", "dist", "release")):
        reason = "npm package speedscope not installed in tests/browser"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    profile = load_any(os.path.join(HERE, "data", "realistic.folded"))
    profile.metadata["command"] = ["./simulate", "--steps", "100"]
    out = tmp_path / "p.speedscope.json"
    export(profile, str(out), "speedscope")
    r = _run(node, "speedscope.js", str(out), str(tmp_path / "speedscope.png"))
    assert r["errors"] == [] and r["requests"] == []
    assert r["title"] == "./simulate --steps 100 - speedscope"
    _png_size(str(tmp_path / "speedscope.png"))
