"""Renderers: SVG structure (parsed as XML), folded round trips and errors,
top-N, speedscope (schema), pprof (own decoder + go tool pprof), diff,
processors and the view commands.

Golden files: inputs in tests/data, expected outputs in tests/expected
(SVG as a pretty-printed frame list, script left out).  Refresh them with
``CTPROF_BLESS=1 python -m pytest tests/test_render.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from ctprof.errors import CtprofError, FormatError, UsageError
from ctprof.profile import Frame, Profile
from ctprof import processors
from ctprof.render import (RENDERERS, SvgOptions, export, load_any, parse_folded, svg_text, top_text,
                           write_folded, write_svg)
from ctprof.render.diff import diff_svg_text
from ctprof.render.folded import folded_lines
from ctprof.render.pprof import pprof_bytes
from ctprof.render.speedscope import speedscope_document
from ctprof.render.top import function_totals

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
EXPECTED = os.path.join(HERE, "expected")
SVG = "{http://www.w3.org/2000/svg}"
BLESS = os.environ.get("CTPROF_BLESS") == "1"
IN_CI = bool(os.environ.get("CI"))


def data(name: str) -> str:
    return os.path.join(DATA, name)


def folded_profile(text: str, label: str = "<test>") -> Profile:
    return parse_folded(io.StringIO(text), label)


# -- SVG helpers ---------------------------------------------------------------

def svg_frames(markup: str):
    """Frames of a generated SVG as dicts (name, value, x, y, width, fill,
    label), in document order."""
    root = ET.fromstring(markup.encode("utf-8"))
    group = root.find(f".//{SVG}g[@id='frames']")
    assert group is not None
    out = []
    for g in group.findall(f"{SVG}g"):
        title = g.find(f"{SVG}title").text
        rect = g.find(f"{SVG}rect")
        text = g.find(f"{SVG}text")
        cut = title.rfind(" (")
        value = int(re.match(r"[\d,]+", title[cut + 2:]).group(0).replace(",", ""))
        out.append({"name": title[:cut], "title": title, "value": value,
                    "x": float(rect.get("x")), "y": float(rect.get("y")), "width": float(rect.get("width")),
                    "fill": rect.get("fill"), "label": text.text if text is not None else ""})
    return root, out


def golden(name: str, actual: str) -> None:
    path = os.path.join(EXPECTED, name)
    if BLESS or not os.path.exists(path):
        if not BLESS and IN_CI:
            pytest.fail(f"golden file {path} missing (run with CTPROF_BLESS=1)")
        os.makedirs(EXPECTED, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(actual)
        return
    with open(path, encoding="utf-8") as f:
        expected = f.read()
    assert actual == expected, f"{name} differs from golden file (CTPROF_BLESS=1 to refresh)"


def pretty_svg(markup: str) -> str:
    """Stable text form of an SVG for golden files: header texts and one
    line per frame; the script is left out."""
    root, frames = svg_frames(markup)
    lines = [f"size {root.get('width')}x{root.get('height')}"]
    for el in root.findall(f"{SVG}text"):
        if el.get("id") in ("title", "subtitle", "nosamples"):
            lines.append(f"{el.get('id')}: {el.text}")
    for f in frames:
        lines.append(f"y={f['y']:g} x={f['x']:.3f} w={f['width']:.3f} {f['fill']} {f['title']!r} label={f['label']!r}")
    return "\n".join(lines) + "\n"


SIMPLE = """\
main;foo;bar 10
main;foo;baz 5
main;alpha 3
main;zeta;bar 2
"""


# -- SVG structure -------------------------------------------------------------

def test_widths_proportional_to_counts():
    markup = svg_text(folded_profile(SIMPLE))
    _, frames = svg_frames(markup)
    total = 20
    full = 1200 - 20
    by_name = {}
    for f in frames:
        assert f["width"] == pytest.approx(f["value"] * full / total, abs=0.002)
        by_name.setdefault(f["name"], []).append(f)
    assert by_name["all"][0]["value"] == 20
    assert by_name["main"][0]["value"] == 20
    assert by_name["foo"][0]["value"] == 15
    assert sorted(f["value"] for f in by_name["bar"]) == [2, 10]
    # children lie within their parents and start at the parent's left edge
    foo = by_name["foo"][0]
    bar_in_foo = min(by_name["bar"], key=lambda f: f["x"])
    assert bar_in_foo["x"] == pytest.approx(foo["x"], abs=0.002)
    assert bar_in_foo["y"] == foo["y"] - 16


def test_frames_sorted_alphabetically_within_level():
    text = "r;delta 1\nr;Alpha 7\nr;beta 2\nr;alpha 1\nr;charlie;z 3\nr;charlie;a 4\nr;a b 1\n"
    _, frames = svg_frames(svg_text(folded_profile(text)))
    level = sorted((f for f in frames if f["y"] == frames[0]["y"] - 32), key=lambda f: f["x"])
    names = [f["name"] for f in level]
    assert names == sorted(names) == ["Alpha", "a b", "alpha", "beta", "charlie", "delta"]
    kids = sorted((f for f in frames if f["y"] == frames[0]["y"] - 48), key=lambda f: f["x"])
    assert [f["name"] for f in kids] == ["a", "z"]


def test_inverted_layout_is_icicle():
    text = "main;foo;leaf 3\nmain;bar;leaf 2\nmain;bar 1\n"
    profile = folded_profile(text)
    markup = svg_text(processors.invert(profile), SvgOptions(inverted=True))
    root, frames = svg_frames(markup)
    ys = sorted({f["y"] for f in frames})
    top = [f for f in frames if f["y"] == ys[0]]
    assert [f["name"] for f in top] == ["all"]          # root drawn at the top
    second = {f["name"]: f["value"] for f in frames if f["y"] == ys[1]}
    assert second == {"bar": 1, "leaf": 5}              # leaves merged
    third = {f["name"]: f["value"] for f in frames if f["y"] == ys[2]}
    assert third == {"bar": 2, "foo": 3, "main": 1}
    assert root.find(f"{SVG}text[@id='title']").text == "Icicle Graph"
    assert "inverted" in root.find(f"{SVG}text[@id='subtitle']").text
    # write_svg(inverted=True) reverses the stacks itself
    buf = io.StringIO()
    write_svg(profile, buf, inverted=True)
    assert svg_frames(buf.getvalue())[1] == frames


NASTY = ["<script>alert(1)</script>", "a&b<c>", "\"quoted\" 'single'", "]]><script>alert(2)</script>",
         "ctl\x01\x1fchar", "</title><script>alert(3)</script>"]


def test_every_name_escaped():
    text = "".join(f"main;{name} {i + 1}\n" for i, name in enumerate(NASTY))
    markup = svg_text(folded_profile(text), SvgOptions(title="<b>t&t</b>", countname="</script><x>"))
    root, frames = svg_frames(markup)
    scripts = [el for el in root.iter() if el.tag.endswith("script")]
    assert len(scripts) == 1 and scripts[0].get("type") == "text/ecmascript"
    assert "alert" not in scripts[0].text
    assert "\\u003c/script\\u003e" in scripts[0].text     # countname as JSON, escaped
    allowed = {"svg", "defs", "linearGradient", "stop", "style", "rect", "text", "g", "title", "script"}
    assert {el.tag.replace(SVG, "") for el in root.iter()} <= allowed
    names = {f["name"] for f in frames}
    for name in NASTY:
        assert name.replace("\x01", "\ufffd").replace("\x1f", "\ufffd") in names
    assert root.find(f"{SVG}text[@id='title']").text == "<b>t&t</b>"
    assert "<script>alert" not in markup and "<x>" not in markup


def test_empty_profile_says_no_samples():
    for profile in (Profile(), folded_profile("# nothing\n\n"),
                    Profile(frames=[Frame("f")], stacks=[(0,)], values={"samples": [0]})):
        root, frames = svg_frames(svg_text(profile))
        assert frames == []
        assert root.find(f"{SVG}text[@id='nosamples']").text == "no samples"
        assert top_text(profile).startswith("No ")
        if profile.values:
            assert folded_lines(profile) == []
        else:               # no value column at all: nothing to fold
            with pytest.raises(UsageError):
                folded_lines(profile)
        doc = speedscope_document(profile)
        assert doc["profiles"][0]["samples"] == []
        assert decode_pprof(pprof_bytes(profile))["samples"] == []


def test_truncated_labels_and_hover_titles():
    long = "ns::Class::very_long_method_name_that_will_not_fit(std::map<int, std::string> const&)"
    _, frames = svg_frames(svg_text(folded_profile(f"main;{long} 1\nmain;other 99\n")))
    f = next(f for f in frames if f["name"] == long)
    assert f["label"] == "" or f["label"].endswith("..")
    assert f["title"] == f"{long} (1 samples, 1.00%)"
    wide = svg_frames(svg_text(folded_profile(f"main;{long} 60\nmain;other 40\n")))[1]
    f = next(f for f in wide if f["name"] == long)
    assert f["label"] == long
    mid = svg_frames(svg_text(folded_profile(f"main;{long} 8\nmain;other 92\n")))[1]
    f = next(f for f in mid if f["name"] == long)
    assert f["label"].endswith("..") and long.startswith(f["label"][:-2]) and len(f["label"]) >= 3


def test_subtitle_says_share_not_time_and_unit():
    root, _ = svg_frames(svg_text(folded_profile(SIMPLE)))
    sub = root.find(f"{SVG}text[@id='subtitle']").text
    assert "share of 20 samples" in sub and "not time" in sub
    mem = memory_profile()
    root, frames = svg_frames(svg_text(mem, SvgOptions(metric="leaked_bytes")))
    sub = root.find(f"{SVG}text[@id='subtitle']").text
    assert "bytes of leaked_bytes" in sub and "not time" in sub
    assert all("bytes," in f["title"] for f in frames)


def memory_profile() -> Profile:
    p = Profile(metadata={"kind": "memory", "default_metric": "alloc_bytes",
                          "units": {"alloc_bytes": "bytes", "alloc_count": "allocations", "leaked_bytes": "bytes"}})
    main = Frame("main", "prog", "program")
    make = Frame("make_buffer(unsigned long)", "prog", "program")
    malloc = Frame("malloc", "libc.so.6", "library")
    p.add([main, make, malloc], {"alloc_bytes": 4096 * 1024, "alloc_count": 10, "leaked_bytes": 4096})
    p.add([main, malloc], {"alloc_bytes": 1000, "alloc_count": 100, "leaked_bytes": 0})
    return p


def test_colours_by_category_stable_and_memory_palette():
    cpu = Profile()
    for cat in ("program", "library", "kernel", "jit", "unknown"):
        cpu.add([Frame("main", "prog", "program"), Frame(f"f_{cat}", "m", cat)], {"samples": 5})
    _, frames = svg_frames(svg_text(cpu))
    fill = {f["name"]: f["fill"] for f in frames}

    def rgb(h):
        return tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))
    r, g, b = rgb(fill["f_program"])
    assert r >= 205 and b <= 55                      # warm
    r, g, b = rgb(fill["f_library"])
    assert b > r                                     # cool
    r, g, b = rgb(fill["f_unknown"])
    assert r == g                                    # grey
    assert len({fill["f_kernel"], fill["f_jit"], fill["f_program"], fill["f_library"]}) == 4
    # stable across runs and profiles
    again = {f["name"]: f["fill"] for f in svg_frames(svg_text(cpu))[1]}
    assert again == fill
    mem = {f["name"]: f["fill"] for f in svg_frames(svg_text(memory_profile()))[1]}
    r, g, b = rgb(mem["main"])
    assert g > r                                     # memory palette: greens
    assert mem["main"] != fill["main"]


def test_deep_stack_stays_usable():
    depth = 1500
    line = ";".join(f"recurse_{i % 7}" for i in range(depth))
    markup = svg_text(folded_profile(f"{line} 5\nshallow 5\n"))
    root, frames = svg_frames(markup)
    assert len(frames) == depth + 2
    assert int(root.get("height")) == 74 + (depth + 1) * 16 + 34   # title, subtitle and legend above
    assert len(markup) < 400_000


def synthetic_folded(n_stacks: int, seed: int = 1, min_depth: int = 10, max_depth: int = 40) -> str:
    rnd = random.Random(seed)
    names = [f"ns{i % 13}::function_{i}(int, std::string const&)" for i in range(2000)]
    lines = []
    for i in range(n_stacks):
        depth = rnd.randint(min_depth, max_depth)
        stack = ["main"] + [names[int(rnd.paretovariate(1.2) * 7) % len(names)] for _ in range(depth - 2)]
        stack.append(f"leaf_{i}")
        lines.append(";".join(stack) + f" {rnd.randint(1, 50)}")
    return "\n".join(lines) + "\n"


def test_huge_profile_pruned_and_bounded(tmp_path):
    path = tmp_path / "huge.folded"
    path.write_text(synthetic_folded(100_000, min_depth=5, max_depth=20))
    t0 = time.perf_counter()
    profile = load_any(str(path))
    out = tmp_path / "huge.svg"
    write_svg(profile, str(out))
    elapsed = time.perf_counter() - t0
    assert len(profile.stacks) == 100_000
    size = out.stat().st_size
    root, frames = svg_frames(out.read_text())
    assert all(f["width"] >= 0.1 - 0.001 for f in frames)
    assert size < 15_000_000, size
    assert "not drawn" in root.find(f"{SVG}text[@id='subtitle']").text
    assert elapsed < 40, elapsed
    # a percentage min width prunes harder
    small = svg_text(profile, SvgOptions(minwidth="1%"))
    assert len(small) < size / 10


# -- golden files --------------------------------------------------------------

def test_golden_realistic_svg():
    profile = load_any(data("realistic.folded"))
    golden("realistic.svg.txt", pretty_svg(svg_text(profile)))
    golden("realistic-inverted.svg.txt",
           pretty_svg(svg_text(processors.invert(profile), SvgOptions(inverted=True, title="Inverted"))))


def test_golden_folded_and_top():
    profile = load_any(data("realistic.folded"))
    buf = io.StringIO()
    write_folded(profile, buf)
    golden("realistic.folded", buf.getvalue())
    golden("realistic.top.txt", top_text(profile, n=8))
    golden("perf.folded", "".join(l + "\n" for l in folded_lines(load_any(data("perf.folded")))))


# -- folded --------------------------------------------------------------------

def test_folded_round_trip(tmp_path):
    for name in ("realistic.folded", "perf.folded", "pyspy.folded"):
        first = load_any(data(name))
        out = tmp_path / (name + ".out")
        write_folded(first, str(out))
        second = load_any(str(out))
        out2 = tmp_path / (name + ".out2")
        write_folded(second, str(out2))
        assert out.read_bytes() == out2.read_bytes()
        assert second.total() == first.total()
    # our own sorted, merged output comes back byte for byte
    text = "a;b c<d>(e, f);g 3\na;b 1\nx::y<int, long>::z() const 2\n"
    lines = folded_lines(folded_profile(text))
    assert "".join(l + "\n" for l in lines) == "".join(sorted(text.splitlines(True)))


def test_folded_merges_duplicates_and_replaces_semicolons():
    p = Profile()
    p.add([Frame("main"), Frame("operator;weird")], {"samples": 2})
    p.add([Frame("main"), Frame("operator;weird")], {"samples": 3})
    p.add([Frame("main")], {"samples": 0})
    assert folded_lines(p) == ["main;operator:weird 5"]


def test_folded_input_styles():
    perf = load_any(data("perf.folded"))
    frames = {f.name: f for f in perf.frames}
    assert frames["do_syscall_64"].category == "kernel"
    assert frames["Interpreter"].category == "jit"
    assert frames["inline_helper"].inlined
    assert frames["[unknown]"].category == "unknown"
    assert "compute(std::vector<double, std::allocator<double> > const&)" in frames
    assert perf.total() == 76
    py = load_any(data("pyspy.folded"))
    f = next(f for f in py.frames if f.name.startswith("slow_sum"))
    assert (f.category, f.file, f.line) == ("python", "app.py", 10)
    assert py.total() == 130
    # decimal counts (flamegraph.pl accepts them) and trailing blanks
    p = folded_profile("a;b 2.6  \r\n  \n#c\na;b 1\n")
    assert folded_lines(p) == ["a;b 4"]


def test_folded_errors_name_file_and_line(tmp_path):
    with pytest.raises(FormatError, match=r"bad\.folded:3: malformed folded line"):
        load_any(data("bad.folded"))
    with pytest.raises(FormatError, match=r"binary\.bin: binary file"):
        load_any(data("binary.bin"))
    with pytest.raises(UsageError, match="no such file"):
        load_any(str(tmp_path / "missing.folded"))
    gz = tmp_path / "other.gz"
    gz.write_bytes(gzip.compress(b"not json"))
    with pytest.raises(FormatError, match="other.gz"):
        load_any(str(gz))
    with pytest.raises(FormatError, match=r"<test>:1"):
        folded_profile("main;foo -5\n")


def test_load_any_reads_saved_profiles(tmp_path):
    from ctprof import session
    path = tmp_path / "p.ctprof"
    session.save(str(path), memory_profile())
    p = load_any(str(path))
    assert p.metadata["kind"] == "memory" and p.total("alloc_count") == 110


# -- top -----------------------------------------------------------------------

def test_top_text_self_and_total():
    text = top_text(folded_profile("main;a;b 6\nmain;a 2\nmain;c;a 2\n"), n=3)
    self_part, total_part = text.split("\n\n")[:2]
    assert self_part.splitlines()[0] == "Top 2 functions by self (10 samples in all):"
    rows = [l.split() for l in self_part.splitlines()[2:]]
    assert rows[0] == ["6", "60.00%", "6", "60.00%", "b"]
    assert rows[1] == ["4", "40.00%", "10", "100.00%", "a"]        # recursion not double counted
    rows = [l.split() for l in total_part.splitlines()[2:]]
    assert rows[:2] == [["4", "40.00%", "10", "100.00%", "a"],      # ties on total: higher self first
                        ["0", "0.00%", "10", "100.00%", "main"]]
    mem = top_text(memory_profile())
    assert "4.0 MiB" in mem and "make_buffer(unsigned long)  [prog]" in mem
    assert "Top" in top_text(memory_profile(), "alloc_count", n=1)
    with pytest.raises(UsageError, match="not in this profile"):
        top_text(memory_profile(), "samples")


# -- speedscope ----------------------------------------------------------------

def schema_errors(value, schema, root, path="$"):
    """A small JSON Schema (draft-07 subset) checker: enough for speedscope's
    schema ($ref, type, properties, required, items, anyOf, enum, const)."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, path)
    errors = []
    types = {"object": dict, "array": list, "string": str, "boolean": bool,
             "number": (int, float), "integer": int}
    t = schema.get("type")
    if t and (not isinstance(value, types[t]) or (t in ("number", "integer") and isinstance(value, bool))):
        return [f"{path}: expected {t}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "anyOf" in schema:
        if all(schema_errors(value, s, root, path) for s in schema["anyOf"]):
            errors.append(f"{path}: matches none of anyOf")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing {key}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, root, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{path}[{i}]")
    return errors


def speedscope_schema():
    npm = os.path.join(HERE, "browser", "node_modules", "speedscope", "dist", "release", "file-format-schema.json")
    with open(npm if os.path.exists(npm) else data("speedscope-file-format-schema.json")) as f:
        return json.load(f)


def test_speedscope_valid_against_schema(tmp_path):
    schema = speedscope_schema()
    for profile in (load_any(data("realistic.folded")), memory_profile(), Profile()):
        out = tmp_path / "p.speedscope.json"
        export(profile, str(out), "speedscope")
        doc = json.loads(out.read_text())
        assert schema_errors(doc, schema["definitions"]["FileFormat.File"], schema) == []
    profile = load_any(data("realistic.folded"))
    doc = speedscope_document(profile)
    prof = doc["profiles"][0]
    assert prof["type"] == "sampled" and prof["unit"] == "none"
    assert sum(prof["weights"]) == prof["endValue"] == profile.total()
    frames = doc["shared"]["frames"]
    names = [[frames[i]["name"] for i in s] for s in prof["samples"]]
    assert ["_start", "__libc_start_main", "main", "parse_args", "strtol"] in names   # root first
    assert speedscope_document(memory_profile())["profiles"][0]["unit"] == "bytes"
    # one profile per thread when thread ids are known
    p = Profile()
    p.add([Frame("main"), Frame("a")], {"samples": 3}, pid=1, tid=1)
    p.add([Frame("worker"), Frame("b")], {"samples": 4}, pid=1, tid=2)
    doc = speedscope_document(p)
    assert [x["endValue"] for x in doc["profiles"]] == [3, 4]
    assert schema_errors(doc, schema["definitions"]["FileFormat.File"], schema) == []


# -- pprof ---------------------------------------------------------------------

def _varint(buf: bytes, pos: int):
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def decode_message(buf: bytes):
    """{field number: [values]}: varints as ints, length-delimited as bytes."""
    fields = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise AssertionError(f"unexpected wire type {wire} for field {number}")
        fields.setdefault(number, []).append(value)
    return fields


def packed(data: bytes):
    out, pos = [], 0
    while pos < len(data):
        v, pos = _varint(data, pos)
        out.append(v)
    return out


def decode_pprof(raw: bytes):
    """Decode profile.proto (field numbers from google/pprof proto/profile.proto)
    into plain Python: sample types, samples as (names leaf first, values)."""
    p = decode_message(raw)
    strings = [s.decode("utf-8") for s in p.get(6, [])]
    assert strings and strings[0] == ""                      # string_table[0] must be ""
    st = [decode_message(m) for m in p.get(1, [])]
    sample_types = [(strings[m.get(1, [0])[0]], strings[m.get(2, [0])[0]]) for m in st]
    functions = {}
    for m in p.get(5, []):
        f = decode_message(m)
        functions[f[1][0]] = (strings[f.get(2, [0])[0]], strings[f.get(4, [0])[0]])
    mappings = {}
    for m in p.get(3, []):
        f = decode_message(m)
        mappings[f[1][0]] = strings[f.get(5, [0])[0]]
        assert f.get(7) == [1]                                 # has_functions
    locations = {}
    for m in p.get(4, []):
        loc = decode_message(m)
        line = decode_message(loc[4][0])
        mapping = loc.get(2, [0])[0]
        assert mapping == 0 or mapping in mappings
        locations[loc[1][0]] = (functions[line[1][0]][0], line.get(2, [0])[0])
    samples = []
    for m in p.get(2, []):
        s = decode_message(m)
        ids = packed(s[1][0]) if 1 in s else []
        values = packed(s[2][0])
        assert len(values) == len(sample_types)
        samples.append(([locations[i][0] for i in ids], values))
    default = strings[p[14][0]] if 14 in p else ""
    return {"sample_types": sample_types, "samples": samples, "default": default,
            "period": p.get(12, [0])[0], "strings": strings, "mappings": mappings}


def test_pprof_decodes_to_same_stacks(tmp_path):
    profile = load_any(data("realistic.folded"))
    out = tmp_path / "p.pb.gz"
    export(profile, str(out), "pprof")
    raw = out.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    doc = decode_pprof(gzip.decompress(raw))
    assert doc["sample_types"] == [("samples", "count")]
    assert doc["default"] == "samples"
    got = {tuple(reversed(names)): v[0] for names, v in doc["samples"]}   # pprof stacks are leaf first
    want = {names: v for names, v in profile.named_stacks()}
    assert got == want
    # memory: every metric a sample type, chosen one the default
    mem = decode_pprof(pprof_bytes(memory_profile(), "leaked_bytes"))
    assert mem["sample_types"] == [("alloc_space", "bytes"), ("alloc_objects", "count"), ("leaked_bytes", "bytes")]
    assert mem["default"] == "leaked_bytes"
    # CPU with a known rate: cpu nanoseconds column and period
    cpu = Profile(metadata={"kind": "cpu", "hz": 1000})
    cpu.add([Frame("main", "prog", "program")], {"samples": 7}, pid=5, tid=6)
    doc = decode_pprof(pprof_bytes(cpu))
    assert doc["sample_types"] == [("samples", "count"), ("cpu", "nanoseconds")]
    assert doc["samples"][0][1] == [7, 7_000_000] and doc["period"] == 1_000_000


def _go() -> str:
    go = shutil.which("go")
    if not go:
        reason = "go not installed (apt-get install golang-go); pprof checked with the test's own decoder only"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return go


def test_go_tool_pprof_reads_output(tmp_path):
    go = _go()
    profile = load_any(data("realistic.folded"))
    out = tmp_path / "p.pb.gz"
    export(profile, str(out), "pprof")
    env = dict(os.environ, HOME=str(tmp_path), GOCACHE=str(tmp_path / "gocache"), GOFLAGS="", GOTOOLCHAIN="local")
    res = subprocess.run([go, "tool", "pprof", "-top", "-nodecount=100", str(out)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    self_v, total_v, total = function_totals(profile)
    assert f"of {total} total" in res.stdout
    rows = [l.split() for l in res.stdout.splitlines() if re.match(r"\s+\d+\s+[\d.]+%", l)]
    (hottest, _module), hottest_self = max(self_v.items(), key=lambda kv: kv[1])
    assert rows[0][:2] == [str(hottest_self), f"{100 * hottest_self / total:.2f}%"]
    assert hottest.split("(")[0] in rows[0][5]          # pprof may shorten C++ names: compare up to "("
    cum = {r[5]: int(r[3]) for r in rows}
    assert cum["main"] == total_v[("main", "")]


# -- diff ----------------------------------------------------------------------

def test_diff_colours_red_grew_blue_shrank():
    before = folded_profile("main;grows 10\nmain;shrinks 60\nmain;same 30\n")
    after = folded_profile("main;grows 120\nmain;shrinks 20\nmain;same 60\nmain;new 0\n")   # 200 total
    root, frames = svg_frames(diff_svg_text(before, after))
    fill = {f["name"]: f["fill"] for f in frames}
    r, g, b = (int(fill["grows"][i:i + 2], 16) for i in (1, 3, 5))
    assert r == 255 and g < 100 and b < 100                # strongest red: the largest change
    r, g, b = (int(fill["shrinks"][i:i + 2], 16) for i in (1, 3, 5))
    assert b == 255 and r < 255
    assert fill["same"] == "#ffffff"                        # 30% before, 30% after: unchanged
    title = next(f["title"] for f in frames if f["name"] == "grows")
    assert title == "grows (120 samples, 60.00%; before 10, 10.00%; +50.00 points)"
    sub = root.find(f"{SVG}text[@id='subtitle']").text
    assert "red grew, blue shrank" in sub
    assert root.find(f"{SVG}text[@id='title']").text == "Differential Flame Graph"


# -- processors ----------------------------------------------------------------

def threaded_profile() -> Profile:
    p = Profile(metadata={"threads": {"11": "worker"}})
    p.add([Frame("main"), Frame("std::sort"), Frame("std::__introsort")], {"samples": 4}, pid=1, tid=10)
    p.add([Frame("start_thread"), Frame("work"), Frame("lock")], {"samples": 6}, pid=1, tid=11)
    return p


def names(p: Profile):
    return sorted((tuple(p.frames[i].name for i in s), v) for s, v in zip(p.stacks, p.column()))


def test_processors_are_pure_transforms():
    p = threaded_profile()
    before = names(p)
    g = processors.group_by(p, "thread")
    assert names(g) == [(("thread 10", "main", "std::sort", "std::__introsort"), 4),
                        (("thread 11 (worker)", "start_thread", "work", "lock"), 6)]
    assert names(processors.group_by(p, "process"))[0][0][0] == "process 1"
    assert names(processors.drop_frames(p, r"^std::sort$"))[0] == (("main", "std::__introsort"), 4)
    assert names(processors.collapse_frames(p, r"^std::"))[0] == (("main", "std::sort"), 4)
    assert names(processors.limit_depth(p, 2)) == [(("main", "std::sort"), 4), (("start_thread", "work"), 6)]
    inv = processors.invert(p)
    assert names(inv)[0] == (("lock", "work", "start_thread"), 6)
    assert names(processors.invert(inv)) == before
    pr = processors.prune(p, 0.5)
    assert names(pr) == [((), 4), (("start_thread", "work", "lock"), 6)]
    opts = processors.ProcessOptions(group_by="thread", collapse="^std::", invert=True)
    assert names(processors.apply(p, opts))[0] == (("thread 10", "std::sort", "main"), 4)
    assert names(p) == before                              # input untouched
    with pytest.raises(UsageError, match="--drop"):
        processors.drop_frames(p, "(")
    with pytest.raises(UsageError):
        processors.limit_depth(p, 0)


# -- command line ----------------------------------------------------------------

def run_view(argv, stdin: str = ""):
    """Run one of the view commands in-process; (status, stdout, stderr)."""
    import ctprof.cli.view  # noqa: F401  (registers the commands)
    from ctprof.cli import REGISTRY
    parser = argparse.ArgumentParser(prog="ctprof")
    sub = parser.add_subparsers(dest="command")
    for name in ("svg", "folded", "report", "export", "diff"):
        REGISTRY[name].prepare_parser(sub.add_parser(name))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = REGISTRY[args.command].run(args)
        except CtprofError as e:
            print(f"ctprof: error: {e}", file=sys.stderr)
            status = e.exit_status
    return status, out.getvalue(), err.getvalue()


def test_cli_view_commands(tmp_path):
    src = data("realistic.folded")
    svg = tmp_path / "g.svg"
    status, _, err = run_view(["svg", src, "-o", str(svg), "--title", "T", "--minwidth", "0.5",
                               "--countname", "ticks", "--width", "900", "--inverted"])
    assert status == 0 and f"wrote flame graph to {svg}" in err
    root, frames = svg_frames(svg.read_text())
    assert root.get("width") == "900" and root.find(f"{SVG}text[@id='title']").text == "T"
    assert "ticks" in frames[0]["title"]
    status, out, _ = run_view(["folded", src, "--collapse", "^json::", "--max-depth", "6"])
    assert status == 0 and "load_config;json::parse(std::string const&) 53\n" in out
    status, out, _ = run_view(["report", src, "--top", "3", "--drop", "^_start$"])
    assert status == 0 and "Particle::update(double)" in out and not re.search(r"\s_start\n", out)
    for fmt in ("folded", "speedscope", "pprof"):
        dest = tmp_path / f"out.{fmt}"
        assert run_view(["export", src, "--format", fmt, "-o", str(dest)])[0] == 0
        assert dest.stat().st_size > 0
    assert json.loads((tmp_path / "out.speedscope").read_text())["profiles"][0]["type"] == "sampled"
    diff = tmp_path / "d.svg"
    assert run_view(["diff", data("perf.folded"), src, "-o", str(diff)])[0] == 0
    svg_frames(diff.read_text())
    status, _, err = run_view(["svg", data("bad.folded"), "-o", str(tmp_path / "x.svg")])
    assert status == 2 and "bad.folded:3: malformed" in err
    status, _, err = run_view(["report", src, "--metric", "alloc_bytes"])
    assert status == 2 and "alloc_bytes" in err
    status, _, err = run_view(["svg", src, "--minwidth", "wide", "-o", str(tmp_path / "y.svg")])
    assert status == 2 and "--minwidth" in err


def test_renderers_registry_declares_extension_and_binary():
    assert RENDERERS["pprof"].binary and RENDERERS["pprof"].extension == ".pb.gz"
    assert not RENDERERS["speedscope"].binary
    with pytest.raises(UsageError, match="unknown format"):
        export(Profile(), io.StringIO(), "png")


def test_pprof_main_binary_is_the_first_mapping():
    """pprof names the first mapping as the main binary: the program, even
    when the first sample ends in a library (sqlite3 was shown as its
    libsqlite3.so)."""
    from ctprof.profile import Frame, Profile
    p = Profile()
    main = p.intern(Frame("main", "sqlite3", "program"))
    step = p.intern(Frame("sqlite3VdbeExec", "libsqlite3.so.0", "library"))
    p.stacks = [(main, step), (main,)]
    p.values = {"samples": [7, 3]}
    doc = decode_pprof(pprof_bytes(p))
    assert doc["mappings"][1] == "sqlite3"
    assert sorted(doc["mappings"].values()) == ["libsqlite3.so.0", "sqlite3"]
