"""Python frames of CPython programs profiled from outside (issue 12):
``ctprof run`` and ``ctprof attach`` on every CPython found (the system
python3 and each 3.9 to 3.13 under ``$(pyenv root)/versions``), checked on
what a user looks at: the function names, files and lines, the callers above
and the native code beneath, each function's share against the CPU time the
script measured itself; the layout table checked against each interpreter's
own headers; an unsupported interpreter profiled with native frames and a
note saying so.
"""
from __future__ import annotations

import ast
import functools
import json
import math
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from conftest import ctprof, heap_rows, heap_rows_at_the_end, load_profile, python_interpreters

from ctprof.capture import cpython

SUPPORTED = ["3.9", "3.10", "3.11", "3.12", "3.13"]
WHICH = ["system"] + SUPPORTED
HZ = "500"

# ---------------------------------------------------------------------------
# The interpreters


@functools.lru_cache(maxsize=None)
def _describe(executable: str) -> Dict:
    """The interpreter's version and header directory, as it reports them."""
    done = subprocess.run([executable, "-I", "-c",
                           "import json, sys, sysconfig; print(json.dumps({'version': list(sys.version_info[:2]),"
                           " 'include': sysconfig.get_paths()['include']}))"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{executable}: {done.stderr}"
    return json.loads(done.stdout)


def interpreters(which: str) -> List[str]:
    return python_interpreters(which)


def supported_interpreters(which: str) -> List[str]:
    exes = interpreters(which)
    version = tuple(_describe(exes[0])["version"])
    if version not in cpython.LAYOUTS:
        pytest.skip(f"{exes[0]} is Python {version[0]}.{version[1]}, not one ctprof reads frames of")
    return exes


# ---------------------------------------------------------------------------
# 1. The layout table against the headers


def _probe_layout(build, executable: str) -> Tuple[Tuple[int, int], Dict[str, int]]:
    info = _describe(executable)
    include = info["include"]
    if not os.path.exists(os.path.join(include, "internal", "pycore_runtime.h")):
        pytest.skip(f"{executable}: no internal headers in {include} (python3-dev / a pyenv build with headers)")
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", os.path.dirname(os.path.dirname(executable)).strip("/"))
    probe = build("py_layout_probe.c", "-I" + include, name=f"py_layout_probe-{tag}")
    out = subprocess.run([probe], capture_output=True, text=True, check=True).stdout
    fields = {name: int(value) for name, value in (line.split() for line in out.splitlines())}
    return tuple(info["version"]), fields


@pytest.mark.parametrize("which", WHICH)
def test_layout_table_matches_the_headers(build, which):
    for executable in interpreters(which):
        version, fields = _probe_layout(build, executable)
        assert version in cpython.LAYOUTS, f"{executable}: Python {version} has no layout"
        table = cpython.LAYOUTS[version]
        # The probe prints every field of the table but the one filled in at run time.
        assert set(fields) == set(cpython.LAYOUT_FIELDS) - {"pthread_tid"}, sorted(fields)
        assert fields["version"] == (version[0] << 8 | version[1])
        wrong = {name: (table[name], value) for name, value in fields.items() if table[name] != value}
        assert not wrong, f"{executable}: table vs headers differ: {wrong}"


# ---------------------------------------------------------------------------
# Reading profiles

FRAME = re.compile(r"^(?P<module>\S+?)\.(?P<qualname>\S+) \((?P<file>[^:()]+):(?P<line>\d+)\)$")


def samples_of(profile) -> List[Tuple[Tuple[str, ...], int, Optional[int]]]:
    """(frame names root first, samples, thread id) of every stack."""
    column = profile.column("samples")
    tids = profile.tids or [None] * len(profile.stacks)
    return [(tuple(profile.frames[i].name for i in stack), value, tid)
            for stack, value, tid in zip(profile.stacks, column, tids) if value]


def py_index(names: Sequence[str], module: str, qualname: str) -> Optional[int]:
    """Index of the innermost Python frame ``module.qualname (module.py:N)``."""
    for i in range(len(names) - 1, -1, -1):
        m = FRAME.match(names[i])
        if m and m["module"] == module and m["qualname"] == qualname and m["file"] == module + ".py":
            return i
    return None


def frame_lines(profile, module: str, qualname: str) -> Dict[int, int]:
    """line -> samples of every frame of ``qualname``."""
    lines: Dict[int, int] = {}
    for names, value, _ in samples_of(profile):
        for name in names:
            m = FRAME.match(name)
            if m and m["module"] == module and m["qualname"] == qualname:
                assert m["file"] == module + ".py", name
                lines[int(m["line"])] = lines.get(int(m["line"]), 0) + value
    return lines


def body_lines(source: str, name: str) -> range:
    """The lines of function ``name``'s body in ``source`` (from the text, not the profile)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return range(node.body[0].lineno, node.end_lineno + 1)
    raise KeyError(name)


def statement_lines(source: str) -> List[int]:
    """The lines of the module-level statements of ``source`` (not its functions)."""
    return [line for node in ast.parse(source).body if not isinstance(node, ast.FunctionDef)
            for line in range(node.lineno, node.end_lineno + 1)]


def call_line(source: str, callee: str) -> int:
    """The line of the module-level statement that calls ``callee``."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", None) == callee:
            return node.lineno
    raise KeyError(callee)


def tolerance(p: float, n: int) -> float:
    """Five binomial standard deviations on n samples, plus 2 points for
    start-up and shut-down the script's own clocks do not see alike."""
    return 5 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1)) + 0.02


