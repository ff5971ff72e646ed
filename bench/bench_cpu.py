#!/usr/bin/env python3
"""CPU sampling overhead: ctprof against the plain run and `perf record -g`.

(a) the target's own slowdown: the program times its own work and prints
    it, so start-up and post-processing do not count;
(b) end-to-end wall time of `ctprof run` (start-up, symbol resolution,
    writing) and its fixed cost on a program that does nothing.
Runs are interleaved (plain, ctprof, perf, plain, ...) and medians reported.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def compile_prog(tmp: str, name: str) -> str:
    out = os.path.join(tmp, name)
    subprocess.run(["cc", "-O2", "-pthread", "-o", out, os.path.join(HERE, "progs", name + ".c")], check=True)
    return out


def timed(cmd, env=None, cwd=None):
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{proc.stderr[-500:]}")
    work = None
    for line in proc.stdout.splitlines():
        if line.startswith("work_seconds"):
            work = float(line.split()[1])
    return work, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller workload")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=ROOT)
    have_perf = shutil.which("perf") is not None and subprocess.run(
        ["perf", "record", "-q", "-o", "/dev/null", "--", "true"], capture_output=True).returncode == 0
    tmp = tempfile.mkdtemp(prefix="ctprof-bench-")
    try:
        prog = compile_prog(tmp, "cpu_work")
        iters = "200000000" if args.quick else "600000000"
        ctprof = [sys.executable, "-m", "ctprof", "run", "-q", "-o", os.path.join(tmp, "b.ctprof")]
        # warm the shim and symbol caches
        timed(ctprof + ["--", prog, "1", "1000"], env=env, cwd=tmp)
        print(f"## CPU sampling overhead (medians of {args.runs} interleaved runs; "
              f"'work' = the target's own timing of its work)\n")
        print("| workload | rate | plain work s | ctprof work s | slowdown | perf -g work s | perf slowdown | ctprof end-to-end s | perf end-to-end s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for threads in (1, 2):
            for hz in (100, 1000):
                plain, mine, perf, mine_wall, perf_wall = [], [], [], [], []
                cmd = [prog, str(threads), iters]
                for _ in range(args.runs):
                    plain.append(timed(cmd)[0])
                    w, wall = timed(ctprof + ["--hz", str(hz), "--"] + cmd, env=env, cwd=tmp)
                    mine.append(w)
                    mine_wall.append(wall)
                    if have_perf:
                        w, wall = timed(["perf", "record", "-q", "-g", "-F", str(hz), "-o",
                                         os.path.join(tmp, "perf.data"), "--"] + cmd)
                        perf.append(w)
                        perf_wall.append(wall)
                p = statistics.median(plain)
                m = statistics.median(mine)
                row = [f"{threads} thread{'s' if threads > 1 else ''}", f"{hz} Hz", f"{p:.3f}", f"{m:.3f}",
                       f"{100 * (m / p - 1):+.1f}%"]
                if perf:
                    q = statistics.median(perf)
                    row += [f"{q:.3f}", f"{100 * (q / p - 1):+.1f}%", f"{statistics.median(mine_wall):.3f}",
                            f"{statistics.median(perf_wall):.3f}"]
                else:
                    row += ["n/a", "n/a", f"{statistics.median(mine_wall):.3f}", "n/a"]
                print("| " + " | ".join(row) + " |")
        # fixed cost: a program that does (almost) nothing
        quick = compile_prog(tmp, "cpu_work")
        plain_w, mine_w = [], []
        for _ in range(args.runs):
            plain_w.append(timed([quick, "1", "1"])[1])
            mine_w.append(timed(ctprof + ["--", quick, "1", "1"], env=env, cwd=tmp)[1])
        print(f"\nfixed cost of `ctprof run` (warm caches, near-empty program): "
              f"{statistics.median(mine_w) - statistics.median(plain_w):.3f} s "
              f"(ctprof {statistics.median(mine_w):.3f} s vs plain {statistics.median(plain_w):.3f} s)")
        if not have_perf:
            print("\nperf record is not usable here: its columns are n/a")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
