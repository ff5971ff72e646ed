"""Heap profiling you can trust (issue 9): ``ctprof run --mem`` never hangs
or stalls the program, never misorders events, never reports a false leak,
and keeps its metadata small.  Every program is compiled at test time and,
where speed or memory is the question, run with and without ctprof; a
possible hang is always bounded by a timeout."""
from __future__ import annotations

import ctypes
import glob
import mmap
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

from conftest import ctprof, ctprof_env, load_profile


def run_mem(tmp_path, argv, *options, timeout=120, env=None):
    out = str(tmp_path / "mem.ctprof")
    proc = ctprof(["run", "--mem", "-o", out, *options, "--", *argv], cwd=str(tmp_path),
                  timeout=timeout, env=env)
    profile = load_profile(out)[0] if os.path.exists(out) else None
    return proc, profile


def by_site(profile, metric, func):
    """Sum of ``metric`` over stacks whose innermost frame is ``func``."""
    return sum(profile.values[metric][i] for i, s in enumerate(profile.stacks)
               if s and profile.frames[s[-1]].name == func)


def memory_of(profile, pid=None):
    mem = profile.metadata["memory"]
    return mem[str(pid)] if pid is not None else next(iter(mem.values()))


# ---- 1. a record whose writer died is skipped, never waited on ------------------