# ---------------------------------------------------------------------------
# 2. run: names, lines, callers, native frames beneath, shares

WORK = "pyf_work"
WORK_SOURCE = '''\
import json, os, sys, time, zlib

# Large enough that deflate itself, not zlib's per-call set-up, takes the time.
DATA = bytes(range(256)) * 1024 + os.urandom(1 << 16)


def compress_work(seconds):
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        zlib.compress(DATA, 6)
    return time.thread_time() - start


def inner(seconds):
    start = time.thread_time()
    total = 0
    while time.thread_time() - start < seconds:
        for i in range(300):
            total += i * i
    return time.thread_time() - start


def outer(seconds):
    return inner(seconds)


def main(result_path, seconds):
    spent = {"compress_work": compress_work(seconds), "inner": outer(seconds)}
    spent["total"] = time.process_time()
    with open(result_path, "w") as f:
        json.dump(spent, f)


main(sys.argv[1], float(sys.argv[2]))
'''


@dataclass
class Run:
    python: str
    directory: str
    script: str
    proc: subprocess.CompletedProcess
    profile: object
    session: object
    spent: Dict[str, float]


def run_work(python: str, directory: str, seconds: float = 0.4) -> Run:
    script = os.path.join(directory, WORK + ".py")
    with open(script, "w") as f:
        f.write(WORK_SOURCE)
    result = os.path.join(directory, "spent.json")
    proc = ctprof(["run", "--hz", HZ, "-o", "work.ctprof", "--folded", "work.folded", "--",
                   python, script, result, str(seconds)], cwd=directory)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    profile, session = load_profile(os.path.join(directory, "work.ctprof"))
    with open(result) as f:
        spent = json.load(f)
    return Run(python, directory, script, proc, profile, session, spent)


@pytest.fixture(scope="session")
def work_run(tmp_path_factory):
    """One profiled run of the work script per interpreter, shared by the tests that read it."""
    runs: Dict[str, Run] = {}

    def get(python: str) -> Run:
        if python not in runs:
            runs[python] = run_work(python, str(tmp_path_factory.mktemp("pywork")))
        return runs[python]
    return get


