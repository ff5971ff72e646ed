#!/usr/bin/env python3
"""The fixed cost ``ctprof run`` adds around a program: before its exec and after its exit.

The program is ``g++ -O2 -c`` of bench_e2e.py's template-heavy file, run
CPU-only (``ctprof run -q``, the kernel sampler at its default rate).
``strace -f --seccomp-bpf -e trace=execve,exit_group -ttt`` stamps the
moments that matter without slowing anything else down (the filter stops
only those two calls):

- before: from python's exec to the program's exec (``/usr/bin/g++``);
- after: from the program's exit (g++'s ``exit_group``) to ctprof's.

Then, without strace, the wall time of the plain compile and of ``ctprof
run`` interleaved: fastest and median of the runs, and their ratio.  Runs
of every tree are interleaved round by round (this machine's other load
moves all of them alike).  Each run compiles ctprof's modules from source
when no bytecode is cached (as with PYTHONDONTWRITEBYTECODE=1 in a source
tree); the import cost is part of what is measured.

Usage: ``python3 bench/bench_startup.py [--runs N] [--tree DIR ...]``; each
``--tree`` is a ctprof source tree put on PYTHONPATH (default: this one),
e.g. a ``git archive`` of an older commit to compare with.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_e2e import TEMPLATE_CPP  # noqa: E402

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
COMPILE = ["g++", "-O2", "-c", "templates.cpp", "-o", "t.o"]
LINE = re.compile(r"(\d+)\s+([\d.]+)\s+(.*)")


def ctprof_cmd(tree: str, work: str) -> List[str]:
    return ["env", f"PYTHONPATH={tree}", PYTHON, "-m", "ctprof", "run", "-q",
            "-o", os.path.join(work, "out.ctprof")] + COMPILE


def timeline(tree: str, work: str) -> Tuple[float, float]:
    """(seconds before the program's exec, seconds after its exit) of one run."""
    log = os.path.join(work, "strace.log")
    subprocess.run(["strace", "-f", "--seccomp-bpf", "-e", "trace=execve,exit_group", "-ttt", "-o", log]
                   + ctprof_cmd(tree, work), cwd=work, check=True, stderr=subprocess.DEVNULL)
    py_pid = py_exec = py_exit = prog_pid = prog_exec = prog_exit = None
    with open(log) as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            pid, stamp, call = int(m[1]), float(m[2]), m[3]
            if py_exec is None and call.startswith(f'execve("{PYTHON}"'):
                py_pid, py_exec = pid, stamp
            elif prog_exec is None and py_exec is not None and call.startswith('execve("/usr/bin/g++"'):
                prog_pid, prog_exec = pid, stamp
            elif call.startswith("exit_group"):
                if pid == prog_pid and prog_exit is None:
                    prog_exit = stamp
                elif pid == py_pid:
                    py_exit = stamp
    if None in (py_exec, prog_exec, prog_exit, py_exit):
        raise SystemExit(f"could not find the exec and exit of python and g++ in {log}")
    return prog_exec - py_exec, py_exit - prog_exit


def wall(cmd: List[str], work: str) -> float:
    start = time.monotonic()
    subprocess.run(cmd, cwd=work, check=True, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--tree", action="append", help="ctprof source tree on PYTHONPATH (repeatable; default: this one)")
    ap.add_argument("--quick", action="store_true", help="two rounds")
    args = ap.parse_args()
    trees = [os.path.abspath(t) for t in (args.tree or [ROOT])]
    runs = 2 if args.quick else args.runs
    if not shutil.which("strace") or not shutil.which("g++"):
        print("bench_startup: needs strace and g++ (apt-get install strace g++); skipped")
        return 0
    work = tempfile.mkdtemp(prefix="ctprof-bench-startup-")
    try:
        with open(os.path.join(work, "templates.cpp"), "w") as f:
            f.write(TEMPLATE_CPP)
        before: Dict[str, List[float]] = {t: [] for t in trees}
        after: Dict[str, List[float]] = {t: [] for t in trees}
        walls: Dict[str, List[float]] = {"plain": [], **{t: [] for t in trees}}
        for _ in range(runs):
            for tree in trees:
                pre, post = timeline(tree, work)
                before[tree].append(pre)
                after[tree].append(post)
            walls["plain"].append(wall(COMPILE, work))
            for tree in trees:
                walls[tree].append(wall(ctprof_cmd(tree, work), work))
        print(f"ctprof run -q (CPU only, its default rate) of g++ -O2 -c templates.cpp, {runs} interleaved rounds; python {PYTHON}")
        print(f"{'tree':40s} {'before exec':>12s} {'after exit':>11s}   (medians; strace timeline)")
        for tree in trees:
            print(f"{tree:40s} {statistics.median(before[tree]) * 1e3:9.0f} ms {statistics.median(after[tree]) * 1e3:8.0f} ms")
        fastest, median = min(walls["plain"]), statistics.median(walls["plain"])
        print(f"\n{'wall':40s} {'fastest':>12s} {'median':>11s}")
        for key, times in walls.items():
            print(f"{key:40s} {min(times):7.3f} s {min(times) / fastest:.3f}x "
                  f"{statistics.median(times):6.3f} s {statistics.median(times) / median:.3f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
