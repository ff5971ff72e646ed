"""Heap profiling (issue 5): programs with known answers, run under
``ctprof run --mem``; the numbers must match to the byte."""
from __future__ import annotations

import math
import os
import platform
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import ctprof, ctprof_env, heap_rows, heap_rows_at_the_end, load_profile


def run_mem(tmp_path, argv, *options, timeout=120):
    out = str(tmp_path / "mem.ctprof")
    proc = ctprof(["run", "--mem", "-o", out, *options, "--", *argv], cwd=str(tmp_path), timeout=timeout)
    profile = load_profile(out)[0] if os.path.exists(out) else None
    return proc, profile


def site(profile, metric, func, anywhere=False):
    """Sum of ``metric`` over stacks allocated directly by ``func`` (its
    innermost frame), or with ``func`` anywhere in the stack."""
    total = 0
    for i, stack in enumerate(profile.stacks):
        names = [profile.frames[f].name for f in stack]
        # gcc's specialised copies keep their name plus " [clone .isra.0]"
        if names and (any(n == func or n.startswith(func + " [clone") for n in names) if anywhere
                      else names[-1] == func):
            total += profile.values[metric][i]
    return total


def test_leaks_reachable_and_indirect(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("leaks.c")])
    assert proc.returncode == 0, proc.stderr.decode()
    # definitely lost, two distinct sites, exact sizes and counts
    assert site(p, "definite_bytes", "leak_small") == 1000
    assert site(p, "definite_count", "leak_small") == 10
    assert site(p, "definite_bytes", "leak_big") == 15000
    assert site(p, "definite_count", "leak_big") == 3
    # held by a global: still reachable, not lost
    assert site(p, "reachable_bytes", "keep_global") == 1024
    assert site(p, "reachable_count", "keep_global") == 4
    assert site(p, "leaked_bytes", "keep_global") == 0
    # a lost list: its head definitely lost, the 7 nodes behind it indirectly
    assert site(p, "definite_count", "lost_list") == 1
    assert site(p, "indirect_count", "lost_list") == 7
    assert site(p, "leaked_bytes", "lost_list") == 512
    # churn: everything freed
    assert site(p, "alloc_count", "churn") == 1000
    assert site(p, "alloc_bytes", "churn") == 32000
    assert site(p, "leaked_bytes", "churn") == 0
    # the peak: the 1 MiB block plus what was live then, exactly
    totals = next(iter(p.metadata["memory"].values()))["totals"]
    assert totals["peak_bytes"] == 1000 + 15000 + 1024 + 512 + (1 << 20)
    assert site(p, "peak_bytes", "peak_holder") == 1 << 20
    err = proc.stderr.decode()
    assert re.search(r"(15,000 bytes|14\.6 KiB).*definitely lost at: leak_big <- main", err), err
    assert re.search(r"indirectly lost (448 bytes|448 B) in 7 blocks", err), err


def test_report_command_on_memory_profile(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("leaks.c")])
    rep = ctprof(["report", str(tmp_path / "mem.ctprof")], cwd=str(tmp_path))
    assert rep.returncode == 0
    out = rep.stdout.decode()
    assert "Top allocation sites by bytes allocated" in out
    assert re.search(r"15,000 bytes \(14\.6 KiB\) in +3 blocks definitely lost at: leak_big <- main", out), out


#: per metric, a site of leaks.c and its value there, known from the source
KNOWN_SITE = {"alloc_bytes": ("leak_big", 15000), "alloc_count": ("churn", 1000),
              "leaked_bytes": ("leak_small", 1000), "reachable_bytes": ("keep_global", 1024),
              "peak_bytes": ("peak_holder", 1 << 20)}


@pytest.mark.parametrize("metric", sorted(KNOWN_SITE))
def test_memory_flame_graphs(build, tmp_path, metric):
    proc, p = run_mem(tmp_path, [build("leaks.c")], "--metric", metric, "--svg", "m.svg", "--folded", "m.folded")
    assert proc.returncode == 0, proc.stderr.decode()
    func, value = KNOWN_SITE[metric]
    folded = (tmp_path / "m.folded").read_text().splitlines()
    at_site = sum(int(l.rsplit(" ", 1)[1]) for l in folded if l.rsplit(" ", 1)[0].split(";")[-1] == func)
    assert at_site == value, (metric, folded)
    svg = (tmp_path / "m.svg").read_text()
    assert "bytes" in svg or "allocations" in svg


