#!/usr/bin/env python3
"""CPU sampling cost: ctprof's two samplers against the plain run and perf.

The target times its own work (CPU seconds of the process, user + kernel:
the sampling interrupts, the kernel's stack copies and any signal handler
are charged there) and prints it, so start-up and post-processing do not
count.  For each tool the cost per sample is the slope of the work's CPU
time against the number of samples over 0, 100, 1000 and 4000 Hz (least
squares), in microseconds; the profiler's own CPU (the controller's, for
ctprof the unwinding done outside the program) is reported beside it, and
what the cost buys: the share of the work's samples whose call chain is
complete (thread entry, ``worker``, ``middle``; the target is built with
``-O2`` and so without frame pointers, as most programs are).
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
#: A sample of the work (in one of these) is complete if its chain holds all of CHAIN.
WORK_LEAVES = ("inner", "mix")
CHAIN = ("start_thread", "worker", "middle")


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
    """name -> (command maker (hz, cmd), reader of the last run's complete-chain share)."""
    out = os.path.join(tmp, "b.ctprof")
    ctprof = [sys.executable, "-m", "ctprof", "run", "-q", "-o", out]
    perf_data = os.path.join(tmp, "perf.data")
    found = {
        "ctprof (kernel sampler)": (lambda hz, cmd: ctprof + ["--sampler", "kernel", "--hz", str(hz), "--"] + cmd,
                                    lambda: ctprof_complete_share(out)),
        "ctprof --sampler signal": (lambda hz, cmd: ctprof + ["--sampler", "signal", "--hz", str(hz), "--"] + cmd,
                                    lambda: ctprof_complete_share(out)),
    }
    if have_perf:
        found["perf record -g"] = (
            lambda hz, cmd: ["perf", "record", "-q", "-g", "-F", str(hz), "-o", perf_data, "--"] + cmd,
            lambda: perf_complete_share(perf_data))
        found["perf record --call-graph dwarf"] = (
            lambda hz, cmd: ["perf", "record", "-q", "--call-graph", "dwarf", "-F", str(hz), "-o", perf_data,
                             "--"] + cmd,
            lambda: perf_complete_share(perf_data))
    return found


def complete_share(stacks) -> float:
    """Share of the work's samples, among (names, count) pairs, whose chain is complete."""
    work = complete = 0
    for names, n in stacks:
        if any(leaf in names for leaf in WORK_LEAVES):
            work += n
            if all(c in names for c in CHAIN):
                complete += n
    return complete / work if work else float("nan")


def ctprof_complete_share(path: str) -> float:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import ctprof
    return complete_share(ctprof.load(path).named_stacks("samples"))


def perf_complete_share(path: str) -> float:
    """perf script prints each sample's chain, one frame a line, samples
    separated by blank lines."""
    text = subprocess.run(["perf", "script", "-i", path, "-F", "ip,sym"], capture_output=True, text=True).stdout
    stacks = []
    for block in text.split("\n\n"):
        names = tuple(line.split()[1] for line in block.splitlines() if len(line.split()) >= 2)
        if names:
            stacks.append((names, 1))
    return complete_share(stacks)


def sample_parts_table(cmd, tmp: str, env, have_perf: bool, runs: int) -> None:
    """Where a sample's cost goes: at 4000 Hz, configurations that add one
    part at a time (the timer interrupt and the record alone, a frame-pointer
    walk, stack copies of 1, 8 and 32 KiB) over ``runs`` interleaved rounds,
    in us per sample: from each one's fastest run (interference only adds
    time) and from the median of its runs less their round's plain run."""
    out = os.path.join(tmp, "s.ctprof")
    perf_data = os.path.join(tmp, "perf.data")
    ctprof = [sys.executable, "-m", "ctprof", "run", "-q", "-o", out, "--sampler", "kernel", "--hz", "4000"]
    perf = ["perf", "record", "-q", "-F", "4000", "-o", perf_data]
    configs = {"plain": cmd}
    if have_perf:
        configs["perf record, no call graph: the interrupt and the record"] = perf + ["--"] + cmd
        configs["perf record -g: + a frame-pointer walk"] = perf + ["-g", "--"] + cmd
        configs["perf record --call-graph dwarf: + an 8 KiB stack copy"] = perf + ["--call-graph", "dwarf", "--"] + cmd
    for kb in (1, 8, 32):
        note = " (the default)" if kb == 32 else ""
        configs[f"ctprof, {kb} KiB stack copy{note}"] = ctprof + ["--stack-kb", str(kb), "--"] + cmd
    works = {name: [] for name in configs}
    for _ in range(runs):
        for name, command in configs.items():
            works[name].append(measured(command, env=env, cwd=tmp)[0])
    base = min(works["plain"])
    samples = 4000 * base
    print(f"\n## Where a sample's cost goes (4000 Hz, {runs} interleaved rounds)\n")
    print("Fastest run of each, and the median over rounds of each run less the same round's plain run "
          "(steadier when interference comes in bursts).\n")
    print("| configuration | work CPU s (fastest) | slowdown | us per sample (fastest) | us per sample (paired median) |")
    print("|---|---|---|---|---|")
    for name, values in works.items():
        work = min(values)
        if name == "plain":
            print(f"| {name} | {work:.3f} | | | |")
            continue
        paired = statistics.median(v - p for v, p in zip(values, works["plain"]))
        print(f"| {name} | {work:.3f} | {100 * (work / base - 1):+.1f}% | {1e6 * (work - base) / samples:.1f} | "
              f"{1e6 * paired / samples:.1f} |")


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
        for make, _complete in table.values():           # warm the shim and symbol caches
            measured(make(100, [prog, "1", "1000"]), env=env, cwd=tmp)
        plain, plain_wall = [], []
        results = {(name, hz): [] for name in table for hz in RATES}
        complete = {name: [] for name in table}
        for _ in range(runs):
            work, _wall, _tool, work_wall = measured(cmd)
            plain.append(work)
            plain_wall.append(work_wall)
            for hz in RATES:
                for name, (make, complete_now) in table.items():
                    results[(name, hz)].append(measured(make(hz, cmd), env=env, cwd=tmp))
                    if hz == 1000:
                        complete[name].append(complete_now())
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
        print("\n## What the cost buys: samples of the work with a complete call chain (1000 Hz, median)\n")
        print("| tool | complete chains |")
        print("|---|---|")
        for name, shares in complete.items():
            print(f"| {name} | {100 * statistics.median(shares):.1f}% |")
        if not have_perf:
            print("\nperf record is not usable here: its rows are missing")
        sample_parts_table(cmd, tmp, env, have_perf, runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
