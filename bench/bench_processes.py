#!/usr/bin/env python3
"""What ``ctprof run`` costs per process a program starts.

A build runs hundreds of short processes (make, sh, the compiler driver,
cc1, as, ld), and under ``--mem`` each one waits at its exit for the
controller to drain its ring and scan its memory for leaks.  This runs a
shell loop of ``--count`` short programs (``/bin/ls /``, which allocates
a little) and the same shell with no program, plain, under ``ctprof run
-q`` and under ``ctprof run -q --mem``, interleaved round by round, and
prints the median cost per process: (loop - empty) / count, in ms.

Usage: ``python3 bench/bench_processes.py [--runs N] [--count N] [--tree DIR ...]``;
each ``--tree`` is a ctprof source tree put on PYTHONPATH (default: this
one), e.g. a ``git archive`` of an older commit to compare with.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def loop(count: int) -> List[str]:
    return ["/bin/sh", "-c", f"i=0; while [ $i -lt {count} ]; do /bin/ls / >/dev/null; i=$((i+1)); done"]


def timed(cmd: List[str], work: str) -> float:
    start = time.monotonic()
    subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--count", type=int, default=60, help="programs the loop runs (default 60)")
    ap.add_argument("--tree", action="append", help="ctprof source tree on PYTHONPATH (repeatable; default: this one)")
    ap.add_argument("--quick", action="store_true", help="two rounds")
    args, _ = ap.parse_known_args()
    trees = [os.path.abspath(t) for t in (args.tree or [ROOT])]
    runs = 2 if args.quick else args.runs
    if not os.path.exists("/bin/ls"):
        print("bench_processes: needs /bin/ls; skipped")
        return 0
    work = tempfile.mkdtemp(prefix="ctprof-bench-processes-")
    try:
        ways: Dict[str, List[str]] = {"plain": []}
        for tree in trees:
            base = ["env", f"PYTHONPATH={tree}", PYTHON, "-m", "ctprof", "run", "-q",
                    "-o", os.path.join(work, "out.ctprof")]
            label = "" if len(trees) == 1 else f" [{tree}]"
            ways[f"ctprof run{label}"] = base + ["--"]
            ways[f"ctprof run --mem{label}"] = base + ["--mem", "--"]
        per: Dict[str, List[float]] = {name: [] for name in ways}
        for _ in range(runs):
            for name, prefix in ways.items():
                full = timed(prefix + loop(args.count), work)
                empty = timed(prefix + loop(0), work)
                per[name].append((full - empty) / args.count)
        print(f"cost per process: a shell loop of {args.count} x /bin/ls, less the same shell without them; "
              f"{runs} interleaved rounds, medians")
        plain = statistics.median(per["plain"])
        for name, values in per.items():
            m = statistics.median(values)
            extra = "" if name == "plain" else f"   {(m - plain) * 1e3:+7.2f} ms against plain"
            print(f"{name:60s} {m * 1e3:7.2f} ms{extra}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