def test_timeline_marks_the_peak(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("leaks.c")], "--timeline", "t.svg")
    assert proc.returncode == 0
    svg = (tmp_path / "t.svg").read_text()
    import xml.etree.ElementTree as ET
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.find(f"{ns}polyline") is not None
    marker = root.find(f"{ns}circle")
    assert marker is not None and "peak 1.0 MiB" in marker.find(f"{ns}title").text
    # the line starts at the program's start with nothing live, and reaches the peak
    points = [tuple(map(float, xy.split(","))) for xy in root.find(f"{ns}polyline").get("points").split()]
    axis = [float(root.findall(f"{ns}line")[0].get(k)) for k in ("x1", "y1")]
    assert points[0] == tuple(axis)
    assert (float(marker.get("cx")), float(marker.get("cy"))) in points


def test_realloc_chains(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("mem_realloc.c")])
    assert proc.returncode == 0, proc.stderr.decode()
    # 16 + 32 + ... + 16384: every realloc is a free plus a new allocation
    assert site(p, "alloc_bytes", "grow_and_free") == sum(16 << k for k in range(11))
    assert site(p, "alloc_count", "grow_and_free") == 11
    assert site(p, "leaked_bytes", "grow_and_free") == 0
    assert site(p, "alloc_count", "grow_and_leak") == 7
    assert site(p, "definite_bytes", "grow_and_leak") == 4096
    assert site(p, "definite_count", "grow_and_leak") == 1


def test_allocator_semantics_kept(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("mem_semantics.c")])
    assert b"semantics ok" in proc.stdout, proc.stdout.decode()
    assert proc.returncode == 0
    assert site(p, "alloc_count", "aligned_ones") == 5
    assert site(p, "alloc_bytes", "aligned_ones") == 1000 + 8192 + 300 + 100 + 100
    assert site(p, "leaked_bytes", "aligned_ones") == 0


def test_cxx_new_delete(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("mem_cxx.cpp")])
    assert proc.returncode == 0, proc.stderr.decode()
    assert site(p, "definite_count", "store::Pool<store::Item>::make()", anywhere=True) == 6
    assert site(p, "definite_bytes", "store::Pool<store::Item>::make()", anywhere=True) == 6 * 32
    # libstdc++ doubles the capacity: 1, 2, 4, ... 16384 ints for 10,000 push_backs
    assert site(p, "alloc_count", "fill_vector(std::vector<int, std::allocator<int> >&)", anywhere=True) == 15
    assert site(p, "alloc_bytes", "fill_vector(std::vector<int, std::allocator<int> >&)", anywhere=True) == 4 * (2 ** 15 - 1)
    assert site(p, "leaked_bytes", "fill_vector(std::vector<int, std::allocator<int> >&)", anywhere=True) == 0


def test_threads_exact_totals(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("mem_threads.c")], timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert site(p, "alloc_count", "churn_thread") == 8 * 200000
    assert site(p, "live_bytes", "churn_thread") == 0
    assert site(p, "alloc_bytes", "churn_thread") == churn_bytes(range(8), 200000)
    totals = next(iter(p.metadata["memory"].values()))["totals"]
    assert totals["unmatched_frees"] == 0
    assert next(iter(p.metadata["memory"].values()))["lost_events"] == 0


def churn_bytes(seeds, per_thread: int) -> int:
    """Bytes the churn loop (tests/progs/churn.h) allocates, one loop per
    seed, from its own generator."""
    total = 0
    for seed in seeds:
        x = (seed * 2654435761 + 1) & 0xFFFFFFFF
        for _ in range(per_thread):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF
            total += 16 + (x >> 8) % 512
    return total


