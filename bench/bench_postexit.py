#!/usr/bin/env python3
"""Benchmark the controller's work after the program ends (``ctprof run --mem``).

Once the program has exited, ``ctprof run --mem`` turns the heap's stacks into
columns (``add_heap_to_session``), resolves them into the profile
(``build_profile``), saves both (``fileformat.save_to``) and prints the memory
report.  This times each stage on a saved memory profile, repeatably and
without re-running the program: the heap's stacks are rebuilt from the
profile's raw session as ``HeapRing.finish`` hands them over (addresses, a
packed array of whole-number statistics), and every stage runs ``--runs``
times (best CPU time printed; the save also with the main thread's own CPU,
since its compression runs on a second thread), then resolving and saving
as ``ctprof run`` does (the raw session encoded first, its raw stacks let
go as they are resolved) with the Python memory at its peak (tracemalloc)
against resolving and saving them as they stay.  It also checks that the raw
stacks come out as the file holds them.

The profile: by default one of the g++ -O2 -c compile of bench_e2e's
template-heavy file (about 100,000 distinct heap stacks of depth 32), made on
first use and kept in ctprof's cache (``bench-postexit``); or any saved
``--mem`` profile of a native program given with ``--profile``.

Usage: python bench/bench_postexit.py [--runs N] [--profile FILE]
"""
from __future__ import annotations

import argparse
import gc
import io
import os
import subprocess
import sys
import time
import tracemalloc
from array import array

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from ctprof import fileformat  # noqa: E402
from ctprof.build import build_profile, finish_profile  # noqa: E402
from ctprof.memory import model  # noqa: E402
from ctprof.memory.collect import NSTAT, STAT_NAMES, HeapProcess  # noqa: E402
from ctprof.memory.report import memory_report  # noqa: E402
from ctprof.symbols import resolve_session  # noqa: E402

#: Profile column -> heap statistic, where the names differ.
_STAT_OF = {"possibly_lost_bytes": "possible_bytes", "possibly_lost_count": "possible_count"}


def default_profile() -> str:
    """A --mem profile of g++ -O2 -c on bench_e2e's template file, made once
    in ctprof's own cache (a private 0700 directory, not a shared /tmp
    path another user could plant files in)."""
    import bench_e2e
    from ctprof.cache import cache_dir, write_atomic
    work = cache_dir("bench-postexit")
    path = os.path.join(work, "templates.ctprof")
    if not os.path.exists(path):
        source = os.path.join(work, "templates.cpp")
        write_atomic(source, bench_e2e.TEMPLATE_CPP.encode())
        env = dict(os.environ, PYTHONPATH=ROOT)
        print("(making the profile: ctprof run --mem -- g++ -O2 -c templates.cpp)", flush=True)
        subprocess.run([sys.executable, "-m", "ctprof", "run", "--mem", "-q", "-o", path, "--",
                        "g++", "-O2", "-c", source, "-o", os.path.join(work, "t.o")], cwd=work, env=env, check=True)
    return path


def heap_of(session):
    """The session's heap stacks as HeapRing.finish hands them over, and its
    other (CPU) raw stacks."""
    cpu = [s for s in session.stacks if "samples" in s.values]
    heap = {}
    for s in session.stacks:
        if "samples" in s.values:
            continue
        info = heap.get(s.pid)
        if info is None:
            scanned = session.memory.get(str(s.pid), {}).get("scanned", True)
            info = heap[s.pid] = HeapProcess(s.pid, scanned=scanned)
        stats = array("q", bytes(8 * NSTAT))
        for metric, value in s.values.items():
            name = _STAT_OF.get(metric, metric)
            if name in STAT_NAMES:
                stats[STAT_NAMES.index(name)] = value
        stats[STAT_NAMES.index("truncated")] = 1 if s.truncated else 0
        info.stacks.words.extend(s.ips)      # (the leaf made the call address as they come over)
        info.stacks.lengths.append(len(s.ips))
        info.stats.extend(stats)
    return cpu, heap


def best(runs: int, fn, clock=time.process_time):
    times, result = [], None
    for _ in range(runs):
        gc.collect()
        start = clock()
        result = fn()
        times.append(clock() - start)
    return min(times), result