def test_exec_while_threads_realloc_never_hangs(build, tmp_path):
    """Workers grow 4 MiB blocks to 8 MiB with realloc while the main thread
    execs a program that allocates more than the ring holds: a record left
    unfinished by a worker the exec killed stopped the controller for good,
    and the new image hung once the ring was full (2 runs in 4 before)."""
    prog, storm = build("trust_exec_realloc.c"), build("trust_realloc_storm.c")
    rounds = 150000
    for _ in range(5):
        start = time.monotonic()
        proc, p = run_mem(tmp_path, [prog, storm, "1", str(rounds)], timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        assert b"storm done" in proc.stdout
        assert time.monotonic() - start < 45
        # the new image's events are all there
        assert by_site(p, "alloc_count", "storm") == 2 * rounds
        assert memory_of(p)["lost_events"] == 0 and not memory_of(p)["detached"]


class SyntheticRing:
    """A .heap ring file written by hand, read by the controller's real
    consumer (shim/collect.c through ctypes): the writer deaths a program
    can only hit by luck are made here on purpose."""

    DATA = 65536

    def __init__(self, tmp_path, pid):
        from ctprof.capture.build import shim_path
        from ctprof.memory import collect
        self.c = collect
        self.lib = collect.bind(shim_path())
        self.path = str(tmp_path / f"{pid}.heap")
        with open(self.path, "wb") as f:
            f.truncate(4096 + self.DATA)
        fd = os.open(self.path, os.O_RDWR)
        self.map = mmap.mmap(fd, 0)
        os.close(fd)
        self.anchor = ctypes.c_char.from_buffer(self.map)
        struct.pack_into("<IIIIQ", self.map, 0, 0x46525443, 1, pid, 0, self.DATA)
        struct.pack_into("<IIQ", self.map, collect.HEAP_SHARED_OFFSET, collect.HEAP_MAGIC, 32, 0)
        self.write_pos = 0
        self.consumer = self.lib.ctprof_heap_new(0.0, pid)

    def put(self, words, size=None):
        data = b"".join(struct.pack("<Q", w) for w in words)
        struct.pack_into(f"<{len(data)}s", self.map, 4096 + self.write_pos, data)
        self.write_pos += size or len(data)
        struct.pack_into("<Q", self.map, 24, self.write_pos)  # write_pos

    def alloc(self, ptr, size, ips=(0x401000,)):
        n = 32 + 8 * len(ips)
        self.put([n | 3 << 32, ptr, size, 7 | len(ips) << 32, *ips])

    def claim(self, tid, size=48):
        """A record reserved and claimed by ``tid``, never committed."""
        self.put([size | (0x80000000 | tid) << 32] + [0] * (size // 8 - 1))

    def consume(self):
        return self.lib.ctprof_heap_consume(self.consumer, ctypes.addressof(self.anchor))

    def totals(self):
        out = (ctypes.c_double * self.c.NTOTAL)()
        self.lib.ctprof_heap_totals(self.consumer, out)
        return dict(zip(self.c.TOTAL_NAMES, out))

    def close(self):
        self.lib.ctprof_heap_delete(self.consumer)
        del self.anchor
        self.map.close()


def test_claim_of_a_dead_thread_is_skipped_and_counted(tmp_path):
    child = subprocess.Popen(["true"])
    child.wait()
    dead = child.pid                       # no thread of ours has this id now
    ring = SyntheticRing(tmp_path, os.getpid())
    try:
        ring.alloc(0x10000, 100)
        ring.claim(dead)
        ring.alloc(0x20000, 200)
        ring.consume()
        t = ring.totals()
        assert t["alloc_count"] == 1 and t["skipped_records"] == 0  # stops at the claim: might be in progress
        deadline = time.monotonic() + 5
        while ring.totals()["alloc_count"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            ring.consume()
        t = ring.totals()
        assert t["alloc_count"] == 2 and t["alloc_bytes"] == 300
        assert t["skipped_records"] == 1
    finally:
        ring.close()


def test_claim_of_a_thread_that_left_the_hook_is_skipped(tmp_path):
    """A live thread whose claim stays open while it runs on (as after a
    longjmp out of a signal handler inside a hook)."""
    ring = SyntheticRing(tmp_path, os.getpid())
    stop = threading.Event()
    tid = []

    def spin():
        tid.append(threading.get_native_id())
        while not stop.is_set():
            sum(range(1000))

    t = threading.Thread(target=spin)
    t.start()
    try:
        while not tid:
            time.sleep(0.01)
        ring.claim(tid[0])
        ring.alloc(0x30000, 64)
        deadline = time.monotonic() + 10
        while ring.totals()["alloc_count"] < 1 and time.monotonic() < deadline:
            ring.consume()
            time.sleep(0.02)
        assert ring.totals()["alloc_count"] == 1
        assert ring.totals()["skipped_records"] == 1
    finally:
        stop.set()
        t.join()
        ring.close()


def test_scribbled_record_lengths_are_refused(tmp_path):
    """nips larger than the record: counted as bad, never read past it."""
    ring = SyntheticRing(tmp_path, os.getpid())
    try:
        ring.put([40 | 3 << 32, 0x40000, 10, 7 | 100000 << 32, 0x401000])   # says 100000 ips in 40 bytes
        ring.alloc(0x50000, 20)
        ring.consume()
        t = ring.totals()
        assert t["bad_records"] == 1 and t["alloc_count"] == 1 and t["alloc_bytes"] == 20
    finally:
        ring.close()


# ---- 2. nothing drains the ring any more: full speed, decided once --------------

def plain_rate(prog, tmp_path, pairs):
    go, out = tmp_path / "go-plain", tmp_path / "rate-plain"
    subprocess.run([prog, "exit", str(go), str(out), pairs], check=True, timeout=30, stdout=subprocess.DEVNULL)
    go.touch()
    return wait_rate(out)


def wait_rate(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return float(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"the child never finished its timed loop ({path})")


@pytest.mark.parametrize("how", ["ctprof-interrupted", "ctprof-killed"])
def test_child_outliving_the_run_runs_at_full_speed(build, tmp_path, how):
    """A child that outlives the program: ctprof follows it until it ends,
    unless ctprof is stopped (Ctrl-C: the child is detached) or killed
    (SIGKILL: the shim finds its controller dead).  Then the child times its
    own malloc/free loop: within a small factor of the same loop without
    ctprof (it was ~20,000x slower: a 2 s wait per event)."""
    prog = build("trust_outlive.c")
    pairs = "3000000"
    base = min(plain_rate(prog, tmp_path, pairs) for _ in range(2))
    go, out = tmp_path / "go", tmp_path / "rate"
    cmd = [sys.executable, "-m", "ctprof", "run", "-q", "--mem", "-o", str(tmp_path / "o.ctprof"), "--",
           prog, "stay" if how == "ctprof-killed" else "exit", str(go), str(out), pairs]
    ctl = subprocess.Popen(cmd, cwd=str(tmp_path), env=ctprof_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = ctl.stdout.readline()
    assert line.startswith(b"child "), line
    child = int(line.split()[1])
    try:
        time.sleep(1.0)
        if how == "ctprof-killed":
            ctl.kill()
        else:
            ctl.send_signal(signal.SIGINT)
        ctl.wait(timeout=60)
        go.touch()
        rate = wait_rate(out)
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
        for left in glob.glob(f"/dev/shm/ctprof-{ctl.pid}-*"):  # a killed ctprof could not clean up
            shutil.rmtree(left, ignore_errors=True)
    # the shim stalls at most once (a dead controller: its pid; a silent one:
    # 2 s without a heartbeat), then forwards only
    assert rate > base / 5, (rate, base)


# ---- 3. realloc ordered against other threads ------------------------------------

def test_realloc_storm_on_one_arena_has_no_unmatched_free(build, tmp_path):
    threads, rounds = 8, 30000
    env = {"MALLOC_ARENA_MAX": "1", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}
    proc, p = run_mem(tmp_path, [build("trust_realloc_storm.c"), str(threads), str(rounds)], timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    mem = memory_of(p)
    assert mem["totals"]["unmatched_frees"] == 0
    assert mem["lost_events"] == 0 and mem["skipped_records"] == 0
    # each round: a malloc, a realloc (a new block), a malloc
    assert by_site(p, "alloc_count", "storm") == threads * rounds * 2
    assert by_site(p, "live_bytes", "storm") == 0
    assert by_site(p, "leaked_bytes", "storm") == 0


# ---- 4. leak classes without valgrind's blind spots ----------------------------

def test_leak_roots_threads_tls_dtv_interior(build, tmp_path):
    blocked = 70   # more than the 60 thread stacks the scan used to know
    proc, p = run_mem(tmp_path, [build("trust_roots.c"), str(blocked)], timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert f"roots ready {blocked}".encode() in proc.stdout
    # a block on each blocked thread's stack: still reachable
    assert by_site(p, "reachable_count", "hold_on_stack") == blocked
    assert by_site(p, "reachable_bytes", "hold_on_stack") == 100 * blocked
    # the DTVs, a joined thread's included: reachable (through its cached stack)
    dtvs = by_site(p, "alloc_count", "allocate_dtv")
    assert dtvs == blocked + 1
    assert by_site(p, "reachable_count", "allocate_dtv") == dtvs
    # the main thread's __thread pointer
    assert by_site(p, "reachable_bytes", "tls_alloc") == 300
    # only an interior pointer: possibly lost, not definitely
    assert by_site(p, "possibly_lost_bytes", "interior_alloc") == 5000
    assert by_site(p, "definite_bytes", "interior_alloc") == 0
    # ... and the report says so, with its site
    err = proc.stderr.decode()
    assert "possibly lost 5,000 bytes" in err
    assert any("possibly lost at" in line and "interior_alloc" in line for line in err.splitlines()), err
    # and the one real leak, to the byte; nothing else is definitely lost
    assert by_site(p, "definite_bytes", "lost_alloc") == 777
    assert p.total("definite_bytes") == 777
    assert p.total("indirect_bytes") == 0


def test_sampled_mode_never_claims_a_reachable_list_lost(build, tmp_path):
    nodes = 20000
    proc, p = run_mem(tmp_path, [build("trust_list.c"), str(nodes)], "--mem-sample", "65536")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert by_site(p, "alloc_count", "add_node") > 0          # some nodes were sampled
    assert p.total("definite_bytes") == 0
    assert p.total("indirect_bytes") == 0
    # in exact mode the same list is still reachable, every node
    proc, exact = run_mem(tmp_path, [build("trust_list.c"), str(nodes)])
    assert by_site(exact, "reachable_count", "add_node") == nodes
    assert exact.total("definite_bytes") == 0


def test_a_fork_child_gets_every_stack_whole(build, tmp_path):
    """A thread sends a stack it sent before as its hash alone; the stacks a
    parent sent are unknown to its fork child's ring, and each thread keeps
    its own record of what it sent: every 96-byte allocation of the one site
    must keep its call chain, in both processes."""
    proc, p = run_mem(tmp_path, [build("heap_known_fork.c")])
    assert proc.returncode == 0, proc.stderr.decode()
    said = dict(zip(proc.stdout.split()[0::2], map(int, proc.stdout.split()[1::2])))
    at_site = {}
    for i, stack in enumerate(p.stacks):
        if stack and p.frames[stack[-1]].name == "shared_site":
            allocs = p.values["alloc_count"][i]
            at_site[p.pids[i]] = at_site.get(p.pids[i], 0) + allocs
            assert p.values["alloc_bytes"][i] == 96 * allocs
    assert at_site == {said[b"parent_pid"]: said[b"parent"], said[b"child_pid"]: said[b"child"] + said[b"thread"]}


def test_a_stack_sent_again_after_it_was_taken_is_the_same_stack(build, tmp_path):
    """The consumer lets go of the addresses of stacks the controller has
    taken, and finds such a stack again by its hash: a thread sending it
    whole after that gets the one raw stack (no second copy), with every
    allocation of both threads, and a stack interned after the pool was cut
    keeps its own call chain."""
    out = str(tmp_path / "mem.ctprof")
    proc = ctprof(["run", "--mem", "--mem-depth", "2", "-o", out, "--", build("heap_drop_taken.c")],
                  cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    said = dict(zip(proc.stdout.split()[0::2], map(int, proc.stdout.split()[1::2])))
    p, session = load_profile(out)
    chains = {}
    for i, stack in enumerate(p.stacks):
        names = tuple(p.frames[f].name for f in stack)
        if names[-2:] in (("via", "site"), ("later", "site")):
            chains[names[-2]] = chains.get(names[-2], 0) + p.values["alloc_count"][i]
    assert chains == {"via": said[b"via"], "later": said[b"later"]}
    heap = [(s.pid, s.ips, s.truncated) for s in session.stacks if "alloc_count" in s.values]
    assert heap and len(heap) == len(set(heap))     # each stack once


def test_stacks_made_in_a_burst_keep_their_chains(build, tmp_path):
    """6561 distinct stacks at once: the consumer cuts its pool of
    addresses (those the controller took) while later stacks are in it;
    every path keeps its own call chain and count."""
    proc, p = run_mem(tmp_path, [build("heap_many_stacks.c")])
    assert proc.returncode == 0, proc.stderr.decode()
    said = dict(zip(proc.stdout.split()[0::2], map(int, proc.stdout.split()[1::2])))
    paths = {}
    for i, stack in enumerate(p.stacks):
        names = [p.frames[f].name for f in stack]
        if names and names[-1] == "leaf_alloc":
            steps = [n for n in names if n in ("step0", "step1", "step2")]
            assert len(steps) == said[b"levels"], names
            path = int("".join(n[-1] for n in steps), 3)
            paths[path] = paths.get(path, 0) + p.values["alloc_count"][i]
    assert paths == {path: said[b"rounds"] for path in range(said[b"paths"])}


# ---- 5. the profiler is invisible in the profile -------------------------------

def test_fork_storm_shows_no_shim_allocation(build, tmp_path):
    children = 50
    proc, p = run_mem(tmp_path, [build("trust_fork_storm.c"), str(children)], timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    parent = p.pids[next(i for i, s in enumerate(p.stacks) if p.frames[s[-1]].name == "parent_work")]
    child_pids = set()
    for i, stack in enumerate(p.stacks):
        if not p.values["alloc_count"][i]:
            continue
        frames = [p.frames[f] for f in stack]
        assert not any("libctprof" in (f.module or "") for f in frames), [f.name for f in frames]
        if frames[-1].name == "child_work":
            assert p.values["alloc_count"][i] == 7 and p.pids[i] != parent
            child_pids.add(p.pids[i])
    assert len(child_pids) == children            # each child's events in its own ring
    assert by_site(p, "alloc_count", "parent_work") == 3


# ---- 6. metadata, measured from outside -----------------------------------------

def test_metadata_under_ten_percent_measured_outside(build, tmp_path):
    """The program reports its own peak RSS (VmHWM); with --mem it may grow
    by less than 10% on a program of a few tens of MiB, and the figure ctprof
    prints is at least the ring and cache it measured."""
    prog = build("trust_rss.c")
    window_kb, rounds = "24576", "1500000"
    plain = int(subprocess.run([prog, window_kb, rounds], capture_output=True, check=True,
                               timeout=60).stdout.split()[1])
    proc, p = run_mem(tmp_path, [prog, window_kb, rounds], timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    with_mem = int(proc.stdout.split()[1])
    assert with_mem - plain < plain * 0.10, (plain, with_mem)
    mem = memory_of(p)
    assert 0 < mem["ring_bytes"] + mem["unwind_cache_bytes"] < (with_mem - plain) * 1024 + (64 << 10)
    assert b"metadata in the program" in proc.stderr


# ---- 7. checked reads: the unwind-rule cache after dlclose ---------------------

def test_rules_of_an_unloaded_library_are_not_reused(build, tmp_path):
    """A library is unloaded and another loaded at the same addresses, with
    the same code but another stack frame at the very pc malloc returns to:
    the rule cached for the first must not unwind the second (a stale rule
    reads the return address from the wrong slot and the chain ends at
    work())."""
    big = build("trust_relib.c", "-DBIG", shared=True, name="librelib-big.so")
    small = build("trust_relib.c", shared=True, name="librelib-small.so")
    proc, p = run_mem(tmp_path, [build("trust_dlclose.c"), big, small])
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    # the case under test: the second library's work() where the first's was
    assert b"same address" in proc.stdout, proc.stdout
    whole = partial = 0
    for names, count in p.named_stacks("alloc_count"):
        if names and names[-1] == "work":
            if "main" in names and any(n.startswith("use_library") for n in names):
                whole += count
            else:
                partial += count
    assert (whole, partial) == (200, 0), (whole, partial)


PATH_SIZES = {"path_a": 24, "path_b": 40, "path_c": 56}


def heap_callers_schedule(rounds):
    """How many blocks heap_callers.c allocates through each (path, depth):
    the program's own schedule, path_of(i) and depth_of(i)."""
    expected = {}
    for i in range(rounds):
        key = (("path_a", "path_b", "path_c")[(i * 7 + i // 3) % 3], 3 + (i // 2) % 3)
        expected[key] = expected.get(key, 0) + 1
    return expected


@pytest.mark.parametrize("depth_limit", [None, "6"], ids=["whole-stacks", "cut-at-6-frames"])
def test_each_caller_chain_keeps_its_own_allocations(build, tmp_path, depth_limit):
    """Three paths allocate alternately, with their own sizes, from
    recursions of changing depth, one rbp-based frame among them: the
    hooks' unwinder starts from the thread's last walk wherever it still
    holds, and must notice each time the callers changed.  Every stack
    through path_X must hold only path_X's size, with the program's own
    count per path -- and per recursion depth when stacks are whole.  Cut
    at 6 frames, every walk stops inside the recursion and the next one
    may resume where the last stopped."""
    rounds = 30000
    options = ("--mem-depth", depth_limit) if depth_limit else ()
    proc, p = run_mem(tmp_path, [build("heap_callers.c", "-g"), str(rounds)], *options)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    got_count, got_bytes = {}, {}
    for i, stack in enumerate(p.stacks):
        names = [p.frames[f].name for f in stack if p.frames[f].name != "[truncated]"]
        count = p.values["alloc_count"][i]
        if not count or "descend" not in names:
            continue
        assert names[-1] == "leaf" and names[-2] in PATH_SIZES, names
        path = names[-2]
        key = (path, names.count("descend") - 1) if depth_limit is None else path
        if depth_limit is None:
            assert "main" in names, names
        else:
            assert len(names) == 6 and names[:4] == ["descend"] * 4, names
        got_count[key] = got_count.get(key, 0) + count
        got_bytes[key] = got_bytes.get(key, 0) + p.values["alloc_bytes"][i]
    expected = heap_callers_schedule(rounds)
    if depth_limit is not None:
        per_path = {}
        for (path, _), n in expected.items():
            per_path[path] = per_path.get(path, 0) + n
        expected = per_path
    assert got_count == expected
    assert got_bytes == {key: n * PATH_SIZES[key if isinstance(key, str) else key[0]] for key, n in expected.items()}


def test_no_drainer_thread_starts_after_the_run_stopped_it(tmp_path):
    """The run's last look for rings (after the drainer thread stopped) may
    find a new one: it is left to the caller to drain, not handed to a
    drainer thread started anew that nothing would stop."""
    from ctprof.capture.build import shim_path
    from ctprof.memory.collect import bind
    lib = bind(shim_path())
    # a ring of zeros: a drainer takes it (0: the caller need not drain
    # it) but finds nothing to consume in it (its size is 0)
    ring = ctypes.create_string_buffer(1 << 20)
    consumer = lib.ctprof_heap_new(0.0, os.getpid())
    try:
        assert lib.ctprof_heap_watch(os.fsencode(str(tmp_path))) == 0
        lib.ctprof_heap_drain_stop()
        assert lib.ctprof_heap_drain_add(consumer, ctypes.addressof(ring)) == -1   # (was 0: a new thread)
        # the next run's drainer starts again
        assert lib.ctprof_heap_watch(os.fsencode(str(tmp_path))) == 0
        assert lib.ctprof_heap_drain_add(consumer, ctypes.addressof(ring)) == 0
    finally:
        lib.ctprof_heap_drain_stop()
        lib.ctprof_heap_delete(consumer)      # (taken off the drainer's list first)
