"""The saved profile (``.ctprof``, format 2): a real capture survives a save
and load exactly; format 1 files are refused with one line; damaged files
crafted here at test time (with a writer built from the layout the README
documents, not from ctprof's own writer) get one ``ctprof: error: FILE:``
line and exit status 2 from every subcommand that reads a profile."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from array import array
from dataclasses import replace
from typing import Callable, Dict, List, Tuple

import pytest

from conftest import ctprof

import ctprof as api
from ctprof import fileformat
from ctprof.cli import main as cli_main
from ctprof.errors import FormatError
from ctprof.profile import Frame, Profile

MAGIC = b"\x89CTPROF\n"

WORK_C = r"""
#include <stdio.h>
#include <stdlib.h>
volatile double sink;
__attribute__((noinline)) void spin_leaf(long n) { for (long i = 0; i < n; i++) sink += i * 0.5; }
/* not tail calls, so each site keeps its own frame */
__attribute__((noinline)) void *site_small(size_t n) { void *p = malloc(n); sink += 1; return p; }
__attribute__((noinline)) void *site_big(size_t n) { void *p = malloc(n); sink += 1; return p; }
int main(int argc, char **argv) {
    int small = atoi(argv[1]), big = atoi(argv[2]);
    for (int i = 0; i < small; i++) free(site_small(16 + i % 64));
    for (int i = 0; i < big; i++) free(site_big(100000));
    void *leak = site_big(4321); (void)leak;
    spin_leaf(60000000);
    return 0;
}
"""
SMALL, BIG = 5000, 30


@pytest.fixture(scope="module")
def work_program(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("fmt")
    src = d / "work.c"
    src.write_text(WORK_C)
    exe = str(d / "work")
    subprocess.run(["cc", "-O2", "-g", "-o", exe, str(src)], check=True, capture_output=True)
    return exe


@pytest.fixture(scope="module")
def saved(work_program, tmp_path_factory) -> str:
    """A profile written by ``ctprof run --mem`` of a real program."""
    out = str(tmp_path_factory.mktemp("saved") / "work.ctprof")
    r = ctprof(["run", "--mem", "--hz", "499", "-q", "-o", out, "--", work_program, str(SMALL), str(BIG)],
               cwd=os.path.dirname(out))
    assert r.returncode == 0, r.stderr.decode()
    return out


# -- the documented layout, read and written independently of ctprof -----------

Section = Tuple[str, bytes, int, bytes]   # name, kind, count, raw payload


def split_sections(data: bytes) -> List[Section]:
    assert data[:8] == MAGIC and struct.unpack_from("<I", data, 8)[0] == 2
    pos, out = 12, []
    while True:
        n = data[pos]
        name = data[pos + 1:pos + 1 + n].decode()
        kind, count, stored = struct.unpack_from("<cQQ", data, pos + 1 + n)
        pos += 1 + n + 17
        payload = zlib.decompress(data[pos:pos + stored]) if stored else b""
        pos += stored
        out.append((name, kind, count, payload))
        if name == "end":
            assert pos == len(data)
            return out


def join_sections(sections: List[Section], version: int = 2) -> bytes:
    parts = [MAGIC, struct.pack("<I", version)]
    for name, kind, count, payload in sections:
        stored = zlib.compress(payload) if payload else b""
        parts += [bytes([len(name)]), name.encode(), struct.pack("<cQQ", kind, count, len(stored)), stored]
    return b"".join(parts)


def section(sections: List[Section], name: str) -> int:
    return next(i for i, s in enumerate(sections) if s[0] == name)


def get_array(sections: List[Section], name: str) -> array:
    _, kind, _, payload = sections[section(sections, name)]
    values = array(kind.decode())
    values.frombytes(payload)
    return values


def put_array(sections: List[Section], name: str, values: array) -> None:
    i = section(sections, name)
    sections[i] = (name, values.typecode.encode(), len(values), values.tobytes())


def get_meta(sections: List[Section]) -> dict:
    return json.loads(sections[0][3])


def put_meta_text(sections: List[Section], text: bytes) -> None:
    sections[0] = ("meta", b"J", len(text), text)


def put_meta(sections: List[Section], meta: dict) -> None:
    put_meta_text(sections, json.dumps(meta).encode())


def edit_meta(change: Callable[[dict], None]) -> Callable[[List[Section]], None]:
    def edit(sections: List[Section]) -> None:
        meta = get_meta(sections)
        change(meta)
        put_meta(sections, meta)
    return edit


def edit_array(name: str, change: Callable[[array], array]) -> Callable[[List[Section]], None]:
    def edit(sections: List[Section]) -> None:
        put_array(sections, name, change(get_array(sections, name)))
    return edit


def memory_of(meta: dict) -> dict:
    per_pid = meta["profile"]["metadata"]["memory"]
    return per_pid[next(iter(per_pid))]


def _set(d: dict, key: str, value) -> None:
    d[key] = value


def _bump_max(values: array, by: int) -> array:
    values[values.index(max(values))] += by
    return values


def _with_first(value):
    def change(values: array) -> array:
        values[0] = value
        return values
    return change


def _float_column(values: array) -> array:
    out = array("d", values)
    out[0] = float("nan")
    return out


def _declare_float(meta: dict) -> None:
    meta["profile"]["metrics"] = [[m, "d" if m == "alloc_bytes" else t] for m, t in meta["profile"]["metrics"]]


# name -> what to do to the sections of a good file (None: whole-file cases below)
DAMAGE: Dict[str, Callable[[List[Section]], None]] = {
    "frame index out of range": edit_array("stack_frames", lambda a: _bump_max(a, 1_000_000)),
    "string index out of range": edit_array("frame_name", lambda a: _bump_max(a, 1_000_000)),
    "stack lengths disagree": edit_array("stack_length", lambda a: _bump_max(a, 3)),
    "values column too short": edit_array("value:alloc_bytes", lambda a: a[:-1]),
    "negative count": edit_array("value:alloc_count", _with_first(-5)),
    "NaN value": lambda s: (edit_array("value:alloc_bytes", _float_column)(s), edit_meta(_declare_float)(s)),
    "negative raw value": edit_array("raw_values", _with_first(-1)),
    "raw stack too deep": edit_array("raw_length", _with_first(5_000_000)),
    "units a list": edit_meta(lambda m: _set(m["profile"]["metadata"], "units", ["bytes"])),
    "command a string": edit_meta(lambda m: _set(m["profile"]["metadata"], "command", "ls -l")),
    "metadata a list": edit_meta(lambda m: _set(m["profile"], "metadata", [1, 2])),
    "memory a list": edit_meta(lambda m: _set(m["profile"]["metadata"], "memory", [])),
    "memory totals as strings": edit_meta(lambda m: _set(memory_of(m), "totals", {"alloc_count": "5000"})),
    "peak time a string": edit_meta(lambda m: _set(memory_of(m), "peak_time", "1.5")),
    "timeline of strings": edit_meta(lambda m: _set(memory_of(m), "timeline", ["a", "b"])),
    "negative memory total": edit_meta(lambda m: _set(memory_of(m), "totals", {"peak_bytes": -1})),
    "huge number": lambda s: put_meta_text(s, s[0][3].replace(b'"metadata":{', b'"metadata":{"duration":1e999,', 1)),
    "NaN in metadata": lambda s: put_meta_text(s, s[0][3].replace(b'"metadata":{', b'"metadata":{"duration":NaN,', 1)),
    "count a fraction": lambda s: put_meta_text(s, s[0][3].replace(b'"mem_sample":0', b'"mem_sample":0.5', 1)),
    "deep nesting": lambda s: put_meta_text(s, s[0][3][:-1] + b',"x":' + b"[" * 100000 + b"]" * 100000 + b"}"),
    "nesting past the limit": edit_meta(lambda m: _set(m["profile"]["metadata"], "x", json.loads("[" * 40 + "]" * 40))),
    "metrics not pairs": edit_meta(lambda m: _set(m["profile"], "metrics", {"samples": "q"})),
    "process a list": edit_meta(lambda m: _set(m["session"], "processes", [[1, 2]])),
    "thread table of strings": edit_meta(lambda m: _set(m["session"]["processes"][0], "threads", [["a", "b"]])),
    "meta not JSON": lambda s: put_meta_text(s, b"{not json"),
    "missing section": lambda s: s.pop(section(s, "frame_line")),
    "repeated section": lambda s: s.insert(2, s[2]),
    "unknown kind": lambda s: s.__setitem__(1, (s[1][0], b"Z", s[1][2], s[1][3])),
    "declared count too small": lambda s: s.__setitem__(1, (s[1][0], s[1][1], s[1][2] - 1, s[1][3])),
    "declared count too large": lambda s: s.__setitem__(1, (s[1][0], s[1][1], s[1][2] + 1, s[1][3])),
    "declared size beyond any stream": lambda s: s.__setitem__(1, (s[1][0], s[1][1], 1 << 40, s[1][3])),
}


def whole_file_cases(good: bytes) -> Dict[str, bytes]:
    rng = random.Random(1234)
    noise = bytes(rng.getrandbits(8) for _ in range(4096))
    sections = split_sections(good)
    return {
        "empty file": b"",
        "random bytes": noise,
        "magic then random bytes": MAGIC + struct.pack("<I", 2) + noise,
        "truncated in the middle": good[:len(good) // 2],
        "truncated in the header": good[:10],
        "end marker missing": join_sections(sections[:-1]),
        "garbage after the end": good + b"\0\0\0",
        "newer version": join_sections(sections, version=3),
        "corrupt compressed bytes": good[:40] + bytes(b ^ 0x55 for b in good[40:60]) + good[60:],
        "gzip, not a profile": gzip.compress(b'{"hello": 1}'),
    }


def damaged_files(good_path: str, directory: str) -> Dict[str, str]:
    with open(good_path, "rb") as f:
        good = f.read()
    files: Dict[str, bytes] = whole_file_cases(good)
    for name, damage in DAMAGE.items():
        sections = split_sections(good)
        damage(sections)
        files[name] = join_sections(sections)
    paths = {}
    for i, (name, data) in enumerate(files.items()):
        path = os.path.join(directory, f"damaged{i}.ctprof")
        with open(path, "wb") as f:
            f.write(data)
        paths[name] = path
    return paths


def run_cli(argv: List[str]) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli_main(argv)
    return status, out.getvalue(), err.getvalue()


def subcommands(path: str, good: str, directory: str) -> List[List[str]]:
    return [["report", path], ["svg", path, "-o", os.path.join(directory, "x.svg")], ["folded", path],
            ["export", path, "--format", "speedscope", "-o", os.path.join(directory, "x.json")],
            ["export", path, "--format", "pprof", "-o", os.path.join(directory, "x.pb.gz")],
            ["diff", good, path, "-o", os.path.join(directory, "d.svg")],
            ["diff", path, good, "-o", os.path.join(directory, "d.svg")]]


# -- tests -------------------------------------------------------------------------

def test_real_capture_round_trips_exactly(work_program, tmp_path):
    """Everything ctprof.run produced comes back from the file: frames,
    stacks, every value column, threads, metadata, and the raw session."""
    result = api.run([work_program, str(SMALL), str(BIG)], memory=True, hz=499)
    path = str(tmp_path / "r.ctprof")
    result.save(path)
    with open(path, "rb") as f:
        assert f.read(12) == MAGIC + struct.pack("<I", 2)
    profile, session = fileformat.load(path)
    assert profile.frames == result.profile.frames
    assert profile.stacks == result.profile.stacks
    assert profile.values == result.profile.values
    assert (profile.pids, profile.tids) == (result.profile.pids, result.profile.tids)
    assert profile.metadata == json.loads(json.dumps(result.profile.metadata))
    # (the heap's stacks, kept column by column, load as raw stacks)
    heap = result.session.heap_stacks
    assert heap and session.heap_stacks == []
    as_raw = [block.raw_stack(i) for block in heap for i in range(len(block))]
    assert session == replace(result.session, stacks=result.session.stacks + as_raw, heap_stacks=[])
    # The figures still match the program's own: SMALL allocations from
    # site_small, BIG + 1 from site_big (4321 bytes never freed).
    def count(fn: str, metric: str) -> int:
        return sum(v for names, v in profile.named_stacks(metric) if fn in names)
    assert count("site_small", "alloc_count") == SMALL
    assert count("site_big", "alloc_count") == BIG + 1
    # (lost or still reachable: a register or stack slot may still hold it)
    assert count("site_big", "leaked_bytes") + count("site_big", "reachable_bytes") == 4321
    assert count("spin_leaf", "samples") > 0
    # Saving what was loaded writes the same bytes.
    again = str(tmp_path / "again.ctprof")
    fileformat.save(again, profile, session)
    with open(path, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


def test_round_trip_of_awkward_values(tmp_path):
    """Names with every awkward character, None files and lines, inlined
    frames, unknown threads, a fractional column, no session."""
    p = Profile(metadata={"kind": "cpu", "units": {"samples": "samples"}, "extra": {"nested": [1, [2, {"a": None}]]}})
    odd = Frame("operator<< <std::pair<int, char>>(x;y) \u00e9\u4e2d\n\0", "lib\u00fc.so", "library", None, None, False)
    p.add([Frame("main", "prog", "program", "m.c", 3), odd], {"samples": 7, "wall": 0.25}, pid=10, tid=None)
    p.add([Frame("inl", "prog", "program", "i.h", 0, True)], {"samples": 0, "wall": 1.5}, pid=None, tid=11)
    path = str(tmp_path / "odd.ctprof")
    fileformat.save(path, p)
    q, session = fileformat.load(path)
    assert session is None
    assert (q.frames, q.stacks, q.values, q.pids, q.tids, q.metadata) == \
           (p.frames, p.stacks, p.values, p.pids, p.tids, p.metadata)
    folded_only = Profile()
    folded_only.add([Frame("a")], {"samples": 3})
    fileformat.save(path, folded_only)
    q, _ = fileformat.load(path)
    assert q.pids is None and q.values == {"samples": [3]}


def test_save_refuses_what_load_would_refuse(tmp_path):
    p = Profile()
    p.add([Frame("a")], {"samples": -3})
    path = tmp_path / "neg.ctprof"
    with pytest.raises(FormatError, match="negative"):
        fileformat.save(str(path), p)
    assert not path.exists() and os.listdir(tmp_path) == []


def v1_profile_bytes() -> bytes:
    """What ctprof's format-1 writer (session.save before format 2) wrote,
    kept here as a fixture: gzip-compressed JSON with the format first."""
    doc = {"format": "ctprof-profile", "version": 1,
           "profile": {"frames": [["main", "prog", "program", None, None, False]], "stacks": [[0]],
                       "values": {"samples": [5]}, "pids": [1], "tids": [1],
                       "metadata": {"kind": "cpu", "default_metric": "samples"}},
           "session": None}
    buf = io.BytesIO()
    with gzip.open(buf, "wt", encoding="utf-8", compresslevel=5) as out:
        json.dump(doc, out, separators=(",", ":"))
    return buf.getvalue()


def test_format_1_is_refused_with_one_line(saved, tmp_path):
    old = tmp_path / "old.ctprof"
    old.write_bytes(v1_profile_bytes())
    for argv in subcommands(str(old), saved, str(tmp_path)):
        status, out, err = run_cli(argv)
        assert status == 2, argv
        assert err == (f"ctprof: error: {old}: written by an older ctprof in profile format 1 (gzip JSON), "
                       f"which this ctprof no longer reads (it reads format 2); record the profile again\n"), argv
    with pytest.raises(api.CtprofError, match="format 1"):
        api.load(str(old))


def test_damaged_profiles_get_one_error_line_from_every_subcommand(saved, tmp_path):
    # The good file itself passes every subcommand (so each refusal below
    # is the damage's doing).
    for argv in subcommands(saved, saved, str(tmp_path)):
        status, _, err = run_cli(argv)
        assert status == 0, (argv, err)
    files = damaged_files(saved, str(tmp_path))
    assert len(files) == len(DAMAGE) + 10
    for what, path in files.items():
        for argv in subcommands(path, saved, str(tmp_path)):
            status, out, err = run_cli(argv)
            lines = err.splitlines()
            assert status == 2 and len(lines) == 1, (what, argv, err)
            assert lines[0].startswith(f"ctprof: error: {path}: "), (what, argv, err)
        with pytest.raises(api.CtprofError):
            api.load(path)


def test_each_damage_is_named(saved, tmp_path):
    """The line says what is wrong, not just "corrupt"."""
    files = damaged_files(saved, str(tmp_path))
    expect = {
        "frame index out of range": "frame index", "string index out of range": "string index",
        "negative count": "negative", "NaN value": "not a finite number", "units a list": "units",
        "memory totals as strings": "totals", "deep nesting": "nested deeper",
        "nesting past the limit": "nested deeper", "huge number": "not a finite number",
        "NaN in metadata": "NaN", "empty file": "empty", "truncated in the middle": "cut short",
        "end marker missing": "no end marker", "newer version": "version 3",
        "raw stack too deep": "frames (at most", "declared size beyond any stream": "can hold",
        "declared count too large": "does not hold",
    }
    for what, needle in expect.items():
        status, _, err = run_cli(["report", files[what]])
        assert status == 2 and needle in err, (what, err)


def test_damaged_profile_from_the_command_line_and_a_pipe(saved, tmp_path):
    """As a user meets it: a separate process, no traceback, exit 2; the
    same refusal when the file arrives on stdin."""
    path = damaged_files(saved, str(tmp_path))["frame index out of range"]
    r = ctprof(["report", path], cwd=str(tmp_path))
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    assert r.stderr.decode().count("\n") == 1 and "frame index" in r.stderr.decode()
    with open(path, "rb") as f:
        r = ctprof(["svg", "-", "-o", str(tmp_path / "p.svg")], cwd=str(tmp_path), input=f.read())
    assert r.returncode == 2 and r.stderr.decode().startswith("ctprof: error: <stdin>: damaged profile")
    with open(saved, "rb") as f:
        r = ctprof(["report", "-"], cwd=str(tmp_path), input=f.read())
    assert r.returncode == 0 and b"site_small" in r.stdout
