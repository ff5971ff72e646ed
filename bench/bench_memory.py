#!/usr/bin/env python3
"""Heap profiling cost: ctprof exact and sampled against the plain run,
heaptrack and valgrind massif (where installed), side by side.

1. The target times its own allocation loop (1, 4 and 8 threads), so
   start-up and post-processing do not blur the figures; the cost per
   allocation is (profiled work time - plain work time) / allocation calls,
   and ctprof's own report says how long the program waited for it.
   Medians of interleaved runs.
2. Metadata measured from outside: the program's peak RSS (wait4's
   ru_maxrss through /usr/bin/time) with and without ``--mem``.
3. End to end on programs no one here wrote: sqlite3 building a
   300,000-row table and a g++ compile, plain, ctprof --mem and heaptrack.
4. A cross-check of ctprof's allocation count and peak against heaptrack's.

``--tree DIR`` adds ctprof exact from another source tree (a previous
release) to the cost table, interleaved with the rest.
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


def max_rss_kb(cmd, env=None, cwd=None, wrap=lambda c: c) -> int:
    """Peak RSS of the program in ``cmd`` (KiB, as wait4 reports it), run
    inside ``wrap`` (a profiler), measured by /usr/bin/time around the
    program itself (so the profiler's own process is not counted)."""
    out = subprocess.run(wrap(["/usr/bin/time", "-f", "maxrss_kb %M"] + cmd), capture_output=True, text=True,
                         env=env, cwd=cwd)
    m = re.findall(r"maxrss_kb (\d+)", out.stderr)
    if out.returncode != 0 or not m:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-800:]}")
    return int(m[-1])


def heaptrack_figures(cmd, tmp, env=None):
    """heaptrack's own figures for the program in ``cmd``: its run time and
    the program's peak RSS including heaptrack's part (KiB), from
    heaptrack_print.  heaptrack traces only the process it starts (its
    preload leaves the children alone), so it cannot be given
    ``/usr/bin/time cmd`` as ctprof is: it would measure /usr/bin/time."""
    for f in glob.glob(os.path.join(tmp, "ht*")):
        os.unlink(f)
    start = time.monotonic()
    run(["heaptrack", "-o", os.path.join(tmp, "ht")] + cmd, env=env, cwd=tmp)
    wall = time.monotonic() - start
    data = glob.glob(os.path.join(tmp, "ht*"))[0]
    text = subprocess.run(["heaptrack_print", "-f", data, "-p", "0", "-a", "0", "-T", "0", "-l", "0"],
                          capture_output=True, text=True).stdout
    runtime = re.search(r"total runtime: ([0-9.]+)s", text)
    rss = re.search(r"peak RSS \(including heaptrack overhead\): ([0-9.]+)([KMG]?)", text)
    # heaptrack_print's units are decimal: 1,000,000 bytes print as "1000.00K"
    scale = {"": 1 / 1024, "K": 1000 / 1024, "M": 1e6 / 1024, "G": 1e9 / 1024}
    rss_kb = int(float(rss.group(1)) * scale[rss.group(2)]) if rss else 0
    return (float(runtime.group(1)) if runtime else float("nan")), wall, rss_kb


def metadata_table(tools, tmp, env, runs: int) -> None:
    """Peak RSS with and without --mem, from outside the program."""
    rss_prog = os.path.join(tmp, "trust_rss")
    subprocess.run(["cc", "-O2", "-o", rss_prog, os.path.join(ROOT, "tests", "progs", "trust_rss.c")], check=True)
    sql = os.path.join(tmp, "rows.sql")
    with open(sql, "w") as f:
        f.write("create table t(a integer primary key, b text, c real);\nbegin;\n")
        for i in range(300000):
            f.write(f"insert into t values({i}, 'row {i} {i * 7919 % 100003}', {i * 0.5});\n")
        f.write("commit;\nselect count(*), sum(length(b)) from t;\n")
    programs = [(f"allocation window {w // 1024} MiB", [rss_prog, str(w), "1000000"]) for w in (2048, 8192, 24576)]
    if shutil.which("sqlite3"):
        programs.append(("sqlite3, 300,000 rows", ["sqlite3", ":memory:", f".read {sql}"]))
    print("\n## Metadata measured from outside (peak RSS of the program, /usr/bin/time)\n")
    print("| program | plain KiB | ctprof --mem KiB | added | share | heaptrack KiB (its own figure) |")
    print("|---|---|---|---|---|---|")
    for name, cmd in programs:
        plain = min(max_rss_kb(cmd, cwd=tmp) for _ in range(runs))
        mem = min(max_rss_kb(cmd, env=env, cwd=tmp, wrap=tools["ctprof exact"]) for _ in range(runs))
        ht = heaptrack_figures(cmd, tmp)[2] if "heaptrack" in tools else 0
        print(f"| {name} | {plain:,} | {mem:,} | {mem - plain:+,} | {100.0 * (mem - plain) / plain:.1f}% | "
              f"{ht:,} |" if ht else f"| {name} | {plain:,} | {mem:,} | {mem - plain:+,} | "
              f"{100.0 * (mem - plain) / plain:.1f}% | - |")


def cc1plus_command(cxx: str, obj: str):
    """The compiler proper g++ would run (heaptrack does not follow a
    driver's children, so every tool gets the process doing the work)."""
    out = subprocess.run(["g++", "-###", "-O2", "-S", "-o", obj, cxx], capture_output=True, text=True).stderr
    for line in out.splitlines():
        if "cc1plus" in line and not line.startswith("COLLECT"):
            return [a.strip('"') for a in line.split()]
    return None