@pytest.mark.parametrize("which", WHICH)
def test_run_names_python_functions_with_file_and_line(work_run, which):
    for python in supported_interpreters(which):
        run = work_run(python)
        for function in ("compress_work", "inner", "outer", "main"):
            lines = frame_lines(run.profile, WORK, function)
            body = body_lines(WORK_SOURCE, function)
            assert lines, f"{python}: no frame of {function}: {sorted(set(n for n, _, _ in samples_of(run.profile) for n in n))[:40]}"
            outside = {line: n for line, n in lines.items() if line not in body}
            assert not outside, f"{python}: {function} lines {outside} outside its body {body}"
        # the module's frame stands on the line that calls main (or, in the
        # few samples of its start, on its imports and DATA)
        module = frame_lines(run.profile, WORK, "<module>")
        assert set(module) <= set(statement_lines(WORK_SOURCE)), module
        assert module[call_line(WORK_SOURCE, "main")] >= 0.95 * sum(module.values()), module
        # the frames keep the script's full path
        files = {f.file for f in run.profile.frames if f.category == "python" and f.name.startswith(WORK + ".")}
        assert files == {run.script}, files
        # and the folded output says the same as the profile
        with open(os.path.join(run.directory, "work.folded")) as f:
            folded = f.read()
        # (C frames of the interpreter may stand between two Python frames)
        module = re.escape(f"{WORK}.<module> ({WORK}.py:{call_line(WORK_SOURCE, 'main')})")
        assert re.search(rf"(^|;){module};([^;\n]*;)*?{re.escape(WORK)}\.main \({re.escape(WORK)}\.py:\d+\);", folded, re.M)


@pytest.mark.parametrize("which", WHICH)
def test_run_keeps_the_call_chain_in_order(work_run, which):
    """main -> outer -> inner, root to leaf, under the interpreter's own C
    frames (Py_RunMain and the C runtime's entry above the script)."""
    for python in supported_interpreters(which):
        run = work_run(python)
        chain = ("<module>", "main", "outer", "inner")
        total = complete = 0
        for names, value, _ in samples_of(run.profile):
            leaf = py_index(names, WORK, "inner")
            if leaf is None:
                continue
            total += value
            where = [py_index(names, WORK, q) for q in chain]
            present = [i for i in where if i is not None]
            assert present == sorted(present), f"{python}: out of order: {names}"
            # complete, under the interpreter's entry (a chain read after the
            # thread moved on can put <module> above _start: counted, not
            # excused; test_native_frames_belong_... checks that exactly)
            if None not in where and ("Py_RunMain" in names[:where[0]] or "Py_BytesMain" in names[:where[0]]):
                complete += value
        assert total > 50, f"{python}: {total} samples in inner"
        assert complete >= 0.95 * total, f"{python}: complete chain on {complete} of {total} samples of inner"


@pytest.mark.parametrize("which", WHICH)
def test_run_puts_native_code_beneath_the_python_function(work_run, which):
    for python in supported_interpreters(which):
        run = work_run(python)
        total = beneath = 0
        for names, value, _ in samples_of(run.profile):
            at = py_index(names, WORK, "compress_work")
            if at is None:
                continue
            total += value
            if "deflate" in names[at + 1:]:
                beneath += value
        assert total > 50, f"{python}: {total} samples in compress_work"
        assert beneath >= 0.8 * total, f"{python}: deflate beneath compress_work on {beneath} of {total} samples"


@pytest.mark.parametrize("which", WHICH)
def test_run_shares_match_the_scripts_own_cpu_time(work_run, which):
    for python in supported_interpreters(which):
        run = work_run(python)
        stacks = samples_of(run.profile)
        n = sum(v for _, v, _ in stacks)
        # the sample count follows the CPU used (the kernel counts task-clock)
        assert abs(n - run.spent["total"] * int(HZ)) <= 0.15 * run.spent["total"] * int(HZ) + 10, (n, run.spent)
        for function in ("compress_work", "inner"):
            expected = run.spent[function] / run.spent["total"]
            got = sum(v for names, v, _ in stacks if py_index(names, WORK, function) is not None) / n
            assert abs(got - expected) <= tolerance(expected, n), \
                f"{python}: {function} has {got:.3f} of {n} samples, measured {expected:.3f} of the CPU"


