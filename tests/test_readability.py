"""What a user reads (issue 14): source lines in every output once asked
for, leak reports with exact sizes and every leak kind, stripped code
grouped by function, callers and callees in text.

Programs are compiled here, run under ``ctprof run`` as a user would, and
checked against what the programs themselves define or measure: the source
line of each ``malloc``, the bytes each site allocates, each call edge's CPU
time, the unstripped build's symbols for the stripped one's addresses.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import PROGS, ctprof, load_profile

SVG = "{http://www.w3.org/2000/svg}"


def line_of(source: str, text: str, after: str = "") -> int:
    """1-based line of the first line containing ``text`` (after the first
    line containing ``after``, when given) in tests/progs/``source``."""
    lines = open(os.path.join(PROGS, source)).read().splitlines()
    start = next(i for i, l in enumerate(lines) if after in l) if after else 0
    return next(i for i in range(start, len(lines)) if text in lines[i]) + 1


def run(tmp_path, *args, timeout=120):
    res = ctprof(["run", *args], cwd=str(tmp_path), timeout=timeout)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    return res


# -- leak report ------------------------------------------------------------------------------

def test_leak_report_names_source_lines_and_exact_bytes(build, tmp_path):
    """``run --mem --lines`` on a -g program: each leak's site as valgrind
    prints it (``leaks.c:32``), exact bytes beside the rounded figure,
    still-reachable sites listed like the lost ones."""
    exe = build("leaks.c", "-g")
    res = run(tmp_path, "--mem", "--lines", "-o", "l.ctprof", "--", exe)
    err = res.stderr.decode()
    big = line_of("leaks.c", "malloc(5000)")
    small = line_of("leaks.c", "malloc(100)")
    kept = line_of("leaks.c", "calloc(1, 256)")
    call_big = line_of("leaks.c", "leak_big();", after="int main")
    call_small = line_of("leaks.c", "leak_small();", after="int main")
    # leaks.c: 3 x 5000 bytes and 10 x 100 bytes lost, 4 x 256 bytes held by a global
    assert re.search(rf"15,000 bytes \(14\.6 KiB\) in +3 blocks definitely lost at: "
                     rf"leak_big \(leaks\.c:{big}\) <- main \(leaks\.c:{call_big}\)", err), err
    assert re.search(rf"1,000 bytes +in +10 blocks definitely lost at: "
                     rf"leak_small \(leaks\.c:{small}\) <- main \(leaks\.c:{call_small}\)", err), err
    assert re.search(rf"1,024 bytes \(1\.0 KiB\) +in +4 blocks still reachable at: keep_global \(leaks\.c:{kept}\)",
                     err), err
    # the totals line and the site tables carry exact bytes too
    assert re.search(r"still reachable [\d,]+ bytes", err)
    assert "1,048,576" in err           # the 1 MiB peak block, exactly
    assert "KiB bytes" not in err

    # `report` on the saved profile says the same
    rep = ctprof(["report", "l.ctprof", "--lines"], cwd=str(tmp_path))
    assert rep.returncode == 0, rep.stderr.decode()
    out = rep.stdout.decode()
    assert f"leak_big (leaks.c:{big}) <- main (leaks.c:{call_big})" in out
    assert "still reachable at: keep_global" in out
    # the function tables name files, one row per function
    assert re.search(r"leak_big \(leaks\.c\)\s+\[", out), out


def test_memory_run_prints_no_cpu_line_without_cpu_samples(build, tmp_path):
    exe = build("leaks.c", "-g")
    res = run(tmp_path, "--mem", "-o", "m.ctprof", "--", exe)
    profile, _ = load_profile(str(tmp_path / "m.ctprof"))
    err = res.stderr.decode()
    if profile.total("samples") == 0:      # leaks.c runs for a few ms: almost always
        assert "0 samples at" not in err and "0 Hz" not in err, err
    assert "definitely lost" in err


def test_report_headings_say_bytes_once(build, tmp_path):
    exe = build("leaks.c", "-g")
    run(tmp_path, "--mem", "-o", "m.ctprof", "--", exe)
    rep = ctprof(["report", "m.ctprof", "--metric", "reachable_bytes"], cwd=str(tmp_path))
    out = rep.stdout.decode()
    assert rep.returncode == 0, rep.stderr.decode()
    assert "KiB bytes" not in out
    # 4 x 256 bytes kept by the program's global, plus what libc keeps (stdio's buffer)
    heading = re.search(r"Top \d+ functions by self \(reachable_bytes: ([\d,]+) bytes", out)
    assert heading, out
    assert int(heading.group(1).replace(",", "")) >= 1024


# -- source lines in the graph and folded output ----------------------------------------------

@pytest.fixture(scope="module")
def callgraph_run(tmp_path_factory):
    """callgraph.c (-g) run once for 1.5 s at 999 Hz with --lines: (dir, stderr)."""
    from conftest import Built
    d = tmp_path_factory.mktemp("callgraph")
    exe = Built(str(d))("callgraph.c", "-g")
    res = ctprof(["run", "--hz", "999", "--lines", "-o", "cg.ctprof", "--svg", "cg.svg", "--folded", "cg.folded",
                  "--", exe, "1.5"], cwd=str(d))
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    return d, res.stderr.decode()


def _measured(stderr: str) -> dict:
    m = re.search(r"leaf_via_a=(\S+) leaf_via_b=(\S+) other=(\S+) total=(\S+)", stderr)
    assert m, stderr
    return dict(zip(("a", "b", "other", "total"), map(float, m.groups())))


def _boxes(svg_path: str):
    root = ET.parse(svg_path).getroot()
    frames = next(g for g in root.iter(f"{SVG}g") if g.get("id") == "frames")
    out = []
    for g in frames.findall(f"{SVG}g"):
        title = g.find(f"{SVG}title").text
        rect = g.find(f"{SVG}rect")
        out.append((title, float(rect.get("x")), float(rect.get("width")), float(rect.get("y"))))
    return out


def test_lines_merge_each_function_into_one_box(callgraph_run):
    d, err = callgraph_run
    folded = (d / "cg.folded").read_text().splitlines()
    # one frame per function, named with its file; every sample of the
    # program's work is under main (a sample may land in the process's
    # teardown after main returned: exit's own stack, seen once in a full
    # test run)
    work = [l for l in folded if ";exit (exit.c);" not in l]
    assert work and all("main (callgraph.c);" in l for l in work), [l for l in work if "main (callgraph.c);" not in l]
    assert any(l.rsplit(" ", 1)[0].endswith("caller_a (callgraph.c);leaf_work (callgraph.c)") for l in folded)
    assert not any(re.search(r"callgraph\.c:\d+", l) for l in folded)
    # the summary too
    assert "leaf_work (callgraph.c)" in err
    # the graph: tooltips carry the file; no function split into sibling
    # boxes with the same tooltip (main called from two lines is one box)
    boxes = _boxes(str(d / "cg.svg"))
    assert any(t.startswith("leaf_work (callgraph.c) (") for t, *_ in boxes)
    mains = [b for b in boxes if b[0].startswith("main (callgraph.c) (")]
    assert len(mains) == 1, mains
    by_row = {}
    for title, x, w, y in boxes:
        by_row.setdefault((y, title[:title.rfind(" (")]), []).append((x, w))

    def parent(x, w, y):
        """The box one level nearer the root (below) under the middle of a
        box (its edges touch the neighbours' parents too)."""
        mid = x + w / 2
        return next((b for b in boxes if b[3] == y + 16 and b[1] <= mid <= b[1] + b[2]), None)

    for (y, name), spans in by_row.items():
        for x, w in spans:
            for other_x, other_w in spans:
                if abs(x + w - other_x) < 0.01:     # adjacent: siblings if they share the parent
                    assert parent(x, w, y) != parent(other_x, other_w, y), \
                        f"{name!r} drawn as adjacent sibling boxes at y={y}"


def test_by_line_splits_frames_at_their_source_lines(callgraph_run):
    d, _ = callgraph_run
    res = ctprof(["folded", "cg.ctprof", "--by-line"], cwd=str(d))
    assert res.returncode == 0, res.stderr.decode()
    text = res.stdout.decode()
    call_a = line_of("callgraph.c", "caller_a(200000);")
    call_b = line_of("callgraph.c", "caller_b(200000);")
    assert f"main (callgraph.c:{call_a});caller_a (callgraph.c:" in text, text
    assert f"main (callgraph.c:{call_b});caller_b (callgraph.c:" in text, text
    # every line named lies inside the function it names
    first, last = line_of("callgraph.c", "double leaf_work"), line_of("callgraph.c", "double other_work")
    for n in re.findall(r"leaf_work \(callgraph\.c:(\d+)\)", text):
        assert first <= int(n) < last


def test_report_lines_resolves_a_profile_saved_without_them(build, tmp_path):
    exe = build("callgraph.c", "-g")
    run(tmp_path, "--hz", "499", "-o", "plain.ctprof", "--", exe, "0.3")
    plain, _ = load_profile(str(tmp_path / "plain.ctprof"))
    assert not any(f.file for f in plain.frames)     # saved without lines
    rep = ctprof(["report", "plain.ctprof", "--lines"], cwd=str(tmp_path))
    assert rep.returncode == 0, rep.stderr.decode()
    assert re.search(r"leaf_work \(callgraph\.c\)\s+\[", rep.stdout.decode()), rep.stdout.decode()
    # pprof keeps plain function names and puts the file in its own table
    exp = ctprof(["export", "plain.ctprof", "--format", "pprof", "--lines", "-o", "p.pb.gz"], cwd=str(tmp_path))
    assert exp.returncode == 0, exp.stderr.decode()
    import gzip
    from test_render import decode_pprof
    decoded = decode_pprof(gzip.decompress((tmp_path / "p.pb.gz").read_bytes()))
    assert any(s.endswith("callgraph.c") for s in decoded["strings"])
    assert any("leaf_work" in names for names, _ in decoded["samples"])


# -- callers and callees ----------------------------------------------------------------------

FOLDED = """\
main;a;leaf 10
main;b;leaf 30
main;b;other 60
main;r;r;leaf 5
"""


def _table(text: str, header: str):
    """{label: (value, share%)} of the table under the line starting with ``header``."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(header))
    rows = {}
    for l in lines[start + 2:]:
        if not l.strip():
            break
        m = re.match(r"\s*([\d,.]+)\s+([\d.]+)%\s+(.*)$", l)
        if m:
            rows[m.group(3).strip()] = (float(m.group(1).replace(",", "")), float(m.group(2)))
    return lines[start], rows


def test_callers_and_callees_of_a_folded_call_graph(tmp_path):
    (tmp_path / "g.folded").write_text(FOLDED)
    res = ctprof(["report", "g.folded", "--callers", "^leaf$", "--callees", "^(b|r)$"], cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode()
    head, rows = _table(out, "Callers of leaf")
    assert "45 samples" in head and "self 45 samples" in head
    assert rows == {"b": (30, 66.67), "a": (10, 22.22), "r": (5, 11.11)}
    head, rows = _table(out, "Callees of b")
    assert "90 samples" in head
    assert rows == {"other": (60, 66.67), "leaf": (30, 33.33)}
    # recursion: r calls r and leaf on one stack, counted once each
    head, rows = _table(out, "Callees of r")
    assert "5 samples" in head
    assert rows == {"r": (5, 100.0), "leaf": (5, 100.0)}


def test_callers_report_a_bad_regex_or_no_match_clearly(tmp_path):
    (tmp_path / "g.folded").write_text(FOLDED)
    bad = ctprof(["report", "g.folded", "--callers", "(oops"], cwd=str(tmp_path))
    assert bad.returncode != 0
    assert bad.stderr.decode().startswith("ctprof: error: --callers '(oops': invalid regular expression")
    assert "Traceback" not in bad.stderr.decode()
    none = ctprof(["report", "g.folded", "--callees", "nothing_like_this"], cwd=str(tmp_path))
    assert none.returncode == 0 and "No function matching 'nothing_like_this'" in none.stdout.decode()


def test_callers_match_the_programs_own_measurements(callgraph_run):
    """callgraph.c times each call edge itself; --callers leaf_work must
    split leaf_work's samples between caller_a and caller_b the same way."""
    d, err = callgraph_run
    truth = _measured(err)
    res = ctprof(["report", "cg.ctprof", "--callers", "^leaf_work", "--callees", "^caller_b"], cwd=str(d))
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode()
    head, rows = _table(out, "Callers of leaf_work")
    n = float(re.search(r": ([\d,]+) samples", head).group(1).replace(",", ""))
    assert n > 300, head
    expected_a = truth["a"] / (truth["a"] + truth["b"])
    sigma = math.sqrt(expected_a * (1 - expected_a) / n)
    share = {label.split()[0]: pct / 100 for label, (_, pct) in rows.items()}
    got_a = share["caller_a"]
    # 5 standard deviations of sampling noise plus 2 points for the
    # program's own clock reads inside the measured intervals
    assert abs(got_a - expected_a) <= 5 * sigma + 0.02, (got_a, expected_a, truth)
    assert abs(share["caller_b"] - (1 - expected_a)) <= 5 * sigma + 0.02
    head, rows = _table(out, "Callees of caller_b")
    expected_other = truth["other"] / (truth["other"] + truth["b"])
    m = float(re.search(r": ([\d,]+) samples", head).group(1).replace(",", ""))
    sigma = math.sqrt(expected_other * (1 - expected_other) / m)
    share = {label.split()[0]: pct / 100 for label, (_, pct) in rows.items()}
    assert abs(share["other_work"] - expected_other) <= 5 * sigma + 0.02, (rows, truth)


# -- stripped code ----------------------------------------------------------------------------

def test_stripped_library_is_grouped_by_function(build, tmp_path):
    """A stripped library's static functions have no symbols: each must be
    one frame named ``lib+0xSTART`` at the function's start (from its FDE),
    with exactly the samples the unstripped build's symbols give the same
    addresses."""
    strip = shutil.which("strip")
    if not strip:
        pytest.skip("strip (binutils) is not installed")
    lib = build("stripped_lib.c", shared=True)
    stripped = str(tmp_path / "libstripped.so")
    shutil.copy(lib, stripped)
    subprocess.run([strip, "--strip-all", stripped], check=True)
    exe = build("stripped_main.c")
    run(tmp_path, "--hz", "999", "-o", "s.ctprof", "--", exe, stripped, "300")
    profile, session = load_profile(str(tmp_path / "s.ctprof"))

    from ctprof.symbols import elf, resolve_session
    symbols = elf.load_module(lib, debug_dirs=())
    starts = {symbols.table.name(i): symbols.table.starts[i] for i in range(len(symbols.table))}

    def leaf_values(p, module):
        out = {}
        for stack, v in zip(p.stacks, p.values["samples"]):
            if stack and p.frames[stack[-1]].module == module:
                name = p.frames[stack[-1]].name
                out[name] = out.get(name, 0) + v
        return out

    grouped = leaf_values(profile, "libstripped.so")
    assert sum(grouped.values()) > 200, grouped
    # without grouping, each sampled instruction is its own row (the barcode)
    raw = leaf_values(resolve_session(session, progress=False, group_functions=False), "libstripped.so")
    assert len(raw) > 3 * len(grouped), (raw, grouped)
    # The same raw addresses named by the unstripped file: point the maps
    # at it (same code, same addresses) and resolve again.
    st = os.stat(lib)
    for proc in session.processes.values():
        proc.maps = [re.sub(r"^(\S+ \S+ \S+ \S+ )\d+(\s+)" + re.escape(stripped) + "$",
                            lambda m: m.group(1) + str(st.st_ino) + m.group(2) + lib, text, flags=re.M)
                     for text in proc.maps]
    named = leaf_values(resolve_session(session, progress=False), os.path.basename(lib))
    assert set(named) <= {"mix_a", "mix_b", "mix_c", "lib_work"}, named
    expected = {f"libstripped.so+{starts[name]:#x}" if name != "lib_work" else "lib_work": value
                for name, value in named.items()}
    assert grouped == expected


# -- the flame graph page in a browser --------------------------------------------------------

def _tall_profile():
    """About 5 MB of SVG, 140 levels deep: a graph much taller than a window."""
    import random
    from ctprof.render import parse_folded
    rng = random.Random(14)
    lines = []
    for _ in range(600):
        depth = rng.randint(20, 140)
        lines.append(";".join(["main"] + [f"fn_{rng.randint(0, 40)}_{d % 5}" for d in range(depth)])
                     + f" {rng.randint(1, 50)}")
    profile = parse_folded(lines, label="tall")
    profile.metadata["command"] = ["./tall", "--steps", "9"]
    return profile


@pytest.mark.parametrize("window", [(700, 500), (1400, 900)])
def test_flame_graph_page_fits_the_window(tmp_path, window):
    """In headless Chromium: the graph is as wide as the window (and follows
    it), opens at its base, keeps title, Search, legend, details and
    "Matched" in view at the base and at the top, and answers a search made
    while the page is still loading."""
    from test_browser import _expected_match, _frames, _requirements, _run
    node = _requirements()
    from ctprof.render import write_svg
    profile = _tall_profile()
    svg = tmp_path / "tall.svg"
    write_svg(profile, str(svg), minwidth=0)
    assert svg.stat().st_size > 3_000_000
    regex = "^fn_1_"
    w, h = window
    r = _run(node, "page.js", str(svg), str(w), str(h), regex, str(tmp_path / "page.png"))
    assert r["errors"] == [] and r["requests"] == []
    # the search asked for at once, before the viewer had read the frames, was kept
    assert r["dialogs"] == 1
    pct = float(r["atLoad"]["matched"]["text"].removeprefix("Matched: ").rstrip("%"))
    assert pct == pytest.approx(_expected_match(list(_frames(svg)), regex, profile.total()), abs=0.01)

    def in_view(box, state):
        return (box["left"] >= 0 and box["right"] <= state["innerWidth"] + 0.5
                and box["top"] >= 0 and box["bottom"] <= state["innerHeight"] + 0.5)

    for state in (r["atLoad"], r["atTop"], r["resized"]):
        assert state["svgWidth"] == state["innerWidth"]                      # width follows the window
        for control in ("title", "search", "legend", "matched"):
            assert in_view(state[control], state), (control, state[control], state)
    load = r["atLoad"]
    assert load["svgHeight"] > 2 * h
    # opened at the base: scrolled to the bottom, the root frame in view
    assert load["scrollY"] == pytest.approx(load["svgHeight"] - h, abs=1)
    assert in_view(load["root"], load)
    assert load["title"]["text"] == "Flame Graph: ./tall --steps 9 (samples)"
    assert load["legend"]["text"].startswith("colours:")
    # hovering the root: the details line says so, in view
    assert r["details"].startswith("all (")
    assert 0 <= r["detailsBox"]["top"] and r["detailsBox"]["bottom"] <= h
    assert r["atTop"]["scrollY"] == 0
    assert r["resized"]["innerWidth"] == int(w * 0.75)


def test_small_things(tmp_path):
    """A mistyped command names the closest one; --hz gives one message
    for every rate out of range."""
    proc = ctprof(["rn", "true"], cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == ("ctprof: error: unknown command 'rn': did you mean 'run'? "
                                            "(commands: run, svg, folded, report, export, diff, attach)")
    for hz in ("0", "5", "200000", "nan"):
        proc = ctprof(["run", "--hz", hz, "--", "true"], cwd=str(tmp_path))
        assert proc.returncode == 2
        assert proc.stderr.decode().strip() == f"ctprof: error: --hz {hz} is out of range (10 to 100000 Hz)"