def traced_peak(fn, prepare) -> int:
    """Bytes of Python memory at the peak of ``fn()`` above what was there
    before it (``prepare()`` first, traced too, so what ``fn`` frees of it
    counts)."""
    tracemalloc.start()
    try:
        prepare()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", help="a saved ctprof run --mem profile")
    parser.add_argument("--quick", action="store_true", help="one run of each stage (make bench --quick)")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    path = args.profile or default_profile()
    _saved, session = fileformat.load(path)
    if session is None or session.kind != "memory":
        print(f"{path}: not a --mem profile with its raw session", file=sys.stderr)
        return 2
    expected = [(s.pid, s.gen, tuple(s.ips), s.truncated, {k: v for k, v in s.values.items() if v}, tuple(s.py))
                for s in session.stacks]
    if any(s.py for s in session.stacks if "samples" not in s.values):
        # the file names the code objects by index, not by the (address,
        # fingerprint) the hooks record: such stacks cannot be rebuilt as
        # HeapRing.finish hands them over
        print(f"{path}: its heap stacks carry Python frames; give a profile of a native program", file=sys.stderr)
        return 2
    cpu, heap = heap_of(session)
    kept = {pid: (list(info.stacks), array("q", info.stats)) for pid, info in heap.items()}

    def add_heap():
        for pid, info in heap.items():
            info.stacks, info.stats = list(kept[pid][0]), array("q", kept[pid][1])
        session.stacks, session.heap_stacks = list(cpu), []
        model.add_heap_to_session(session, heap)

    print(f"{path}: {sum(len(k[0]) for k in kept.values()):,} heap stacks, {len(cpu):,} CPU stacks; best of {args.runs}, CPU s")
    t, _ = best(args.runs, add_heap)
    # the raw stacks the file gets: the CPU ones, then the heap's, a process at a time
    stacks = session.stacks + [block.raw_stack(i) for block in session.heap_stacks for i in range(len(block))]
    same = expected == [(s.pid, s.gen, tuple(s.ips), s.truncated, {k: v for k, v in s.values.items() if v},
                        tuple(s.py)) for s in stacks]
    print(f"  add_heap_to_session  {t:6.3f}   (raw stacks as in the file: {'yes' if same else 'NO'})")
    t, profile = best(args.runs, lambda: build_profile(session, progress=False))
    print(f"  build_profile        {t:6.3f}   ({len(profile.stacks):,} stacks, {len(profile.frames):,} frames)")
    out = io.BytesIO()

    def save():
        out.seek(0)
        out.truncate()
        fileformat.save_to(out, profile, session)
    t, _ = best(args.runs, save)
    main_thread, _ = best(args.runs, save, time.thread_time)
    print(f"  save_to              {t:6.3f}   (main thread {main_thread:.3f}; {len(out.getvalue()):,} bytes)")
    plain_peak = traced_peak(lambda: fileformat.save_to(io.BytesIO(), build_profile(session, progress=False), session),
                             add_heap)

    def as_run_does():
        # ctprof run/attach: encoded first, raw stacks let go as resolved
        encoded = fileformat.EncodedSession(session)
        try:
            resolved = finish_profile(resolve_session(session, progress=False, consume=True), session)
            fileformat.save_to(io.BytesIO(), resolved, encoded)
        finally:
            encoded.close()
    times = []
    for _ in range(args.runs):
        add_heap()
        gc.collect()
        start = time.process_time()
        as_run_does()
        times.append(time.process_time() - start)
    run_peak = traced_peak(as_run_does, add_heap)
    print(f"  resolve + save as run {min(times):6.3f}   (Python memory at the peak, above the raw "
          f"stacks: {run_peak / 2**20:.1f} MiB; resolving and saving them as they stay: {plain_peak / 2**20:.1f} MiB)")
    t, _ = best(args.runs, lambda: memory_report(profile, 10))
    print(f"  memory_report        {t:6.3f}")
    data = out.getvalue()
    t, _ = best(args.runs, lambda: fileformat.load_bytes(data, "saved", with_session=False))
    print(f"  load (report, svg)   {t:6.3f}")
    t, _ = best(args.runs, lambda: fileformat.load_bytes(data, "saved"))
    print(f"  load with session    {t:6.3f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