ALTERNATE = "pyf_alternate"
ALTERNATE_SOURCE = '''\
import os, sys, time, zlib

DATA = bytes(range(256)) * 64 + os.urandom(1 << 14)


def squeeze():
    zlib.compress(DATA, 6)


def count():
    start = time.thread_time()
    x = 0
    while time.thread_time() - start < 0.0003:
        x += 1


'''
# The loop that alternates, in a function or in the module's own code (the
# two put the callees' frames at different places of the interpreter's stack).
ALTERNATE_LOOPS = {
    "in-a-function": '''\
def main(seconds):
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        squeeze()
        count()


main(float(sys.argv[1]))
''',
    "at-module-level": '''\
seconds = float(sys.argv[1])
start = time.thread_time()
while time.thread_time() - start < seconds:
    squeeze()
    count()
''',
}


@pytest.mark.parametrize("loop", sorted(ALTERNATE_LOOPS))
@pytest.mark.parametrize("which", WHICH)
def test_native_frames_belong_to_the_python_function_that_called_them(tmp_path, which, loop):
    """A script that switches between a zlib call and a pure-Python loop every
    few hundred microseconds: each sample's Python frames must be those of
    the moment its native stack was taken, so deflate sits beneath squeeze,
    not beneath count.  (Python frames read some time after the sample, from
    a thread that has moved on, pair one moment's C stack with another's
    Python function.)"""
    # Known limit (README, Python programs): Debian's PGO build of 3.11 leaves
    # a stale pointer into count's code in a spill slot of the evaluation
    # loop's own stack frame, where squeeze and count share one frame
    # address; the confirmation cannot tell it from a live one.  Only the
    # pairing checks are excused there, nothing else.
    spill_slot_limit = which == "system" and loop == "at-module-level"
    for python in supported_interpreters(which):
        script = str(tmp_path / (ALTERNATE + ".py"))
        with open(script, "w") as f:
            f.write(ALTERNATE_SOURCE + ALTERNATE_LOOPS[loop])
        proc = ctprof(["run", "--hz", "997", "-o", "alt.ctprof", "--", python, script, "1.0"], cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr.decode()
        profile, _ = load_profile(str(tmp_path / "alt.ctprof"))
        under: Dict[str, int] = {}
        for names, value, _ in samples_of(profile):
            matched = [(i, FRAME.match(name)) for i, name in enumerate(names)]
            script_frames = [i for i, m in matched if m and m["module"] == ALTERNATE]
            if "deflate" in names[(script_frames[-1] if script_frames else 0):]:
                leaf = FRAME.match(names[script_frames[-1]])["qualname"] if script_frames else "(no Python frame)"
                under[leaf] = under.get(leaf, 0) + value
        deflate = sum(under.values())
        assert deflate > 200, f"{python}: {under}"
        # Never shown under a function that did not call it.  Samples whose
        # frames could not be read in time keep native frames only (the run
        # says how many): at least half of them must still have their Python
        # caller (measured on the loaded 2-core machine: 72-87%).
        paired = under.get("count", 0) <= 0.05 * deflate and under.get("squeeze", 0) >= 0.5 * deflate
        if not paired and spill_slot_limit:
            pytest.xfail(f"stale spill slot on Debian's 3.11 build, a documented limit: {under}")
        assert paired, f"{python}: samples in deflate by the Python function they are shown under: {under}"


# ---------------------------------------------------------------------------
# 3. Threads

THREADS = "pyf_threads"
THREADS_SOURCE = '''\
import json, sys, threading, time


def spin_alpha(seconds, out):
    out["alpha_tid"] = threading.get_native_id()
    start = time.thread_time()
    x = 0
    while time.thread_time() - start < seconds:
        for i in range(200):
            x += i
    out["alpha"] = time.thread_time() - start


def spin_beta(seconds, out):
    out["beta_tid"] = threading.get_native_id()
    start = time.thread_time()
    x = 1
    while time.thread_time() - start < seconds:
        for i in range(200):
            x ^= i
    out["beta"] = time.thread_time() - start


def main(result_path, seconds):
    out = {}
    threads = [threading.Thread(target=spin_alpha, args=(seconds, out), name="alpha"),
               threading.Thread(target=spin_beta, args=(seconds * 1.5, out), name="beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["total"] = time.process_time()
    with open(result_path, "w") as f:
        json.dump(out, f)


main(sys.argv[1], float(sys.argv[2]))
'''


@pytest.mark.parametrize("which", WHICH)
def test_threads_have_their_own_python_frames(tmp_path, which):
    for python in supported_interpreters(which):
        script = str(tmp_path / (THREADS + ".py"))
        with open(script, "w") as f:
            f.write(THREADS_SOURCE)
        result = str(tmp_path / "threads.json")
        proc = ctprof(["run", "--hz", HZ, "-o", "threads.ctprof", "--", python, script, result, "0.3"],
                      cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr.decode()
        with open(result) as f:
            spent = json.load(f)
        profile, _ = load_profile(str(tmp_path / "threads.ctprof"))
        stacks = samples_of(profile)
        n = sum(v for _, v, _ in stacks)
        for function, key in (("spin_alpha", "alpha"), ("spin_beta", "beta")):
            mine = [(names, v, tid) for names, v, tid in stacks if py_index(names, THREADS, function) is not None]
            tids = {tid for _, _, tid in mine}
            assert tids == {spent[key + "_tid"]}, f"{python}: {function} under threads {tids}"
            # each thread's frames start at threading's bootstrap, not at the main script
            # (before 3.11 a code object has no qualified name: "run", not "Thread.run")
            assert all(any(py_index(names, "threading", q) is not None for q in ("Thread.run", "run")) and
                       py_index(names, THREADS, "main") is None for names, _, _ in mine), python
            expected = spent[key] / spent["total"]
            got = sum(v for _, v, _ in mine) / n
            assert abs(got - expected) <= tolerance(expected, n), \
                f"{python}: {function} has {got:.3f} of {n} samples, measured {expected:.3f}"
            body = body_lines(THREADS_SOURCE, function)
            assert set(frame_lines(profile, THREADS, function)) <= set(body), python


# ---------------------------------------------------------------------------
# 4. attach

ATTACH = "pyf_attach"
ATTACH_SOURCE = '''\
import os, sys, time, zlib


def busy_until(stop_path):
    data = bytes(range(256)) * 1024 + os.urandom(1 << 16)
    deadline = time.monotonic() + 60
    while not os.path.exists(stop_path) and time.monotonic() < deadline:
        zlib.compress(data, 6)


def main(ready_path, stop_path):
    open(ready_path, "w").close()
    busy_until(stop_path)


main(sys.argv[1], sys.argv[2])
'''


def _wait_for(path: str, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("which", WHICH)
def test_attach_reads_python_frames_of_a_running_interpreter(tmp_path, which):
    for python in supported_interpreters(which):
        script = str(tmp_path / (ATTACH + ".py"))
        with open(script, "w") as f:
            f.write(ATTACH_SOURCE)
        ready, stop = str(tmp_path / "ready"), str(tmp_path / "stop")
        for path in (ready, stop):
            if os.path.exists(path):
                os.unlink(path)
        target = subprocess.Popen([python, script, ready, stop], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for(ready, target)
            proc = ctprof(["attach", str(target.pid), "--duration", "2", "--hz", HZ, "-o", "attach.ctprof"],
                          cwd=str(tmp_path))
        finally:
            open(stop, "w").close()
            out, err = target.communicate(timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
        assert target.returncode == 0, err.decode()
        profile, _ = load_profile(str(tmp_path / "attach.ctprof"))
        stacks = samples_of(profile)
        n = sum(v for _, v, _ in stacks)
        assert n > 300, f"{python}: {n} samples"
        mine = [(names, v) for names, v, _ in stacks if py_index(names, ATTACH, "busy_until") is not None]
        hits = sum(v for _, v in mine)
        assert hits >= 0.9 * n, f"{python}: busy_until on {hits} of {n} samples"
        assert set(frame_lines(profile, ATTACH, "busy_until")) <= set(body_lines(ATTACH_SOURCE, "busy_until"))
        callers = beneath = 0
        for names, v in mine:
            at = py_index(names, ATTACH, "busy_until")
            top = py_index(names, ATTACH, "<module>")
            caller = py_index(names, ATTACH, "main")
            if top is not None and caller is not None and top < caller < at and "Py_RunMain" in names[:top]:
                callers += v
            if "deflate" in names[at + 1:]:
                beneath += v
        assert callers >= 0.95 * hits, f"{python}: <module> -> main above busy_until on {callers} of {hits}"
        assert beneath >= 0.8 * hits, f"{python}: deflate beneath busy_until on {beneath} of {hits}"


# ---------------------------------------------------------------------------
# 5. A saved profile drawn again


def test_saved_profile_renders_python_frames_in_the_svg(work_run, tmp_path):
    python = next((exes[0] for exes in (_found(w) for w in WHICH) if exes), None)
    if python is None:
        pytest.skip("no supported CPython found")
    run = work_run(python)
    svg = str(tmp_path / "again.svg")
    proc = ctprof(["svg", os.path.join(run.directory, "work.ctprof"), "-o", svg], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode()
    with open(svg, encoding="utf-8") as f:
        text = f.read()
    # '<module>' is escaped in the markup ...
    assert f"{WORK}.&lt;module&gt; ({WORK}.py:" in text
    assert f"{WORK}.<module>" not in text
    # ... and reads back as the frame's name in the tooltips
    titles = [el.text or "" for el in ET.fromstring(text).iter() if el.tag.endswith("title")]
    for function in ("<module>", "main", "outer", "inner", "compress_work"):
        assert any(t.startswith(f"{WORK}.{function} ({WORK}.py:") for t in titles), function
    # report on the same file names them too
    proc = ctprof(["report", os.path.join(run.directory, "work.ctprof"), "--top", "40"], cwd=str(tmp_path))
    assert proc.returncode == 0 and f"{WORK}.inner ({WORK}.py:" in proc.stdout.decode() + proc.stderr.decode()


def _found(which: str) -> List[str]:
    try:
        return supported_interpreters(which)
    except pytest.skip.Exception:
        return []


# ---------------------------------------------------------------------------
# 6. An interpreter ctprof cannot read


@pytest.mark.parametrize("which", ["3.8", "3.7"])
def test_unsupported_interpreter_gets_native_frames_and_a_note(tmp_path, which):
    for python in interpreters(which):
        version = tuple(_describe(python)["version"])
        assert version not in cpython.LAYOUTS
        run = run_work(python, str(tmp_path), seconds=0.2)
        assert run.spent["compress_work"] >= 0.2 and run.spent["inner"] >= 0.2
        err = run.proc.stderr.decode()
        notes = re.findall(r"^ctprof:\s+note: (Python .*)$", err, re.M)
        pattern = (rf"Python {version[0]}\.{version[1]} \((/\S+)\) is not supported "
                   rf"\({re.escape(cpython.SUPPORTED)}\): native frames only")
        said = [m for m in (re.fullmatch(pattern, note) for note in notes) if m]
        assert len(said) == 1, err
        image = said[0].group(1)
        assert re.fullmatch(rf"(lib)?python{version[0]}\.{version[1]}[a-z]*(\.so[.\d]*)?", os.path.basename(image))
        # the note is kept in the saved session too, for the process that ran it
        saved = [note for proc in run.session.processes.values() for note in (proc.notes or [])]
        assert said[0].group(0) in saved, saved
        # native frames only: the interpreter's and libz's, no Python frame
        assert not [f.name for f in run.profile.frames if f.category == "python" or FRAME.match(f.name)]
        stacks = samples_of(run.profile)
        n = sum(v for _, v, _ in stacks)
        assert n > 100
        assert sum(v for names, v, _ in stacks if "_PyEval_EvalFrameDefault" in names) >= 0.9 * n
        assert sum(v for names, v, _ in stacks if "deflate" in names) >= 0.2 * n


# ---------------------------------------------------------------------------
# In-process capture: the heap hooks (run --mem), the signal sampler, and
# self-profiling, each reading Python frames in the program itself.

HEAP = "pyf_heap"
HEAP_SOURCE = '''\
import json, sys

keep = []


def big_buffers(n, size):
    for _ in range(n):
        keep.append(bytearray(size))


def small_objects(indexes):
    out = [None] * len(indexes)
    for i in indexes:
        out[i] = bytearray(100)
    keep.append(out)


def main(result_path):
    big_buffers(20, 1 << 20)
    indexes = list(range(20000))       # made here: small_objects allocates no int
    small_objects(indexes)
    # What each function allocated, by the interpreter's own account: with
    # PYTHONMALLOC=malloc every object is one malloc of its getsizeof.
    expected = {"big_buffers": 20 * sys.getsizeof(bytearray(1 << 20)),
                "small_objects": 20000 * sys.getsizeof(bytearray(100)) + sys.getsizeof([None] * 20000)}
    with open(result_path, "w") as f:
        json.dump(expected, f)


main(sys.argv[1])
'''


@pytest.mark.parametrize("which", WHICH)
def test_mem_bytes_per_python_function(tmp_path, which):
    """run --mem: each Python function's allocated bytes within 1% of what it
    allocated (PYTHONMALLOC=malloc, so small objects reach malloc too), with
    the interpreter's C code beneath it and its caller above."""
    for python in supported_interpreters(which):
        script = str(tmp_path / (HEAP + ".py"))
        with open(script, "w") as f:
            f.write(HEAP_SOURCE)
        result = str(tmp_path / "expected.json")
        proc = ctprof(["run", "--mem", "-o", "heap.ctprof", "--", python, script, result], cwd=str(tmp_path),
                      env={"PYTHONMALLOC": "malloc"})
        assert proc.returncode == 0, proc.stderr.decode()
        profile, _ = load_profile(str(tmp_path / "heap.ctprof"))
        with open(result) as f:
            expected = json.load(f)
        got: Dict[str, int] = {}
        callers_ok = beneath_ok = 0
        for names, value, _ in samples_of_metric(profile, "alloc_bytes"):
            for qualname in expected:
                at = py_index(names, HEAP, qualname)
                if at is None:
                    continue
                got[qualname] = got.get(qualname, 0) + value
                if py_index(names[:at], HEAP, "main") is not None:
                    callers_ok += value
                if at + 1 < len(names) and not FRAME.match(names[at + 1]):
                    beneath_ok += value
        for qualname, want in expected.items():
            assert want * 0.99 <= got.get(qualname, 0) <= want * 1.01, \
                f"{python}: {qualname} allocated {got.get(qualname, 0)} bytes, the script {want}"
        total = sum(got.values())
        assert callers_ok >= 0.99 * total, f"{python}: main above on {callers_ok} of {total} bytes"
        assert beneath_ok >= 0.99 * total, f"{python}: native frames beneath on {beneath_ok} of {total} bytes"


LIVE = "pyf_heap_live"
LIVE_SOURCE = '''\
import sys, time

keep = []


def leaf_a(n):
    for _ in range(n):
        keep.append(bytearray(64))


def leaf_b(n):
    for _ in range(n):
        keep.append(bytearray(96))


def level(depth, n):
    if depth == 0:
        leaf_a(n)
        leaf_b(n)
    else:
        level(depth - 1, n)


# New call stacks keep coming for seconds: deeper each round, up to 60.
end = time.monotonic() + float(sys.argv[1])
rounds = 0
while time.monotonic() < end:
    level(rounds % 60, 20)
    rounds += 1
    if len(keep) > 100000:
        keep.clear()
'''


def test_mem_python_stacks_resolved_while_the_program_runs(tmp_path):
    """run --mem resolves a CPython program's heap stacks, Python frames
    and all, while it runs (symbols.live): the profile it saves is the one
    its raw session resolves to at the end."""
    python = supported_interpreters("system")[0]
    script = str(tmp_path / (LIVE + ".py"))
    with open(script, "w") as f:
        f.write(LIVE_SOURCE)
    proc = ctprof(["run", "--mem", "-o", "live.ctprof", "--", python, script, "2"], cwd=str(tmp_path),
                  env={"PYTHONMALLOC": "malloc"})
    assert proc.returncode == 0, proc.stderr.decode()
    profile, _ = load_profile(str(tmp_path / "live.ctprof"))
    stats = profile.metadata["symbol_stats"]
    # one process: its rows came from the live work, some while it ran
    assert stats.get("heap_stacks_live", 0) > 0
    assert stats["heap_stacks_live"] - stats.get("heap_stacks_at_end", 0) > 0
    made = heap_rows(profile)
    assert made == heap_rows_at_the_end(str(tmp_path / "live.ctprof"))
    # every depth of the recursion, each under its callers: the frames are Python frames
    depths = set()
    for names in made:
        at = py_index(names, LIVE, "leaf_a")
        if at is not None:
            depths.add(sum(1 for n in names[:at] if py_index((n,), LIVE, "level") is not None))
    assert depths == set(range(1, 61))


def samples_of_metric(profile, metric: str) -> List[Tuple[Tuple[str, ...], int, Optional[int]]]:
    values = profile.values[metric]
    return [(tuple(profile.frames[i].name for i in stack), values[k], profile.tids[k] if profile.tids else None)
            for k, stack in enumerate(profile.stacks) if values[k]]


@pytest.mark.parametrize("which", WHICH)
def test_signal_sampler_reads_python_frames_in_the_program(tmp_path, which):
    """--sampler signal: the handler reads the thread's frames at the
    sample itself, so deflate is beneath compress_work on nearly every one
    of its samples and the shares match the script's own CPU time."""
    for python in supported_interpreters(which):
        script = str(tmp_path / (WORK + ".py"))
        with open(script, "w") as f:
            f.write(WORK_SOURCE)
        result = str(tmp_path / "spent.json")
        proc = ctprof(["run", "--sampler", "signal", "--hz", HZ, "-o", "sig.ctprof", "--",
                       python, script, result, "0.4"], cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr.decode()
        profile, _ = load_profile(str(tmp_path / "sig.ctprof"))
        with open(result) as f:
            spent = json.load(f)
        counts = {"compress_work": 0, "inner": 0}
        beneath = 0
        total = 0
        for names, value, _ in samples_of(profile):
            total += value
            for qualname in counts:
                at = py_index(names, WORK, qualname)
                if at is not None:
                    counts[qualname] += value
                    if qualname == "compress_work" and "deflate" in names[at + 1:]:
                        beneath += value
        assert counts["compress_work"] > 50 and beneath >= 0.9 * counts["compress_work"], (python, counts, beneath)
        for qualname, n in counts.items():
            share, want = n / total, spent[qualname] / spent["total"]
            assert abs(share - want) <= tolerance(want, total), (python, qualname, share, want)


SELF = "pyf_self"
SELF_SOURCE = '''\
import json, os, sys, time, zlib
import ctprof

DATA = os.urandom(1 << 16)


def squeeze_for(seconds):
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        zlib.compress(DATA, 6)


with ctprof.profile(hz=499) as p:
    squeeze_for(0.4)
result = p.result
stacks = result.named_stacks()
json.dump({"python_frames": result.metadata.get("python_frames"),
           "total": result.total(),
           "squeeze": sum(v for n, v in stacks if any(".squeeze_for (" in x for x in n)),
           "deflate_beneath": sum(v for n, v in stacks
                                  if any(".squeeze_for (" in x for x in n) and "deflate" in n)},
          open(sys.argv[1], "w"))
'''


@pytest.mark.parametrize("which", WHICH)
def test_self_profiling_reads_python_frames(tmp_path, which):
    """ctprof.profile() inside each interpreter: Python frames without the
    interpreter's headers, with deflate beneath them."""
    for python in supported_interpreters(which):
        script = str(tmp_path / (SELF + ".py"))
        with open(script, "w") as f:
            f.write(SELF_SOURCE)
        result = str(tmp_path / "self.json")
        from conftest import ctprof_env
        proc = subprocess.run([python, script, result], cwd=str(tmp_path), capture_output=True, timeout=120,
                              env=ctprof_env())
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        with open(result) as f:
            got = json.load(f)
        assert got["python_frames"] is True, (python, got)
        assert got["squeeze"] >= 0.8 * got["total"] and got["deflate_beneath"] >= 0.8 * got["squeeze"], (python, got)
