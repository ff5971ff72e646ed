#!/usr/bin/env python3
"""Heap profiling cost: ctprof exact and sampled against the plain run,
heaptrack and valgrind massif (where installed), side by side.

The target times its own allocation loop, so start-up and post-processing
do not blur the figures; the cost per allocation is
(profiled work time - plain work time) / allocation calls.  Medians of
interleaved runs.  The last lines cross-check ctprof's allocation count and
peak against heaptrack's.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd, env=None, cwd=None):
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-800:]}")
    m = re.search(r"work_seconds ([0-9.]+)", proc.stdout)
    n = re.search(r"allocations (\d+)", proc.stdout)
    return float(m.group(1)) if m else float("nan"), wall, int(n.group(1)) if n else 0, proc


def true_window_peak(per_thread: int) -> int:
    """The peak live bytes of alloc_work.c's window for one thread."""
    x = (1 * 2654435761 + 1) & 0xFFFFFFFF
    window = [0] * 256
    live = peak = 0
    for _ in range(per_thread):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        slot = (x >> 5) & 255
        n = 65536 + (x >> 12) % 65536 if (x & 1023) == 0 else 16 + (x >> 8) % 1024
        live += n - window[slot]
        window[slot] = n
        peak = max(peak, live)
    return peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ctprof-bench-mem-")
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        prog = os.path.join(tmp, "alloc_work")
        subprocess.run(["cc", "-O2", "-pthread", "-o", prog, os.path.join(HERE, "progs", "alloc_work.c")], check=True)
        per = "150000" if args.quick else "1000000"
        out = os.path.join(tmp, "m.ctprof")
        tools = {
            "plain": lambda c: c,
            "ctprof exact": lambda c: [sys.executable, "-m", "ctprof", "run", "-q", "--mem", "-o", out, "--"] + c,
            "ctprof sampled 512K": lambda c: [sys.executable, "-m", "ctprof", "run", "-q", "--mem",
                                             "--mem-sample", "524288", "-o", out, "--"] + c,
        }
        if shutil.which("heaptrack"):
            tools["heaptrack"] = lambda c: ["heaptrack", "-o", os.path.join(tmp, "ht")] + c
        if shutil.which("valgrind"):
            tools["valgrind massif"] = lambda c: ["valgrind", "-q", "--tool=massif",
                                                  f"--massif-out-file={os.path.join(tmp, 'massif.out')}"] + c
        run(tools["ctprof exact"]([prog, "1", "1000"]), env=env, cwd=tmp)  # warm caches
        print(f"## Heap profiling cost (medians of {args.runs} interleaved runs; work = the target's own timing)\n")
        print("| threads | tool | work s | slowdown | extra us per allocation | end-to-end s |")
        print("|---|---|---|---|---|---|")
        for threads in (1, 4):
            cmd = [prog, str(threads), per]
            times = {name: [] for name in tools}
            walls = {name: [] for name in tools}
            allocs = 0
            for r in range(args.runs):
                for name, wrap in tools.items():
                    if name == "valgrind massif" and r >= 1:
                        continue  # one run is enough to see a 20x tool
                    w, wall, n, _ = run(wrap(cmd), env=env, cwd=tmp)
                    times[name].append(w)
                    walls[name].append(wall)
                    allocs = n or allocs
            base = statistics.median(times["plain"])
            for name in tools:
                w = statistics.median(times[name])
                per_alloc = (w - base) / allocs * 1e6 if allocs else float("nan")
                print(f"| {threads} | {name} | {w:.3f} | {w / base:.2f}x | {per_alloc:.3f} | "
                      f"{statistics.median(walls[name]):.2f} |")
        # cross-check on one single-threaded (so deterministic) run: ctprof,
        # heaptrack, and the true peak computed from the program's own
        # generator (window of 256 blocks, same LCG, same size rule)
        cmd = [prog, "1", per]
        run(tools["ctprof exact"](cmd), env=env, cwd=tmp)
        sys.path.insert(0, ROOT)
        from ctprof.session import load
        prof, _ = load(out)
        mem = next(iter(prof.metadata["memory"].values()))
        print(f"\nctprof: {int(mem['totals']['alloc_count']):,} allocations, peak {int(mem['totals']['peak_bytes']):,} bytes; "
              f"metadata in the program {mem['ring_bytes'] / 2**20:.1f} MiB vs peak RSS {mem['peak_rss'] / 2**20:.1f} MiB")
        if "heaptrack" in tools:
            for f in glob.glob(os.path.join(tmp, "ht*")):
                os.unlink(f)
            run(tools["heaptrack"](cmd), cwd=tmp)
            data = glob.glob(os.path.join(tmp, "ht*"))[0]
            text = subprocess.run(["heaptrack_print", "-f", data, "-p", "0", "-a", "0", "-T", "0", "-l", "0"],
                                  capture_output=True, text=True).stdout
            calls = re.search(r"calls to allocation functions: (\d+)", text)
            peak = re.search(r"peak heap memory consumption: (\S+)", text)
            print(f"heaptrack: {calls.group(1) if calls else '?'} allocation calls, peak {peak.group(1) if peak else '?'}")
        print(f"true peak of the benchmark's allocation window: {true_window_peak(int(per)):,} bytes "
              f"(plus the few blocks the C library holds)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
