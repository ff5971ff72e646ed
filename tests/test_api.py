"""The importable API (issue 6): ctprof.run / attach / load / profile and
the Result object, used as a Python user would."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import subprocess
import sys
import sysconfig
import threading
import time
import zlib

import pytest

from conftest import has_chain

import ctprof

CHAIN = ("main", "level_one", "level_two", "level_three", "hot_leaf")
DATA = bytes(range(256)) * 2000


def hot_compress(seconds: float) -> int:
    """A hot Python function whose time goes into zlib's C code."""
    n = 0
    end = time.process_time() + seconds
    while time.process_time() < end:
        n += len(zlib.compress(DATA, 6))
    return n


def hot_hash(seconds: float) -> int:
    n = 0
    end = time.process_time() + seconds
    while time.process_time() < end:
        n += len(hashlib.sha256(DATA).digest())
    return n


def spin(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        x += len(zlib.compress(DATA[:20000], 1))


# -- ctprof.run ---------------------------------------------------------------------

def test_run_round_trip(build, tmp_path):
    prog = build("chain.c")
    result = ctprof.run([prog, "0.6"], hz=499)
    assert isinstance(result, ctprof.Result)
    assert result.exit_status == 0
    assert result.total("samples") > 150
    top = result.top(3)
    assert top[0]["function"] == "hot_leaf" and top[0]["module"] == os.path.basename(prog)
    assert top[0]["self_percent"] > 50 and set(top[0]) == {"function", "module", "self", "self_percent",
                                                          "total", "total_percent"}
    assert result.top(1, by="total")[0]["total_percent"] == 100.0
    # plain data
    names = [tuple(result.frames[i].name for i in stack) for stack in result.stacks]
    assert any(has_chain(n, CHAIN) for n in names)
    assert len(result.values["samples"]) == len(result.stacks)
    assert result.metadata["hz_requested"] == 499
    folded = result.folded()
    assert "main;level_one;level_two;level_three;hot_leaf " in folded
    # every output format, by name and by extension, and back
    svg = result.write_svg(str(tmp_path / "g.svg"), inverted=True, title="chain")
    assert open(svg).read().startswith("<?xml")
    for name, check in (("p.folded", lambda b: b"hot_leaf" in b),
                        ("p.speedscope.json", lambda b: "shared" in json.loads(b)),
                        ("p.pb.gz", lambda b: len(gzip.decompress(b)) > 0),
                        ("p.ctprof", lambda b: b[:8] == b"\x89CTPROF\n")):
        path = result.write(str(tmp_path / name))
        with open(path, "rb") as f:
            assert check(f.read()), name
    result.write(str(tmp_path / "plain.txt"), format="folded")
    again = ctprof.load(str(tmp_path / "p.ctprof"))
    assert again.total() == result.total() and again.exit_status == 0
    assert again.session is not None and again.top(1)[0]["function"] == "hot_leaf"
    from_folded = ctprof.load(str(tmp_path / "p.folded"))
    assert from_folded.total() == result.total()
    assert from_folded.folded() == result.folded()
    assert "samples" in repr(result)


def test_run_exit_status_and_output(build, tmp_path):
    prog = build("attach_work.c")
    out = tmp_path / "r.ctprof"
    result = ctprof.run([prog, "0.3", "7"], hz=199, output=str(out))
    assert result.exit_status == 7
    assert ctprof.load(str(out)).total() == result.total() > 0


def test_bad_arguments_raise_ctprof_error(tmp_path):
    cases = [
        lambda: ctprof.run("ls -l"),
        lambda: ctprof.run([]),
        lambda: ctprof.run(["true"], hz=0),
        lambda: ctprof.run(["true"], hz="fast"),
        lambda: ctprof.run(["true"], max_depth=0),
        lambda: ctprof.run(["true"], unwind="magic"),
        lambda: ctprof.run([str(tmp_path / "missing")]),
        lambda: ctprof.attach(-4),
        lambda: ctprof.attach(1, duration=0),
        lambda: ctprof.load(str(tmp_path / "missing.ctprof")),
        lambda: ctprof.profile(hz=1e9),
        lambda: ctprof.profile(threads=3.5),
        lambda: ctprof.profile(threads=[]),
    ]
    for case in cases:
        with pytest.raises(ctprof.CtprofError) as info:
            case()
        message = str(info.value)
        assert message and "\n" not in message and "Traceback" not in message
    (tmp_path / "bad.folded").write_bytes(b"\x00\x01binary")
    with pytest.raises(ctprof.CtprofError):
        ctprof.load(str(tmp_path / "bad.folded"))
    r = ctprof.load(_folded(tmp_path))
    with pytest.raises(ctprof.CtprofError):
        r.write(str(tmp_path / "x.out"), format="gif")
    with pytest.raises(ctprof.CtprofError):
        r.top(-1)
    with pytest.raises(ctprof.CtprofError, match="not a memory profile"):
        r.leaks()
    with pytest.raises(ctprof.CtprofError, match="no profile yet"):
        ctprof.profile().top()


def _folded(tmp_path) -> str:
    path = tmp_path / "small.folded"
    path.write_text("main;a;b 3\nmain;c 1\n")
    return str(path)


def test_memory_profile_through_the_api(build):
    """ctprof.run(..., memory=True): leaks and peak as plain rows."""
    result = ctprof.run([build("leaks.c")], memory=True)
    assert result.exit_status == 0 and result.metadata.get("kind") == "memory"
    leaks = {row["function"]: row for row in result.leaks(10)}
    assert leaks["leak_big"]["self"] == 15000
    assert leaks["leak_small"]["self"] == 1000
    assert "keep_global" not in leaks                 # still reachable, not leaked
    peak = {row["function"]: row["self"] for row in result.peak(10)}
    assert peak["peak_holder"] == 1 << 20


def test_attach_api(build):
    prog = build("attach_work.c")
    target = subprocess.Popen([prog, "2.0", "4"], stdout=subprocess.PIPE)
    try:
        time.sleep(0.1)
        result = ctprof.attach(target.pid, duration=0.7, hz=499)
    finally:
        out, _ = target.communicate(timeout=30)
    assert target.returncode == 4 and out.startswith(b"result")
    assert result.exit_status is None
    assert result.top(1)[0]["function"] == "hot_leaf"
    # samples follow the CPU the target got (a loaded machine gives it less)
    samples = result.total()
    expected = result.metadata["cpu_s"] * 499
    assert samples > 50 and abs(samples - expected) <= 5 * expected ** 0.5 + 5, (samples, expected)
    with pytest.raises(ctprof.AttachError, match="no such process"):
        ctprof.attach(target.pid, duration=0.5)


# -- self-profiling -----------------------------------------------------------------

def _python_frames_expected() -> bool:
    """Decided from the interpreter itself, not from ctprof: CPython 3.9 to
    3.13, x86-64 release builds with the GIL (README, Python programs)."""
    return (sys.implementation.name == "cpython" and (3, 9) <= sys.version_info[:2] <= (3, 13)
            and platform.machine() == "x86_64" and not hasattr(sys, "gettotalrefcount")
            and not sysconfig.get_config_var("Py_GIL_DISABLED"))


def test_self_profile_python_and_native_frames_in_one_stack():
    with ctprof.profile(hz=499) as p:
        hot_compress(0.8)
        hot_hash(0.4)
    result = p.result
    assert result is not None and result.total("samples") > 200
    stacks = result.named_stacks()
    native_zlib = sum(v for n, v in stacks if "zlib_compress" in n)
    assert native_zlib > 0.4 * result.total()
    if not _python_frames_expected():
        pytest.skip("this interpreter gives native frames only")
    assert result.metadata["python_frames"] is True

    def python_then_native(names, py_name, native):
        py = [i for i, n in enumerate(names) if py_name in n]
        nat = [i for i, n in enumerate(names) if n == native]
        return bool(py and nat and max(py) < min(nat))

    both = sum(v for n, v in stacks if python_then_native(n, ".hot_compress (test_api.py:", "zlib_compress"))
    assert both >= 0.9 * native_zlib, (both, native_zlib)
    # deflate runs inside zlib_compress, under the Python frame
    assert any(python_then_native(n, ".hot_compress (", "deflate") for n, _ in stacks)
    # the Python caller chain sits above: this test function, then hot_compress
    assert any(has_chain([x.split(" (")[0] for x in n],
                         ("test_api.test_self_profile_python_and_native_frames_in_one_stack", "test_api.hot_compress"))
               for n, _ in stacks)
    hashed = [n for n, _ in stacks if any(".hot_hash (" in x for x in n)]
    assert hashed and any(len(n) > n.index(next(x for x in n if ".hot_hash (" in x)) + 1 for n in hashed)
    frame = next(f for f in result.frames if ".hot_compress (" in f.name)
    assert frame.category == "python" and frame.file == __file__ and isinstance(frame.line, int)
    assert frame.module == "test_api"
    # no _PyEval_EvalFrameDefault left where Python frames replaced it
    evals = sum(v for n, v in stacks if any(x.startswith("_PyEval_EvalFrameDefault") for x in n))
    assert evals <= 0.05 * result.total()


def test_profile_decorator_and_thread_selection():
    stop = threading.Event()
    other = threading.Thread(target=spin, args=(stop,), name="spin-other")
    chosen = threading.Thread(target=spin, args=(stop,), name="spin-chosen")
    other.start()
    chosen.start()
    try:
        @ctprof.profile(hz=499, threads="spin-ch*")
        def wait_a_bit():
            time.sleep(0.6)

        wait_a_bit()
        wait_a_bit()
        profiler = wait_a_bit.profiler
        assert len(profiler.results) == 2
        result = profiler.result
        assert result.total() > 30
        assert set(result.tids) == {chosen.native_id}
        assert result.metadata["threads"][str(chosen.native_id)] == "spin-chosen"

        with ctprof.profile(hz=499, threads=[other, chosen.ident]) as p:
            time.sleep(0.6)
        assert set(p.result.tids) == {other.native_id, chosen.native_id}
        assert "zlib_compress" in p.folded()
    finally:
        stop.set()
        other.join()
        chosen.join()


def test_profile_sees_threads_started_during_the_block(tmp_path):
    stop = threading.Event()
    out = tmp_path / "self.ctprof"
    with ctprof.profile(hz=499, output=str(out)) as p:
        t = threading.Thread(target=spin, args=(stop,), name="late-starter")
        t.start()
        time.sleep(0.6)
        stop.set()
        t.join()
    assert t.native_id in set(p.result.tids)
    assert ctprof.load(str(out)).total() == p.result.total()
    with pytest.raises(ctprof.CtprofError, match="already running"):
        with ctprof.profile():
            with ctprof.profile():
                pass
