#!/usr/bin/env python3
"""`ctprof attach` and `ctprof.profile()`: what they cost the profiled code.

(a) attach: bench/progs/cpu_work.c waits on stdin inside `sh -c 'read x;
    exec cpu_work'`; ctprof attaches to the shell, the program is released
    once the events are open (they follow the exec), and it times its own
    fixed work.  Reported: the target's slowdown against plain runs, the
    controller's own CPU per second of target CPU, and the share of samples
    whose stack is complete (inner <- middle <- worker <- start_thread).
(b) self-profiling: a Python loop calling zlib.compress, timed bare and
    inside `with ctprof.profile()`.
Runs are interleaved and medians reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def work_seconds(out: bytes) -> float:
    for line in out.decode().splitlines():
        if line.startswith("work_seconds"):
            return float(line.split()[1])
    raise RuntimeError(f"no work_seconds in {out!r}")


def plain(prog: str, iterations: int) -> float:
    out = subprocess.run([prog, "1", str(iterations)], capture_output=True, check=True).stdout
    return work_seconds(out)


def attached(prog: str, iterations: int, hz: float):
    from ctprof.capture.attach import AttachOptions, attach_process
    from ctprof.symbols import resolve_session
    target = subprocess.Popen(["sh", "-c", f'read x; exec "$0" 1 {iterations}', prog],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def go(_threads: int) -> None:
        target.stdin.write(b"go\n")
        target.stdin.close()

    cpu0 = time.process_time()
    session = attach_process(target.pid, AttachOptions(hz=hz), on_start=go)
    ctprof_cpu = time.process_time() - cpu0
    out = target.stdout.read()
    target.wait()
    profile = resolve_session(session, progress=False)
    total = complete = 0
    for names, n in profile.named_stacks("samples"):
        if "inner" in names or "middle" in names or "mix" in names:
            total += n
            if "start_thread" in names and "worker" in names and "middle" in names:
                complete += n
    return work_seconds(out), ctprof_cpu, complete / total if total else 0.0, total


def self_profile(seconds: float, hz: float):
    import ctprof
    data = bytes(range(256)) * 2000

    def work(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            zlib.compress(data, 6)
        return time.perf_counter() - t

    n = max(1, int(seconds / work(5) * 5))
    bare, prof = [], []
    for _ in range(3):
        bare.append(work(n))
        with ctprof.profile(hz=hz) as p:
            prof.append(work(n))
    return statistics.median(bare), statistics.median(prof), p.result.total()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=1_500_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prog = os.path.join(tmp, "cpu_work")
        subprocess.run(["cc", "-O2", "-pthread", "-o", prog, os.path.join(HERE, "progs", "cpu_work.c")], check=True)
        print("attach (cpu_work, 1 thread, gcc -O2 without frame pointers)")
        print(f"{'hz':>6} {'plain s':>9} {'attached s':>11} {'slowdown':>9} {'ctprof cpu/s':>13} "
              f"{'us/sample':>10} {'complete':>9} {'samples':>8}")
        for hz in (99, 999):
            p, a, c, per, share, samples = [], [], [], [], [], []
            for _ in range(args.reps):
                p.append(plain(prog, args.iterations))
                w, cpu, sh, n = attached(prog, args.iterations, hz)
                a.append(w)
                c.append(cpu / w)
                per.append(cpu / n * 1e6 if n else 0.0)   # ctprof's CPU per sample: read + unwind
                share.append(sh)
                samples.append(n)
            mp, ma = statistics.median(p), statistics.median(a)
            print(f"{hz:>6} {mp:>9.3f} {ma:>11.3f} {100 * (ma / mp - 1):>8.1f}% {statistics.median(c):>12.3f}s "
                  f"{statistics.median(per):>10.1f} {100 * min(share):>8.1f}% {statistics.median(samples):>8.0f}")
    print("\nself-profiling (zlib.compress loop, ctprof.profile)")
    for hz in (99, 999):
        bare, prof, samples = self_profile(1.5, hz)
        print(f"{hz:>6} Hz: bare {bare:.3f} s, profiled {prof:.3f} s ({100 * (prof / bare - 1):+.1f}%), "
              f"{samples} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
