#!/usr/bin/env python3
"""Python programs: ctprof against py-spy and memray on one workload that
measures its own truth.

The workload (``bench/progs/py_workload.py``) times each of its functions
with ``time.thread_time()`` -- ``zlib_heavy`` (time in libz beneath a
Python frame), ``tokenize_text`` (pure bytecode), ``sort_records`` (a
mix) -- and allocates exactly 40 MiB of bytearrays in ``fill_buffers``,
then prints its per-function CPU shares and those bytes as one JSON line.
It is run, interleaved, ``--runs`` times each:

* plain;
* ``ctprof run --hz 100 -o X.ctprof --folded X.folded``;
* ``ctprof run --mem --hz 100`` (its folded output is bytes allocated; the
  CPU samples it keeps are read back with ``ctprof folded --metric
  samples``, outside the timing);
* ``py-spy record -r 100 -f raw``, with and without ``--native``;
* ``memray run``, with and without ``--native``, then ``memray transform
  csv`` (the stacks of what was live at the heap's peak: fill_buffers'
  blocks are held to exit, so they are all there), timed as "analysis".

py-spy and memray are installed with pip into a throwaway virtual
environment made from the workload's interpreter (memray must run inside
it), ``~/.cache/ctprof-bench/venv-<python>`` by default (``--venv``),
never into ctprof's own dependencies.  If that fails, one line says which
peer is skipped and why.

Printed: per tool the median wall time (for memray, recording plus
analysis), the ratio to the plain run, the peak RSS of the largest process
of the tree (``wait4``'s ``ru_maxrss``), the CPU samples, and for each
workload function the share of samples whose stack holds it (inclusive)
with, in brackets, the points of difference from the share the workload
measured for itself in that same run (medians over runs); for ``zlib_heavy``
how many of its samples show libz's ``deflate`` beneath it; for the heap
tools the bytes attributed to ``fill_buffers`` against the bytes it asked
for.

A Python function is recognised in a frame named ``NAME (FILE:LINE)`` or
``NAME`` with any dotted prefix (``py_workload.NAME (py_workload.py:42)``
as ctprof names Python frames, ``NAME (py_workload.py:42)`` as py-spy
does).  A tool whose stacks hold no Python frame at all gets "no Python
frames" instead of shares.

Usage: ``python3 bench/bench_python.py [--runs N] [--quick] [--python PATH]``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOAD = os.path.join(HERE, "progs", "py_workload.py")
CPU_FUNCTIONS = ("zlib_heavy", "tokenize_text", "sort_records")
ALLOC_FUNCTION = "fill_buffers"
HZ = 100
PEERS = ("py-spy", "memray")
# a frame that is Python code: 'name (file.py:LINE)' (ctprof, py-spy)
PYTHON_FRAME = re.compile(r"\((?:[^()]*/)?[^()/]+\.py(?::\d+)?\)$")
NATIVE_BENEATH = re.compile(r"^(?:deflate|deflate_\w+|longest_match|compress_block)\b|\blibz\.so")

Stacks = List[Tuple[List[str], float]]


def function_frame(name: str) -> "re.Pattern[str]":
    """A frame of Python function ``name``: the bare name or any dotted
    prefix (``module.name``), then optionally `` (file:line)``.  Not a frame
    of ``name.<locals>.<lambda>`` nor of ``other_name``."""
    return re.compile(r"^(?:.*[.:])?" + re.escape(name) + r"(?: \(.*\))?$")


# ---------------------------------------------------------------- running

@dataclasses.dataclass
class Run:
    wall: float              # seconds, the recording (and for memray the analysis)
    analysis: float          # seconds of it spent in the analysis step
    rss_kb: int              # largest process of the tree
    truth: Dict[str, object]  # the workload's own JSON line
    cpu: Optional[Stacks]    # CPU samples, folded
    heap: Optional[Stacks]   # bytes, folded


@dataclasses.dataclass
class Tool:
    name: str
    record: Callable[[List[str], str], List[str]]            # (workload command, tmp) -> command
    analysis: Optional[Callable[[str], List[str]]] = None     # tmp -> command, timed too
    cpu: Optional[Callable[[str], Stacks]] = None             # tmp -> CPU stacks, not timed
    heap: Optional[Callable[[str], Stacks]] = None            # tmp -> heap stacks, not timed
    outputs: Tuple[str, ...] = ()                             # removed before each run
    env: Optional[Dict[str, str]] = None


class ToolFailed(Exception):
    pass


def wait_rusage(cmd: Sequence[str], cwd: str, env: Optional[Dict[str, str]], stdout_path: str) -> Tuple[float, int, str]:
    """Run ``cmd``; its wall time, the peak RSS (KiB) of the largest process
    of its tree (``wait4``: the child's own and its reaped descendants'),
    and the end of its stderr.  Raises ToolFailed on a non-zero exit."""
    err_path = stdout_path + ".err"
    with open(stdout_path, "wb") as out, open(err_path, "wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(err_path, "rb") as f:
        tail = f.read()[-1500:].decode(errors="replace")
    if proc.returncode != 0:
        raise ToolFailed(f"exit status {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return wall, usage.ru_maxrss, tail


def workload_truth(stdout_path: str) -> Dict[str, object]:
    with open(stdout_path, errors="replace") as f:
        lines = [line for line in f if '"py_workload"' in line]
    if not lines:
        raise ToolFailed("the workload printed no result line")
    return json.loads(lines[-1])


def run_once(tool: Tool, cmd: List[str], tmp: str) -> Run:
    for name in tool.outputs:
        path = os.path.join(tmp, name)
        if os.path.exists(path):
            os.unlink(path)
    out = os.path.join(tmp, "stdout.txt")
    wall, rss, _ = wait_rusage(tool.record(cmd, tmp), tmp, tool.env, out)
    truth = workload_truth(out)
    analysis = 0.0
    if tool.analysis:
        analysis, a_rss, _ = wait_rusage(tool.analysis(tmp), tmp, tool.env, os.path.join(tmp, "analysis.txt"))
        rss = max(rss, a_rss)
    return Run(wall + analysis, analysis, rss, truth,
               tool.cpu(tmp) if tool.cpu else None, tool.heap(tmp) if tool.heap else None)


# ---------------------------------------------------------------- outputs

def read_folded_text(text: str) -> Stacks:
    stacks: Stacks = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        try:
            stacks.append((stack.split(";"), float(count)))
        except ValueError:
            continue
    return stacks


def read_folded(path: str) -> Stacks:
    with open(path, errors="replace") as f:
        return read_folded_text(f.read())


def ctprof_folded(profile: str, metric: str, env: Dict[str, str]) -> Stacks:
    proc = subprocess.run([sys.executable, "-m", "ctprof", "folded", profile, "--metric", metric],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ToolFailed(f"ctprof folded {profile}: {proc.stderr.strip()[-500:]}")
    return read_folded_text(proc.stdout)


def read_memray_csv(path: str) -> Stacks:
    """``memray transform csv``: one row per stack, frames 'function;file;line'
    joined by '|', leaf first."""
    stacks: Stacks = []
    with open(path, newline="", errors="replace") as f:
        for row in csv.DictReader(f):
            frames = [frame.split(";")[0] for frame in row["stack_trace"].split("|")]
            stacks.append((list(reversed(frames)), float(row["size"])))
    return stacks


def has_python_frames(stacks: Stacks) -> bool:
    names = [function_frame(n) for n in CPU_FUNCTIONS + (ALLOC_FUNCTION,)]
    return any(PYTHON_FRAME.search(frame) or any(p.match(frame) for p in names)
               for frames, _ in stacks for frame in frames)


def inclusive(stacks: Stacks, name: str) -> float:
    """The weight of the stacks holding a frame of ``name`` (each stack once)."""
    pattern = function_frame(name)
    return sum(value for frames, value in stacks if any(pattern.match(frame) for frame in frames))


def native_beneath(stacks: Stacks, name: str) -> Tuple[float, float]:
    """(samples of ``name``, those of them with libz beneath its frame)."""
    pattern = function_frame(name)
    total = under = 0.0
    for frames, value in stacks:
        at = next((i for i, frame in enumerate(frames) if pattern.match(frame)), None)
        if at is None:
            continue
        total += value
        if any(NATIVE_BENEATH.search(frame) for frame in frames[at + 1:]):
            under += value
    return total, under


# ---------------------------------------------------------------- peers

def real_interpreter(python: str) -> str:
    """The interpreter's own executable (a pyenv shim is a shell script: the
    profilers would time and sample bash first)."""
    proc = subprocess.run([python, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SystemExit(f"bench_python: {python} does not run: {proc.stderr.strip()[-300:]}")
    return os.path.realpath(proc.stdout.strip())


def default_venv(python: str) -> str:
    proc = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True)
    tag = hashlib.sha256(python.encode()).hexdigest()[:8]
    return os.path.join(os.path.expanduser("~"), ".cache", "ctprof-bench", f"venv-py{proc.stdout.strip()}-{tag}")


def install_peers(python: str, venv: str) -> Dict[str, str]:
    """pip-install py-spy and memray into a virtual environment of ``python``
    (memray runs the workload with that venv's interpreter, the same
    binary).  Returns {peer: why it is skipped} for those that failed."""
    skipped: Dict[str, str] = {}
    vpython = os.path.join(venv, "bin", "python")
    if not os.path.exists(vpython):
        os.makedirs(os.path.dirname(venv), mode=0o700, exist_ok=True)
        proc = subprocess.run([python, "-m", "venv", venv], capture_output=True, text=True)
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            return {peer: f"'{python} -m venv' failed ({why})" for peer in PEERS}
    for peer in PEERS:
        if os.path.exists(os.path.join(venv, "bin", peer)):
            continue
        print(f"(installing {peer} with pip into {venv})", flush=True)
        proc = subprocess.run([vpython, "-m", "pip", "install", "-q", peer], capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(os.path.join(venv, "bin", peer)):
            lines = [l for l in proc.stderr.splitlines() if l.startswith("ERROR")] or proc.stderr.splitlines() or ["?"]
            skipped[peer] = f"pip could not install it ({lines[-1].strip()[:200]})"
    return skipped


def make_tools(venv: str, skipped: Dict[str, str], ctprof_env: Dict[str, str]) -> List[Tool]:
    ctprof = [sys.executable, "-m", "ctprof", "run", "--hz", str(HZ)]
    tools = [
        Tool("plain", lambda cmd, tmp: cmd),
        Tool(f"ctprof run --hz {HZ}",
             lambda cmd, tmp: ctprof + ["-o", "c.ctprof", "--folded", "c.folded", "--"] + cmd,
             cpu=lambda tmp: read_folded(os.path.join(tmp, "c.folded")),
             outputs=("c.ctprof", "c.folded"), env=ctprof_env),
        Tool(f"ctprof run --mem --hz {HZ}",
             lambda cmd, tmp: ctprof + ["--mem", "-o", "m.ctprof", "--folded", "m.folded", "--"] + cmd,
             cpu=lambda tmp: ctprof_folded(os.path.join(tmp, "m.ctprof"), "samples", ctprof_env),
             heap=lambda tmp: read_folded(os.path.join(tmp, "m.folded")),
             outputs=("m.ctprof", "m.folded"), env=ctprof_env),
    ]
    bin_dir = os.path.join(venv, "bin")
    if "py-spy" not in skipped:
        spy = os.path.join(bin_dir, "py-spy")
        for native in (False, True):
            flag = ["--native"] if native else []
            out = "spy-native.txt" if native else "spy.txt"
            tools.append(Tool(
                f"py-spy record -r {HZ}" + (" --native" if native else ""),
                lambda cmd, tmp, flag=flag, out=out: [spy, "record", "-r", str(HZ), "-f", "raw", "-o", out] + flag
                + ["--"] + cmd,
                cpu=lambda tmp, out=out: read_folded(os.path.join(tmp, out)), outputs=(out,)))
    if "memray" not in skipped:
        vpython, memray = os.path.join(bin_dir, "python"), os.path.join(bin_dir, "memray")
        for native in (False, True):
            flag = ["--native"] if native else []
            base = "memray-native" if native else "memray"
            tools.append(Tool(
                "memray run" + (" --native" if native else "") + " + transform csv",
                # the workload command minus its interpreter: memray runs the script itself
                lambda cmd, tmp, flag=flag, base=base: [vpython, "-m", "memray", "run", "-q", "-f", "-o", base + ".bin"]
                + flag + cmd[1:],
                analysis=lambda tmp, base=base: [memray, "transform", "csv", "-f", "-o", base + ".csv", base + ".bin"],
                heap=lambda tmp, base=base: read_memray_csv(os.path.join(tmp, base + ".csv")),
                outputs=(base + ".bin", base + ".csv")))
    return tools


# ---------------------------------------------------------------- report

def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def with_python_frames(name: str, runs: List[Run], kind: str, notes: List[str]) -> List[Run]:
    """The runs whose ``kind`` ('cpu' or 'heap') stacks hold Python frames;
    a note for the others (a share of 0 would drag the median down)."""
    have = [r for r in runs if getattr(r, kind) is not None]
    good = [r for r in have if has_python_frames(getattr(r, kind))]
    if good and len(good) < len(have):
        notes.append(f"{name}: {len(have) - len(good)} of {len(have)} runs had no Python frames in its "
                     f"{'CPU' if kind == 'cpu' else 'heap'} stacks; its figures are from the other {len(good)}")
    return good


def cpu_cells(name: str, runs: List[Run], notes: List[str]) -> Tuple[List[str], str, str, str]:
    """Per function 'share (±points)', the worst difference, the sample
    count and libz beneath zlib_heavy; medians over runs."""
    stacks = [r.cpu for r in runs if r.cpu is not None]
    if not stacks:
        return ["-"] * len(CPU_FUNCTIONS), "-", "-", "-"
    samples = statistics.median(sum(v for _, v in s) for s in stacks)
    runs = with_python_frames(name, runs, "cpu", notes)
    if not runs:
        return ["no Python frames"] + [""] * (len(CPU_FUNCTIONS) - 1), "-", f"{samples:.0f}", "-"
    cells, worst = [], 0.0
    for function in CPU_FUNCTIONS:
        shares, diffs = [], []
        for r in runs:
            total = sum(v for _, v in r.cpu) or 1.0
            share = inclusive(r.cpu, function) / total
            shares.append(share)
            diffs.append(share - float(r.truth["share"][function]))  # type: ignore[index]
        diff = statistics.median(diffs)
        worst = max(worst, abs(diff))
        cells.append(f"{pct(statistics.median(shares))} ({100 * diff:+.1f})")
    beneath = [native_beneath(r.cpu, "zlib_heavy") for r in runs]
    total, under = sum(t for t, _ in beneath), sum(u for _, u in beneath)
    return cells, f"{100 * worst:.1f}", f"{samples:.0f}", pct(under / total) if total else "-"


def heap_cell(name: str, runs: List[Run], notes: List[str]) -> str:
    if not any(r.heap is not None for r in runs):
        return "-"
    runs = with_python_frames(name, runs, "heap", notes)
    if not runs:
        return "no Python frames"
    got = statistics.median(inclusive(r.heap, ALLOC_FUNCTION) for r in runs)
    asked = float(runs[0].truth["alloc_bytes"][ALLOC_FUNCTION])  # type: ignore[index]
    return f"{got / 2**20:.2f} MiB ({got - asked:+,.0f} B, {100 * (got / asked - 1):+.4f}%)"


def print_table(results: Dict[str, List[Run]], runs: int, rounds: int, python: str) -> None:
    plain = results["plain"]
    base = statistics.median(r.wall for r in plain)
    base_min = min(r.wall for r in plain)
    base_cpu = statistics.median(float(r.truth["process_cpu_s"]) for r in plain)  # type: ignore[arg-type]
    truth = {n: statistics.median(float(r.truth["share"][n]) for r in plain) for n in CPU_FUNCTIONS}  # type: ignore[index]
    asked = float(plain[0].truth["alloc_bytes"][ALLOC_FUNCTION])  # type: ignore[index]
    print(f"## Python frames: ctprof, py-spy, memray on one workload ({os.path.basename(WORKLOAD)} {rounds}, "
          f"{python}; medians of {runs} interleaved runs)\n")
    notes: List[str] = []
    pure_base = min(float(r.truth["cpu_s"]["tokenize_text"]) for r in plain)  # type: ignore[index]
    head = ["tool", "runs", "wall s (fastest)", "vs plain (fastest)", "of which analysis s", "workload CPU s",
            "pure-Python CPU s (fastest)", "peak RSS", "CPU samples"] + list(CPU_FUNCTIONS) + [
        "worst points", "libz beneath zlib_heavy", f"{ALLOC_FUNCTION} bytes"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, rs in results.items():
        wall = statistics.median(r.wall for r in rs)
        fastest = min(r.wall for r in rs)
        wall_cell = f"{wall:.2f} ({fastest:.2f})"
        analysis = f"{statistics.median(r.analysis for r in rs):.2f}" if any(r.analysis for r in rs) else "-"
        rss = f"{statistics.median(r.rss_kb for r in rs) / 1024:.0f} MiB"
        work = statistics.median(float(r.truth["process_cpu_s"]) for r in rs)  # type: ignore[arg-type]
        work_cell = f"{work:.2f} ({100 * (work / base_cpu - 1):+.1f}%)"
        pure = min(float(r.truth["cpu_s"]["tokenize_text"]) for r in rs)  # type: ignore[index]
        pure_cell = f"{pure:.3f}" if name == "plain" else f"{pure:.3f} ({100 * (pure / pure_base - 1):+.1f}%)"
        if name == "plain":
            cells = [pct(truth[n]) for n in CPU_FUNCTIONS] + ["-", "-", f"{asked / 2**20:.2f} MiB"]
            row = [f"plain (the workload's own {ALLOC_FUNCTION} bytes and thread_time shares)", str(len(rs)),
                   wall_cell, "1.00x", analysis, f"{work:.2f}", pure_cell, rss, "-"] + cells
        else:
            shares, worst, samples, beneath = cpu_cells(name, rs, notes)
            row = [name, str(len(rs)), wall_cell, f"{wall / base:.2f}x ({fastest / base_min:.2f}x)", analysis, work_cell,
                   pure_cell, rss, samples] + shares + [
                worst, beneath, heap_cell(name, rs, notes)]
        print("| " + " | ".join(row) + " |")
    for note in notes:
        print(f"\n{note}")
    print(f"\nShares: samples whose stack holds the function (inclusive), in brackets the points of difference "
          f"from the workload's own share in the same run.  A share p from n samples has a standard deviation of "
          f"sqrt(p(1-p)/n): at most {100 * (0.25 / max(1.0, base_cpu * HZ)) ** 0.5:.1f} points at the "
          f"{base_cpu * HZ:.0f} samples of the plain run's CPU time.  Workload CPU s: the process's own CPU time "
          f"(time.process_time at exit), what in-process sampling or hooks cost it, steadier than wall time on a "
          f"busy machine; pure-Python CPU s: the CPU time tokenize_text (bytecode only) measured for itself, the "
          f"fastest run, what sampling costs pure Python; in brackets after wall times, the fastest run (interference only ever adds time).  Heap: bytes of allocations whose stack holds {ALLOC_FUNCTION} (ctprof: all "
          f"allocated; memray: live at the peak, which these are) against the {asked:.0f} bytes it asked for "
          f"(best effort for memray: its csv transform).")


# ---------------------------------------------------------------- main

def first_and_last(e: Exception) -> str:
    """The failed command and the last line of its stderr."""
    lines = [l for l in str(e).splitlines() if l.strip()]
    return lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs per tool (default 3)")
    ap.add_argument("--quick", action="store_true", help="a shorter workload, one run")
    ap.add_argument("--rounds", type=int, help="workload rounds (default 40, 15 with --quick)")
    ap.add_argument("--python", default="python3", help="interpreter of the workload (default: python3 on PATH)")
    ap.add_argument("--venv", help="virtual environment for py-spy and memray (default ~/.cache/ctprof-bench/venv-...)")
    args = ap.parse_args()
    runs = 1 if args.quick else max(1, args.runs)
    rounds = args.rounds or (15 if args.quick else 40)
    python = real_interpreter(args.python)
    venv = os.path.abspath(args.venv or default_venv(python))
    skipped = install_peers(python, venv)
    for peer, why in skipped.items():
        print(f"{peer}: skipped, {why}")
    ctprof_env = dict(os.environ, PYTHONPATH=ROOT)
    tmp = tempfile.mkdtemp(prefix="ctprof-bench-python-")
    try:
        tools = make_tools(venv, skipped, ctprof_env)
        usable = []
        for tool in tools:  # warm the shim build, caches, page cache; drop what cannot run here
            try:
                run_once(tool, [python, WORKLOAD, "2"], tmp)
                usable.append(tool)
            except ToolFailed as e:
                print(f"{tool.name}: skipped, it failed here: {first_and_last(e)}")
                if tool.name == "plain":
                    print(str(e))
                    return 1
        cmd = [python, WORKLOAD, str(rounds)]
        results: Dict[str, List[Run]] = {tool.name: [] for tool in usable}
        for _ in range(runs):
            for tool in usable:
                try:
                    results[tool.name].append(run_once(tool, cmd, tmp))
                except ToolFailed as e:
                    print(f"{tool.name}: a run failed: {first_and_last(e)}")
        print_table({name: rs for name, rs in results.items() if rs}, runs, rounds, python)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
