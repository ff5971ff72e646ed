#!/usr/bin/env python3
"""CPU sampling cost: ctprof's two samplers against the plain run and perf.

The target times its own work (CPU seconds of the process, user + kernel:
the sampling interrupts, the kernel's stack copies and any signal handler
are charged there) and prints it, so start-up and post-processing do not
count.  For each tool the cost per sample is the slope of the work's CPU
time against the number of samples over 0, 100, 1000 and 4000 Hz (least
squares), in microseconds; the profiler's own CPU (the controller's, for
ctprof the unwinding done outside the program) is reported beside it.
Runs are interleaved (plain, ctprof kernel, ctprof signal, perf -g, perf
--call-graph dwarf, plain, ...) and medians reported.  On a virtual machine
whose neighbours steal time the medians still move by several per cent, so
the per-sample slope is also given from each configuration's fastest run
(interference only ever adds time).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RATES = (100, 1000, 4000)


def compile_prog(tmp: str, name: str) -> str:
    out = os.path.join(tmp, name)
    subprocess.run(["cc", "-O2", "-pthread", "-o", out, os.path.join(HERE, "progs", name + ".c")], check=True)
    return out


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured(cmd, env=None, cwd=None):
    """(work CPU s, whole wall s, CPU of everything but the target process,
    work wall s)."""
    before = children_cpu()
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.monotonic() - start
    spent = children_cpu() - before
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{proc.stderr[-500:]}")
    values = dict(line.split()[:2] for line in proc.stdout.splitlines() if line.count(" ") == 1)
    work = float(values["work_cpu_seconds"])
    tool_cpu = max(0.0, spent - float(values["process_cpu_seconds"]))
    return work, wall, tool_cpu, float(values["work_seconds"])


def slope_us(points) -> float:
    """Least-squares slope of (samples, cpu s) points, in us per sample."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 1e6 * sum((x - mx) * (y - my) for x, y in points) / den if den else float("nan")


def tools(tmp: str, env, have_perf: bool):
    out = os.path.join(tmp, "b.ctprof")
    ctprof = [sys.executable, "-m", "ctprof", "run", "-q", "-o", out]
    perf_data = os.path.join(tmp, "perf.data")
    found = {
        "ctprof (kernel sampler)": lambda hz, cmd: ctprof + ["--sampler", "kernel", "--hz", str(hz), "--"] + cmd,
        "ctprof --sampler signal": lambda hz, cmd: ctprof + ["--sampler", "signal", "--hz", str(hz), "--"] + cmd,
    }
    if have_perf:
        found["perf record -g"] = lambda hz, cmd: ["perf", "record", "-q", "-g", "-F", str(hz), "-o", perf_data, "--"] + cmd
        found["perf record --call-graph dwarf"] = lambda hz, cmd: [
            "perf", "record", "-q", "--call-graph", "dwarf", "-F", str(hz), "-o", perf_data, "--"] + cmd
    return found


def stack_copy_table(prog: str, cmd, tmp: str, env, have_perf: bool, runs: int) -> None:
    """What the kernel sampler's stack copy costs: the fastest of ``runs``
    interleaved runs of each configuration (interference only adds time)."""
    out = os.path.join(tmp, "s.ctprof")
    ctprof = [sys.executable, "-m", "ctprof", "run", "-q", "-o", out, "--sampler", "kernel"]
    configs = {
        "plain": cmd,
        "kernel sampler, 1000 Hz, 32 KiB copy": ctprof + ["--hz", "1000", "--"] + cmd,
        "kernel sampler, 4000 Hz, 32 KiB copy": ctprof + ["--hz", "4000", "--"] + cmd,
        "kernel sampler, 4000 Hz, --stack-kb 8": ctprof + ["--hz", "4000", "--stack-kb", "8", "--"] + cmd,
    }
    if have_perf:
        configs["perf record -g, 4000 Hz"] = ["perf", "record", "-q", "-g", "-F", "4000", "-o",
                                              os.path.join(tmp, "perf.data"), "--"] + cmd
    fastest = {name: float("inf") for name in configs}
    for _ in range(runs):
        for name, command in configs.items():
            fastest[name] = min(fastest[name], measured(command, env=env, cwd=tmp)[0])
    base = fastest["plain"]
    print(f"\n## The stack copy (fastest of {runs} interleaved runs)\n")
    print("| configuration | work CPU s | slowdown |")
    print("|---|---|---|")
    for name, work in fastest.items():
        print(f"| {name} | {work:.3f} | {100 * (work / base - 1):+.1f}% |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller workload, 3 runs")
    args = ap.parse_args()
    runs = 3 if args.quick else args.runs
    env = dict(os.environ, PYTHONPATH=ROOT)
    have_perf = shutil.which("perf") is not None and subprocess.run(
        ["perf", "record", "-q", "-o", "/dev/null", "--", "true"], capture_output=True).returncode == 0
    tmp = tempfile.mkdtemp(prefix="ctprof-bench-")
    try:
        prog = compile_prog(tmp, "cpu_work")
        iters = "300000000" if args.quick else "600000000"
        cmd = [prog, "1", iters]
        table = tools(tmp, env, have_perf)
        for make in table.values():                      # warm the shim and symbol caches
            measured(make(100, [prog, "1", "1000"]), env=env, cwd=tmp)
        plain, plain_wall = [], []
        results = {(name, hz): [] for name in table for hz in RATES}
        for _ in range(runs):
            work, _wall, _tool, work_wall = measured(cmd)
            plain.append(work)
            plain_wall.append(work_wall)
            for hz in RATES:
                for name, make in table.items():
                    results[(name, hz)].append(measured(make(hz, cmd), env=env, cwd=tmp))
        base = statistics.median(plain)
        base_wall = statistics.median(plain_wall)
        base_min = min(plain)
        print(f"## CPU sampling cost (one thread, medians of {runs} interleaved runs; "
              f"plain work: {base:.3f} s of CPU, {base_wall:.3f} s of wall time)\n")
        print("| tool | rate | work CPU s | slowdown | work wall s | wall slowdown | tool's own CPU s | whole run wall s |")
        print("|---|---|---|---|---|---|---|---|")
        for name in table:
            points = [(0.0, base)]
            wall_points = [(0.0, base_wall)]
            min_points = [(0.0, base_min)]
            for hz in RATES:
                rows = results[(name, hz)]
                work = statistics.median(r[0] for r in rows)
                work_wall = statistics.median(r[3] for r in rows)
                points.append((hz * base, work))
                wall_points.append((hz * base, work_wall))
                min_points.append((hz * base, min(r[0] for r in rows)))
                print(f"| {name} | {hz} Hz | {work:.3f} | {100 * (work / base - 1):+.1f}% | {work_wall:.3f} | "
                      f"{100 * (work_wall / base_wall - 1):+.1f}% | {statistics.median(r[2] for r in rows):.3f} | "
                      f"{statistics.median(r[1] for r in rows):.3f} |")
            print(f"| {name} | **per sample** | **{slope_us(points):.1f} us** (fastest runs: "
                  f"{slope_us(min_points):.1f} us) | | **{slope_us(wall_points):.1f} us** | | | |")
        if not have_perf:
            print("\nperf record is not usable here: its rows are missing")
        stack_copy_table(prog, cmd, tmp, env, have_perf, runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