def end_to_end_table(tools, tmp, env) -> None:
    """Whole real programs under each tool: the program's own wall time
    (/usr/bin/time around it, inside the tool; for heaptrack, the run time
    it reports) and the tool's end to end (ctprof: symbols, report and
    profile written; heaptrack: its trace written, heaptrack_print not
    run)."""
    sql = os.path.join(tmp, "rows.sql")
    programs = []
    if shutil.which("sqlite3"):
        programs.append(("sqlite3, 300,000-row table", ["sqlite3", os.path.join(tmp, "e2e.sqlite"), f".read {sql}"]))
    if shutil.which("g++"):
        cc1 = cc1plus_command(os.path.join(ROOT, "tests", "progs", "sym_cxx.cpp"), os.path.join(tmp, "x.s"))
        if cc1:
            programs.append(("cc1plus -O2 (g++ on sym_cxx.cpp)", cc1))
    print("\n## End to end on programs no one here wrote (seconds: program / whole run, median of 3)\n")
    names = [n for n in ("plain", "ctprof exact", "ctprof sampled 512K", "heaptrack") if n in tools]
    print("| program | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for name, cmd in programs:
        cells = []
        for tool in names:
            progs, walls = [], []
            for _ in range(3):
                if os.path.exists(os.path.join(tmp, "e2e.sqlite")):
                    os.unlink(os.path.join(tmp, "e2e.sqlite"))
                if tool == "heaptrack":
                    runtime, wall, _ = heaptrack_figures(cmd, tmp, env)
                    progs.append(runtime)
                    walls.append(wall)
                    continue
                start = time.monotonic()
                proc = subprocess.run(tools[tool](["/usr/bin/time", "-f", "prog_wall %e"] + cmd), capture_output=True,
                                      text=True, env=env, cwd=tmp)
                walls.append(time.monotonic() - start)
                m = re.findall(r"prog_wall ([0-9.]+)", proc.stderr)
                if proc.returncode != 0 or not m:
                    raise SystemExit(f"failed: {tool} {name}\n{proc.stderr[-800:]}")
                progs.append(float(m[-1]))
            cells.append(f"{statistics.median(progs):.2f} / {statistics.median(walls):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def waited_ms(path: str) -> float:
    """How long the program waited for ctprof to drain (its own report)."""
    sys.path.insert(0, ROOT)
    from ctprof.session import load
    prof, _ = load(path)
    return sum(m.get("wait_ns", 0) for m in prof.metadata["memory"].values()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--real-only", action="store_true", help="only the metadata and end-to-end tables")
    ap.add_argument("--tree", action="append", default=[], metavar="DIR",
                    help="also time ctprof exact from this source tree (another release: side by side in "
                         "the cost table; repeatable)")
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
        for tree in args.tree:   # on its own PYTHONPATH (env overrides the one run() passes)
            tools[f"ctprof exact [{os.path.basename(os.path.normpath(tree))}]"] = (
                lambda c, tree=os.path.abspath(tree): ["env", f"PYTHONPATH={tree}", sys.executable, "-m", "ctprof",
                                                       "run", "-q", "--mem", "-o", out, "--"] + c)
        if shutil.which("heaptrack"):
            tools["heaptrack"] = lambda c: ["heaptrack", "-o", os.path.join(tmp, "ht")] + c
        if shutil.which("valgrind"):
            tools["valgrind massif"] = lambda c: ["valgrind", "-q", "--tool=massif",
                                                  f"--massif-out-file={os.path.join(tmp, 'massif.out')}"] + c
        run(tools["ctprof exact"]([prog, "1", "1000"]), env=env, cwd=tmp)  # warm caches
        print(f"## Heap profiling cost (medians of {args.runs} interleaved runs; work = the target's own timing)\n")
        print("| threads | tool | work s | slowdown | extra us per allocation | end-to-end s | waited for ctprof s |")
        print("|---|---|---|---|---|---|---|")
        for threads in () if args.real_only else (1, 4, 8):
            cmd = [prog, str(threads), per if threads < 8 else str(int(per) // 4)]
            times = {name: [] for name in tools}
            walls = {name: [] for name in tools}
            waits = {name: [] for name in tools}
            allocs = 0
            for r in range(args.runs):
                for name, wrap in tools.items():
                    if name == "valgrind massif" and r >= 1:
                        continue  # one run is enough to see a 20x tool
                    w, wall, n, _ = run(wrap(cmd), env=env, cwd=tmp)
                    times[name].append(w)
                    walls[name].append(wall)
                    if name.startswith("ctprof"):
                        waits[name].append(waited_ms(out) / 1000)
                    allocs = n or allocs
            base = statistics.median(times["plain"])
            for name in tools:
                w = statistics.median(times[name])
                per_alloc = (w - base) / allocs * 1e6 if allocs else float("nan")
                waited = f"{statistics.median(waits[name]):.3f}" if waits[name] else "-"
                print(f"| {threads} | {name} | {w:.3f} | {w / base:.2f}x | {per_alloc:.3f} | "
                      f"{statistics.median(walls[name]):.2f} | {waited} |")
        metadata_table(tools, tmp, env, 1 if args.quick else 3)
        end_to_end_table(tools, tmp, env)
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
              f"metadata it reports: event ring {mem['ring_bytes'] / 2**10:.0f} KiB + unwind cache "
              f"{mem['unwind_cache_bytes'] / 2**10:.0f} KiB vs peak RSS {mem['peak_rss'] / 2**20:.1f} MiB")
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