def test_fork_and_exec(build, tmp_path):
    other = build("leaks.c")
    proc, p = run_mem(tmp_path, [build("mem_fork.c"), other])
    assert proc.returncode == 0, proc.stderr.decode()
    by_pid = {}
    for func, size in (("parent_leak", 222), ("child_leak", 666), ("leak_big", 15000)):
        pids = {p.pids[i] for i, s in enumerate(p.stacks)
                if p.frames[s[-1]].name == func and p.values["definite_bytes"][i]}
        assert len(pids) == 1, (func, pids)
        by_pid[func] = pids.pop()
        assert site(p, "definite_bytes", func) == size
    assert len(set(by_pid.values())) == 3


@pytest.mark.parametrize("how,status", [("segv", 139), ("sigkill", 137), ("_exit", 4)])
def test_crash_keeps_the_report(build, tmp_path, how, status):
    proc, p = run_mem(tmp_path, [build("mem_crash.c"), how])
    assert proc.returncode == status
    assert site(p, "leaked_bytes", "doomed_alloc") == 1500
    assert site(p, "leaked_count", "doomed_alloc") == 5
    assert b"live at death" in proc.stderr


def test_malloc_in_signal_handler_does_not_hang(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("mem_signal.c")], timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"signal done 1" in proc.stdout


def mem_big_sizes(n: int):
    """The sizes mem_big.c allocates at each site, from its own generator."""
    x, small, big = 7, [], []
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        small.append(16 + (x >> 8) % 240)
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        big.append(48 + (x >> 8) % 720)
    return {"small_site": small, "big_site": big}


def test_sampled_mode_estimates(build, tmp_path):
    """Each allocation of n bytes is sampled with p = 1 - exp(-n/mean) and
    weighed n/p: the estimate is unbiased with variance sum n^2 (1-p)/p.
    Allow 5 standard deviations."""
    n, mean = 300000, 65536
    proc, sampled = run_mem(tmp_path, [build("mem_big.c"), str(n)], "--mem-sample", str(mean))
    assert proc.returncode == 0, proc.stderr.decode()
    for func, sizes in mem_big_sizes(n).items():
        truth = sum(sizes)
        var = 0.0
        for size in sizes:
            p = -math.expm1(-size / mean)
            var += size * size * (1 - p) / p
        got = site(sampled, "alloc_bytes", func)
        assert abs(got - truth) < 5 * math.sqrt(var), (func, truth, got, math.sqrt(var))
    assert b"estimated from samples" in proc.stderr


def test_overhead_line(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("leaks.c")])
    err = proc.stderr.decode()
    assert "metadata in the program" in err and "of its peak RSS" in err and "in the hook per allocation" in err


def test_mem_options_need_mem(tmp_path):
    proc = ctprof(["run", "--mem-sample", "1000", "--", "true"], cwd=str(tmp_path))
    assert proc.returncode == 2 and b"need --mem" in proc.stderr


def test_static_binary_with_mem(build, tmp_path):
    prog = build("quick.c", "-static", name="quick-static")
    proc = ctprof(["run", "--mem", "--", prog], cwd=str(tmp_path))
    assert proc.returncode == 127 and b"statically linked" in proc.stderr


