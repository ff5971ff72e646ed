#!/usr/bin/env python3
"""Render benchmark: a 100,000-unique-stack folded file to an SVG flame graph.

    python bench/bench_render.py [--stacks N] [--runs R] [--minwidth PX] [--keep DIR]

Times ``python -m ctprof svg`` and, when present, flamegraph.pl
(``FLAMEGRAPH_PL=/path/to/flamegraph.pl``, else ``flamegraph.pl`` on PATH)
on the same file, each run in its own process; prints the median wall time,
the median peak RSS (from wait4) and the SVG size.  The input is
synthetic and deterministic: stacks of depth 10-40 over 3,000 C++-like
names with a heavy-tailed choice, each with a unique leaf (about 100 MB of
folded text at 100,000 stacks, like the reference case in issue 4).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_folded(path: str, n: int, seed: int = 4) -> None:
    rnd = random.Random(seed)
    names = [f"ns{i % 17}::Widget{i % 29}::method_{i}(int, double)"
             for i in range(3000)]
    with open(path, "w") as out:
        for i in range(n):
            depth = rnd.randint(10, 40)
            stack = ["_start", "__libc_start_main", "main"]
            stack += [names[int(rnd.paretovariate(1.1) * 5) % len(names)] for _ in range(depth - 4)]
            stack.append(f"leaf_function_{i}")
            out.write(";".join(stack) + f" {rnd.randint(1, 200)}\n")


def run_once(argv, stdout_path: str):
    """(seconds, peak RSS in MiB) of one child process."""
    with open(stdout_path, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024.0


def bench(label: str, argv, out_path: str, runs: int):
    times, peaks = [], []
    for _ in range(runs):
        t, rss = run_once(argv, out_path)
        times.append(t)
        peaks.append(rss)
    size = os.path.getsize(out_path)
    print(f"{label:<14} median {statistics.median(times):7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})"
          f"  peak RSS {statistics.median(peaks):7.1f} MiB  SVG {size / 2**20:6.1f} MiB", flush=True)
    return statistics.median(times), statistics.median(peaks), size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stacks", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--minwidth", default="0.1")
    ap.add_argument("--keep", metavar="DIR", help="keep the input and outputs here")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="ctprof-bench-")
    os.makedirs(work, exist_ok=True)
    folded = os.path.join(work, f"stacks{args.stacks}.folded")
    if not os.path.exists(folded):
        make_folded(folded, args.stacks)
    print(f"input: {folded}: {args.stacks:,} unique stacks, {os.path.getsize(folded) / 2**20:.1f} MiB; "
          f"min width {args.minwidth} px; {args.runs} runs each; {os.cpu_count()} CPUs", flush=True)
    ours = bench("ctprof svg", [sys.executable, "-m", "ctprof", "svg", folded, "--minwidth", args.minwidth,
                                "-o", "-"], os.path.join(work, "ctprof.svg"), args.runs)
    peer = os.environ.get("FLAMEGRAPH_PL") or shutil.which("flamegraph.pl")
    if peer and os.path.exists(peer):
        theirs = bench("flamegraph.pl", ["perl", peer, "--minwidth", args.minwidth, folded],
                       os.path.join(work, "flamegraph.svg"), args.runs)
        print(f"ctprof is {theirs[0] / ours[0]:.1f}x faster, uses {ours[1] / theirs[1]:.2f}x the memory, "
              f"SVG {ours[2] / theirs[2]:.2f}x the size")
    else:
        print("flamegraph.pl: not found (no Debian package in bookworm; set FLAMEGRAPH_PL=/path/to/flamegraph.pl "
              "to compare) - peer skipped")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