def test_usr2_writes_a_snapshot_while_running(build, tmp_path):
    prog = build("mem_snapshot.c")
    out = str(tmp_path / "s.ctprof")
    p = subprocess.Popen([sys.executable, "-m", "ctprof", "run", "--mem", "-o", out, "--", prog],
                         cwd=str(tmp_path), env=ctprof_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    time.sleep(0.2)
    p.send_signal(signal.SIGUSR2)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr.decode()
    snap = load_profile(out + ".snapshot1")[0]
    assert site(snap, "live_bytes", "hold_for_a_while") == 4000
    final = load_profile(out)[0]
    assert site(final, "alloc_bytes", "hold_for_a_while") == 4000
    assert site(final, "leaked_bytes", "hold_for_a_while") == 0
    assert b"snapshot: " in stderr


def test_a_child_finished_before_a_snapshot_stays_in_both(build, tmp_path):
    """A process that has exited is finished while the run goes on: a
    snapshot taken after that shows its heap, and so does the final
    profile (the snapshot works on a copy)."""
    out = str(tmp_path / "c.ctprof")
    p = subprocess.Popen([sys.executable, "-m", "ctprof", "run", "--mem", "-o", out, "--", build("mem_snapshot_child.c")],
                         cwd=str(tmp_path), env=ctprof_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready, _, _ = select.select([p.stdout], [], [], 60)
    if not ready:
        p.kill()
    line = p.stdout.readline() if ready else b""
    assert line.startswith(b"ready "), p.communicate()[1].decode()
    child = line.split()[1].decode()
    time.sleep(1.0)          # the child has been reaped: ctprof finishes it within 60 ms
    p.send_signal(signal.SIGUSR2)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stderr.decode()
    for path in (out + ".snapshot1", out):
        profile = load_profile(path)[0]
        assert site(profile, "alloc_bytes", "child_site") == 1500, path
        assert site(profile, "alloc_count", "child_site") == 3, path
        # the snapshot saw the child finished (its exit scan done): a live
        # process's snapshot is never scanned
        assert profile.metadata["memory"][child]["scanned"], path


def test_program_with_its_own_allocator_is_reported(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("mem_ownalloc.c")])
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"defines its own malloc/free" in proc.stderr


def test_exec_in_the_same_process(build, tmp_path):
    proc, p = run_mem(tmp_path, [build("mem_exec.c"), build("leaks.c")])
    assert proc.returncode == 0, proc.stderr.decode()
    assert site(p, "alloc_bytes", "before_exec") == 350
    assert site(p, "leaked_bytes", "before_exec") == 0      # gone with the old image
    assert site(p, "definite_bytes", "leak_big") == 15000   # the new image's leaks
    assert len(set(p.pids)) == 1


def test_unknown_metric_refused_before_running(tmp_path):
    proc = ctprof(["run", "--metric", "leaked_bytes", "--", "true"], cwd=str(tmp_path))
    assert proc.returncode == 2
    assert b"memory metrics need --mem" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


@pytest.mark.parametrize("then_exec", [False, True], ids=["grown", "grown-then-exec"])
def test_counts_stay_exact_across_the_rings_growth(build, monkeypatch, then_exec):
    """The event ring grows while four threads write to it (here at once,
    whatever the program's size or waits): records before, across and after
    the growth, and those of an image exec'd into the grown ring, all
    arrive, each once."""
    import ctprof
    from ctprof.memory import collect
    monkeypatch.setattr(collect, "ring_worth_growing", lambda wait_ns, growth, peak_rss: growth > 0)
    argv = [build("heap_grow.c")] + ([build("leaks.c")] if then_exec else [])
    p = ctprof.run(argv, memory=True)
    assert p.exit_status == 0
    (heap,) = p.metadata["memory"].values()
    assert heap["ring_bytes"] == 4096 + 512 * 1024        # grown, and gone round the grown ring
    assert heap["lost_events"] == heap["skipped_records"] == heap["bad_records"] == 0
    assert heap["totals"]["unmatched_frees"] == 0
    for func, seed in (("churn_early", 0), ("churn_late", 4)):
        assert site(p, "alloc_count", func, anywhere=True) == 4 * 150000
        assert site(p, "alloc_bytes", func, anywhere=True) == churn_bytes(range(seed, seed + 4), 150000)
        assert site(p, "live_bytes", func, anywhere=True) == 0
    assert site(p, "alloc_bytes", "before_exec") == 350
    if then_exec:
        assert site(p, "leaked_bytes", "before_exec") == 0      # gone with the old image
        assert site(p, "definite_bytes", "leak_big") == 15000   # the new image's leaks, in the grown ring
    else:
        assert site(p, "leaked_bytes", "before_exec") == 350


def test_the_ring_grows_only_for_a_program_that_waits_and_is_large():
    """64 KiB -> 512 KiB: only after a wait, and only where it is at most 1%
    of the program's peak RSS; never when the shim could not map it."""
    from ctprof.memory.collect import ring_worth_growing
    growth = 448 * 1024
    assert ring_worth_growing(1, growth, 100 * growth)
    assert not ring_worth_growing(0, growth, 10 ** 12)           # never waited
    assert not ring_worth_growing(10 ** 9, growth, 100 * growth - 1)  # small program
    assert not ring_worth_growing(10 ** 9, 0, 10 ** 12)          # nothing to grow into


def test_leak_classes_from_roots_scanned_in_pieces(build, tmp_path):
    """24 MiB of roots, read and scanned in 1 MiB pieces by two threads:
    each block's class is what its pointers, wherever they lie, make it --
    not what the C library's malloc state points to (the chunk after a
    56-byte block starts inside it)."""
    proc, p = run_mem(tmp_path, [build("heap_big_roots.c")])
    assert proc.returncode == 0, proc.stderr.decode()
    assert site(p, "reachable_count", "held_start") == 20
    assert site(p, "leaked_bytes", "held_start") == site(p, "possibly_lost_bytes", "held_start") == 0
    assert site(p, "possibly_lost_bytes", "held_middle") == 9 * 160
    assert site(p, "definite_bytes", "dropped") == 6 * 72
    assert site(p, "indirect_bytes", "behind") == 6 * 56


def test_heap_rows_alike_in_c_and_in_python(build, monkeypatch):
    """A memory profile's heap rows are made in C (symbols.stackmap) where
    the shim is at hand: they are the rows the Python loop makes -- the
    same frames, merged the same way (two call sites of one function), kept
    apart the same way (one call site, two leaves), the same truncated
    stacks -- and the counts the program made."""
    import copy
    from ctprof import api
    from ctprof.session import FlatStacks
    from ctprof.symbols import resolve_session, stackmap
    rounds = 2000
    result = api.run([build("heap_alike.c", "-g"), str(rounds)], memory=True)
    session = result.session
    assert session.heap_stacks and all(isinstance(b.ips, FlatStacks) for b in session.heap_stacks)
    calls = []
    real = stackmap.first_alike
    monkeypatch.setattr(stackmap, "first_alike", lambda *a: calls.append(1) or real(*a))
    in_c = resolve_session(session)
    assert calls, "the C path did not run"
    monkeypatch.setattr(stackmap, "_library", lambda: None)
    in_python = resolve_session(copy.deepcopy(session), consume=True)   # (as ctprof run does)

    def rows(p):
        names = [f.name for f in p.frames]
        table = {}
        for i, stack in enumerate(p.stacks):
            key = (tuple(names[f] for f in stack), p.pids[i], p.tids[i])
            assert key not in table          # each row once
            table[key] = {m: column[i] for m, column in p.values.items()}
        return table
    made_in_c = rows(in_c)
    assert made_in_c == rows(in_python)
    heap_rows = [k for k, v in made_in_c.items() if v.get("alloc_count")]
    # the two call sites of site_malloc merged: one row per depth, not two
    for fn in ("site_malloc", "site_calloc"):
        mine = [names for names, _, _ in heap_rows if fn in names]
        assert sum(made_in_c[k]["alloc_count"] for k in heap_rows if fn in k[0]) == rounds + rounds // 2
        assert len(mine) == len(set(mine))
    assert any(names[0] == "[truncated]" for names, _, _ in heap_rows if "site_malloc" in names)
    assert any(names[0] != "[truncated]" for names, _, _ in heap_rows if "site_malloc" in names)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the program sets rbp with x86-64 inline asm")
def test_a_pointer_the_unwinder_saw_hides_no_leak(build, tmp_path):
    """A block whose address was in rbp while an allocation's stack was
    walked, then forgotten, is "definitely lost", as valgrind says: the
    unwinder's memo of that walk (in the program's memory, scanned as a
    root) keeps no plain copy of it."""
    proc, p = run_mem(tmp_path, [build("heap_memo_rbp.c", "-g")])
    assert proc.returncode == 0, proc.stderr.decode()
    assert site(p, "alloc_bytes", "alloc_with_saved_rbp") == 24       # the walk that saw it ran
    assert site(p, "definite_bytes", "leak_through_rbp") == 4242
    assert site(p, "reachable_bytes", "leak_through_rbp") == 0


def test_heap_frames_made_while_the_program_runs(build, tmp_path):
    """ctprof run --mem resolves the heap stacks as they come over, while
    the program runs (symbols.live): the profile it saves is the one the
    raw session it saved beside it resolves to at the end, and the counts
    are the program's."""
    rounds = 6000                      # 4096 stacks of site_path met over the first 2/3 of the run
    proc, p = run_mem(tmp_path, [build("heap_alike.c", "-g"), str(rounds), "400"])
    assert proc.returncode == 0, proc.stderr.decode()
    stats = p.metadata["symbol_stats"]
    # every heap stack got its row from the live work, some while the program ran
    assert stats.get("heap_stacks_live", 0) > 4096
    assert stats["heap_stacks_live"] - stats.get("heap_stacks_at_end", 0) > 0
    made = heap_rows(p)
    assert made == heap_rows_at_the_end(str(tmp_path / "mem.ctprof"))
    assert sum(v[0] for k, v in made.items() if k[-1] == "site_path") == rounds
    assert len([k for k in made if k[-1] == "site_path"]) == 4096
    assert sum(v[0] for k, v in made.items() if k[-1] == "site_malloc") == rounds + rounds // 2
    assert any(k[0] == "[truncated]" for k in made)


def test_heap_frames_made_while_an_execed_process_runs(build, tmp_path):
    """A process's allocations from before its exec name code of the old
    image, outside the snapshot its later stacks are resolved under while it
    runs: those stacks are resolved at the end, the others keep the rows
    made while it ran, and the profile is the one its raw session resolves
    to."""
    proc, p = run_mem(tmp_path, [build("heap_exec_live.c", "-g"), "1.5"])
    assert proc.returncode == 0, proc.stderr.decode()
    stats = p.metadata["symbol_stats"]
    assert stats.get("heap_stacks_at_end", 0) > 0
    assert stats["heap_stacks_live"] > stats["heap_stacks_at_end"]
    assert site(p, "alloc_count", "before_exec") == 7
    assert site(p, "alloc_bytes", "before_exec") == 7 * 50
    blocks = int(re.search(rb"after_exec (\d+)", proc.stdout).group(1))
    assert site(p, "alloc_count", "after_exec") == blocks
    assert heap_rows(p) == heap_rows_at_the_end(str(tmp_path / "mem.ctprof"))


@pytest.mark.parametrize("blocks", [1000, 300000])
def test_leak_classes_whether_the_heap_is_copied_or_read_block_by_block(build, tmp_path, blocks):
    """The leak scan follows the blocks in a copy of the allocator's heap
    when it is small, and reads them one by one from a heap larger than it
    copies (300,000 blocks of 128 bytes: over 40 MiB): the classes come
    out the same."""
    proc, p = run_mem(tmp_path, [build("heap_ballast.c"), str(blocks)])
    assert proc.returncode == 0, proc.stderr.decode()
    assert site(p, "reachable_count", "ballast") == blocks + 1       # (and the array holding them)
    assert site(p, "reachable_bytes", "ballast") == blocks * 128 + blocks * 8
    assert site(p, "leaked_bytes", "ballast") == 0
    assert site(p, "reachable_count", "held_list", anywhere=True) == 5
    assert site(p, "definite_count", "lost_list", anywhere=True) == 1
    assert site(p, "indirect_count", "lost_list", anywhere=True) == 7
    assert site(p, "leaked_bytes", "lost_list", anywhere=True) == 8 * 64
    assert site(p, "possibly_lost_bytes", "interior") == 96
    assert site(p, "definite_bytes", "interior") == 0


def test_sampled_mode_leaks_of_a_fork_child(build, tmp_path):
    """In sampled mode the shim keeps the addresses of the sampled blocks
    in a set of its own, which is no root of the leak scan -- in a fork
    child too, whose new ring says so again (it did not: every block the
    child leaked came out "still reachable").  A mean of 1 byte samples
    every block with weight 1: the figures are exact."""
    proc, p = run_mem(tmp_path, [build("mem_fork.c")], "--mem-sample", "1")
    assert proc.returncode == 0, proc.stderr.decode()
    assert site(p, "definite_bytes", "child_leak") == 3 * 222
    assert site(p, "reachable_bytes", "child_leak") == 0
    assert site(p, "definite_bytes", "parent_leak") == 2 * 111
