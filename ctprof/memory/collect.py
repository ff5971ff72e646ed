"""Drain the ``.heap`` rings of a run (layout: shim/ctprof.h) into the
controller-side consumers in shim/collect.c, and run the leak scan when a
process reaches its exit.

A thread in C (the drainer, shim/collect.c) drains every ring as records
arrive, without the GIL; the program's allocations wait on it only when its
ring is full.  A Python thread finds new rings, follows each process's
figures (timeline, peak, peak RSS), names the code objects of Python frames
and runs the leak scan when a process reaches its exit.
"""
from __future__ import annotations

import ctypes
import os
from array import array
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from ..capture.build import shim_path
from ..capture.pystacks import PYFRAMES_MARK, CodeReader, PythonCodes
from ..capture.ring import MappedFile
from ..errors import BuildError
from ..session import FlatStacks
from ..files import process_running, process_state

HEAP_SHARED_OFFSET = 2048
HEAP_MAGIC = 0x50414548
HEAP_HEADER = struct.Struct("<IIQII" + "Q" * 16 + "II" + "Q" * 6)
HEAP_FIELDS = ("magic", "depth", "sample_bytes", "exit_state", "detached", "exit_sp", "exit_fs", "exit_tid",
               "heartbeat_ns", "lost", "wait_ns", "controller_pid", "timed_calls", "timed_ns",
               "sampled_free_overflow", "unwind_cache_bytes", "detached_ns", "execs", "exec_pos",
               "exit_tls_lo", "exit_tls_hi", "drain_wake", "spare", "own_lo", "own_hi", "grow_at", "grow_size",
               "own_cache_lo", "own_cache_hi")
EXIT_STATE_OFFSET = HEAP_SHARED_OFFSET + 16
DETACHED_OFFSET = HEAP_SHARED_OFFSET + 20
HEARTBEAT_OFFSET = HEAP_SHARED_OFFSET + 48
CONTROLLER_PID_OFFSET = HEAP_SHARED_OFFSET + 72
EXIT_WAITING, EXIT_SCANNED = 1, 2
#: heap_shared.detached (DETACH_* in ctprof.h): why tracking stopped in a process
DETACH_REASONS = {1: "still running when the run ended (detached)",
                  2: "ctprof's controller died", 3: "ctprof's controller stopped draining"}
DETACH_RUN_ENDED = 1
RING_DATA_SIZE_OFFSET = 16
#: sizeof(struct pthread) in glibc 2.36 on x86-64, rounded up: the exiting
#: thread's descriptor (its DTV and pthread_setspecific pointers) is a root
THREAD_DESCRIPTOR_BYTES = 2304
#: glibc's HEAP_MAX_SIZE on 64-bit: thread arenas start on this alignment
ARENA_ALIGN = 64 << 20
RANGE_ROOT, RANGE_HEAP, RANGE_ARENA_LIKE, RANGE_MALLOC_STATE = 0, 1, 2, 3

NSTAT = 18
#: Words of the buffer the heap stacks are fetched in (256 KiB: about a
#: thousand stacks a call; a stack has at most a few hundred words).
STACK_BATCH_WORDS = 1 << 15
STAT_NAMES = ("alloc_count", "alloc_bytes", "free_count", "free_bytes", "live_count", "live_bytes",
              "peak_count", "peak_bytes", "definite_count", "definite_bytes", "indirect_count",
              "indirect_bytes", "reachable_count", "reachable_bytes", "truncated", "possible_count",
              "possible_bytes")
TOTAL_NAMES = ("live_bytes", "live_count", "peak_bytes", "peak_count", "alloc_count", "alloc_bytes",
               "free_count", "free_bytes", "unmatched_frees", "events", "stacks", "scanned", "snapshots",
               "max_live_blocks", "skipped_records", "bad_records", "python_stacks")
NTOTAL = len(TOTAL_NAMES)          # collect.c's NTOTAL: the figures it copies out
PYTHON_STACKS_TOTAL = TOTAL_NAMES.index("python_stacks")
TIMELINE_MAX_POINTS = 20000
TIMELINE_STEP_S = 0.005
RSS_STEP_S = 0.05
DISCOVER_STEP_S = 0.02
#: Longest wait between two looks at the rings the drainer thread drains.
LOOK_STEP_S = 0.01
#: How often the processes of the rings still open are checked for having exited.
EXIT_CHECK_S = 0.05
#: New stacks' addresses are copied while the program runs, this often and
#: this many at a time, or half of those waiting when more wait, up to
#: TAKE_MAX_STACKS (a few ms of the interpreter's time, behind the naming
#: of Python frames; at most some 30 ms, which an exiting process may
#: wait), so that little is left once it has ended: cc1plus interns 20,000
#: stacks a second and 65,000 in its last bursts, and at 1,000 a step
#: 15,000 were left to resolve after the compile (74 ms).
TAKE_STEP_S = 0.05
TAKE_BATCH_STACKS = 1000
TAKE_MAX_STACKS = 20000
#: A process's event ring grows (once, into the rest of its file: 64 KiB to
#: 512 KiB) when it has waited for ring space and the growth is at most
#: this share of its peak RSS: a large program allocating flat out is not
#: held up by the drainer's moments off the CPU, and a small one's metadata
#: stays as it was.
GROW_RSS_SHARE = 0.01


def bind(shim: str):
    """ctypes bindings of the consumer functions in the compiled shim."""
    lib = ctypes.CDLL(shim)
    # The short calls keep the GIL (PyDLL): a call that let it go would
    # wait a switch interval (5 ms) to get it back from the busy main
    # thread, and naming a batch of new stacks takes dozens of calls.  They
    # wait at most for the drainer's current batch of records.
    quick = ctypes.PyDLL(shim)
    for name in ("ctprof_heap_totals", "ctprof_heap_nstacks", "ctprof_heap_stacks", "ctprof_heap_stats",
                 "ctprof_heap_python_frames", "ctprof_heap_drop_taken"):
        setattr(lib, name, getattr(quick, name))
    vp, u64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)
    lib.ctprof_heap_new.argtypes = [ctypes.c_double, ctypes.c_int]
    lib.ctprof_heap_new.restype = vp
    lib.ctprof_heap_delete.argtypes = [vp]
    lib.ctprof_heap_consume.argtypes = [vp, vp]
    lib.ctprof_heap_consume.restype = ctypes.c_size_t
    lib.ctprof_heap_totals.argtypes = [vp, ctypes.POINTER(ctypes.c_double)]
    lib.ctprof_heap_nstacks.argtypes = [vp]
    lib.ctprof_heap_nstacks.restype = ctypes.c_uint32
    lib.ctprof_heap_stacks.argtypes = [vp, ctypes.c_uint32, u64p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint32)]
    lib.ctprof_heap_stacks.restype = ctypes.c_size_t
    lib.ctprof_heap_stats.argtypes = [vp, ctypes.c_uint32, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t]
    lib.ctprof_heap_stats.restype = ctypes.c_size_t
    lib.ctprof_heap_grow.argtypes = [vp, vp, ctypes.c_uint64]
    lib.ctprof_heap_grow.restype = ctypes.c_int
    lib.ctprof_heap_drop_taken.argtypes = [vp, ctypes.c_uint32]
    lib.ctprof_heap_drop_taken.restype = None
    lib.ctprof_heap_python_frames.argtypes = [vp, ctypes.c_uint32, u64p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint32)]
    lib.ctprof_heap_python_frames.restype = ctypes.c_size_t
    lib.ctprof_heap_scan.argtypes = [vp, ctypes.c_int, u64p, ctypes.c_int, u64p]
    lib.ctprof_heap_scan.restype = ctypes.c_int
    lib.ctprof_heap_drain_add.argtypes = [vp, vp]
    lib.ctprof_heap_drain_add.restype = ctypes.c_int
    lib.ctprof_heap_drain_stop.argtypes = []
    lib.ctprof_heap_watch.argtypes = [ctypes.c_char_p]
    lib.ctprof_heap_watch.restype = ctypes.c_int
    lib.ctprof_heap_forget_live.argtypes = [vp]
    lib.ctprof_heap_wait_attention.argtypes = [ctypes.c_int]
    lib.ctprof_heap_wait_attention.restype = ctypes.c_int
    lib.ctprof_heap_raise_attention.argtypes = []
    lib.ctprof_heap_exit_wake.argtypes = [vp]
    lib.ctprof_heap_exit_wake.restype = None
    return lib


@dataclass
class HeapProcess:
    """The heap side of one process, as the controller saw it."""

    pid: int
    totals: Dict[str, float] = field(default_factory=dict)
    header: Dict[str, int] = field(default_factory=dict)
    #: each stack's addresses leaf first, the leaf the call into the
    #: allocator, the others return addresses, all in one machine array (a
    #: large program leaves 100,000 stacks, 3 million addresses) ...
    stacks: FlatStacks = field(default_factory=FlatStacks)
    #: ... and their statistics rounded to whole numbers, NSTAT per stack in
    #: STAT_NAMES order, stack after stack in one packed array (no object
    #: per stack)
    stats: "array[int]" = field(default_factory=lambda: array("q"))
    timeline: List[Tuple[float, float]] = field(default_factory=list)  # (seconds since start, live bytes)
    peak_time: float = 0.0
    scanned: bool = False
    scan_error: str = ""
    peak_rss: int = 0
    ring_bytes_used: int = 0
    #: A CPython process: its version and the code objects its stacks'
    #: Python frames name ((address, fingerprint) -> [qualname, filename, firstlineno, line table hex]).
    python_version: Optional[Tuple[int, int]] = None
    python_codes: Dict[Tuple[int, int], list] = field(default_factory=dict)

    def copy(self) -> "HeapProcess":
        """A copy whose stacks and figures can be consumed (a snapshot's)."""
        return replace(self, stacks=self.stacks.copy(), stats=array("q", self.stats), timeline=list(self.timeline),
                       totals=dict(self.totals), header=dict(self.header))


class HeapRing(MappedFile):
    """One mapped .heap file and its consumer."""

    def __init__(self, lib, path: str, start: float) -> None:
        super().__init__(path)
        self.lib = lib
        self.pid = int(os.path.basename(path).split(".")[0])
        self.consumer = None
        self.start = start
        self.info = HeapProcess(self.pid)
        self._last_point = -1.0
        self._last_rss = -1.0
        self._totals = (ctypes.c_double * NTOTAL)()
        self._peak_seen = 0.0
        self.codes = CodeReader(self.pid)
        self._stacks_named = 0
        self.drained_in_c = False
        # The stacks' addresses never change once interned: they come over
        # while the program runs, and only their figures at the end.
        # taken_ready: how many of them are complete (read by another
        # thread while this one adds more).
        self._taken = FlatStacks()
        self.taken_ready = 0
        self._last_take = -1.0
        self._grown = False

    def ready(self) -> bool:
        return struct.unpack_from("<I", self.map, HEAP_SHARED_OFFSET)[0] == HEAP_MAGIC

    def header(self) -> Dict[str, int]:
        return dict(zip(HEAP_FIELDS, HEAP_HEADER.unpack_from(self.map, HEAP_SHARED_OFFSET)))

    def ensure_consumer(self) -> bool:
        if self.consumer is None and self.ready():
            self.consumer = self.lib.ctprof_heap_new(float(self.header()["sample_bytes"]), self.pid)
            # the shim checks this pid when its ring is full: a dead
            # controller is never waited for
            struct.pack_into("<Q", self.map, CONTROLLER_PID_OFFSET, os.getpid())
            if self.consumer is not None:
                # drained in C from now on, as records arrive (without a
                # drainer thread, consume() below is the only drain)
                self.drained_in_c = self.lib.ctprof_heap_drain_add(self.consumer, self.address) == 0
        return self.consumer is not None

    def heartbeat(self) -> None:
        struct.pack_into("<Q", self.map, HEARTBEAT_OFFSET, time.monotonic_ns())

    def consume(self, drain: bool = False) -> int:
        """Follow the process's figures and name new stacks; also drain its
        ring when no drainer thread does, or when asked (``drain``: the
        process waits at its exit, or the run is over)."""
        if not self.ensure_consumer():
            return 0
        n = 0
        if drain or not self.drained_in_c:    # (the drainer writes the heartbeat when it drains)
            self.heartbeat()
            n = self.lib.ctprof_heap_consume(self.consumer, self.address)
        now = time.monotonic()
        self._observe(now - self.start)
        if not self._name_python_frames(now) and now - self._last_take >= TAKE_STEP_S:
            self._last_take = now
            self._take_stacks(TAKE_BATCH_STACKS)
        return n

    def _name_python_frames(self, now: float) -> bool:
        """Read the code objects new stacks' Python frames refer to, while
        the process is alive to be read (the consumer hands over each code
        object once).  True if there were any: that comes first, before
        anything else this thread could do (a code object can be freed any
        moment)."""
        if not self._totals[PYTHON_STACKS_TOTAL]:
            return False         # (no Python frame yet: no interpreter to look for in every process)
        if not self.codes.found(now):
            return False
        total = self.lib.ctprof_heap_nstacks(self.consumer)
        sid = self._stacks_named
        if total <= sid:
            return False
        buf = (ctypes.c_uint64 * STACK_BATCH_WORDS)()
        next_id = ctypes.c_uint32()
        keys = set()
        while sid < total:
            used = self.lib.ctprof_heap_python_frames(self.consumer, sid, buf, len(buf), ctypes.byref(next_id))
            if next_id.value == sid:
                break
            sid = next_id.value
            words = buf[:used]
            keys.update(zip(words[0::2], words[1::2]))
        self._stacks_named = sid
        self.codes.learn(keys)
        return True

    def _take_stacks(self, limit: Optional[int] = None) -> None:
        """Copy the addresses of stacks interned since the last call (at
        most ``limit`` of them, or half of those waiting if that is more, up
        to TAKE_MAX_STACKS), in batches of a few thousand; the consumer then
        lets go of them."""
        total = self.lib.ctprof_heap_nstacks(self.consumer)
        if limit is not None:
            waiting = total - len(self._taken)
            total = min(total, len(self._taken) + max(limit, min(waiting // 2, TAKE_MAX_STACKS)))
        if len(self._taken) >= total:
            return
        buf = (ctypes.c_uint64 * STACK_BATCH_WORDS)()
        raw = memoryview(buf).cast("B")
        next_id = ctypes.c_uint32()
        stacks = self._taken
        out, lengths, truncated = stacks.words, stacks.lengths, stacks.truncated
        while len(lengths) < total:
            sid = len(lengths)
            used = self.lib.ctprof_heap_stacks(self.consumer, sid, buf, len(buf), ctypes.byref(next_id))
            if next_id.value == sid:
                break                       # a stack larger than the buffer (never: a few hundred words)
            words = array("Q")
            words.frombytes(raw[:8 * used])
            pos = 0
            while pos < used and len(lengths) < total:
                depth, cut = words[pos] & 0xFFFFFFFF, words[pos] >> 32
                leaf = len(out)
                out.extend(words[pos + 1:pos + 1 + depth])
                lengths.append(depth)
                truncated.append(cut)
                # The leaf is the allocator's return address: made the
                # call instruction itself, as a raw stack's first address
                # is exact (unless the stack has no native frame at all).
                if depth and out[leaf] != PYFRAMES_MARK:
                    out[leaf] -= 1
                pos += 1 + depth
        self.taken_ready = len(lengths)
        self.lib.ctprof_heap_drop_taken(self.consumer, len(lengths))

    def stacks_so_far(self) -> Tuple[FlatStacks, int, Optional[PythonCodes]]:
        """The stacks taken so far, how many of them are complete (for
        another thread: the complete ones never change), and the code
        objects their Python frames name so far, if it is a CPython."""
        ready = self.taken_ready              # (read before the stacks: they only grow)
        interp = self.codes.interp
        return self._taken, ready, (interp.version, self.codes.entries) if interp is not None else None

    def _stacks(self, final: bool) -> Tuple[FlatStacks, "array[int]"]:
        """Every stack's addresses, and all their statistics (see
        HeapProcess), copied straight into one array.  ``final``: the
        stacks are handed over for good (else a copy, for a snapshot)."""
        n = self.lib.ctprof_heap_nstacks(self.consumer)
        table = array("q", bytes(8 * n * NSTAT))
        if n:
            address = ctypes.cast(table.buffer_info()[0], ctypes.POINTER(ctypes.c_int64))
            n = self.lib.ctprof_heap_stats(self.consumer, 0, address, n)
        self._take_stacks()
        stacks = self._taken if final else self._taken.copy()
        if final:
            self.taken_ready = 0
            self._taken = FlatStacks()
        stacks.truncate(n)                  # (stacks interned meanwhile have no figures here)
        del table[len(stacks) * NSTAT:]
        return stacks, table

    def detach(self) -> None:
        """Nothing drains this ring any more: the run is over but its process
        is not (it stops tracking at its next hook and runs at full speed from
        then on), or its process has ended (a later one given the same pid
        is not tracked into this file)."""
        if struct.unpack_from("<I", self.map, DETACHED_OFFSET)[0] == 0:
            struct.pack_into("<I", self.map, DETACHED_OFFSET, DETACH_RUN_ENDED)

    def _observe(self, now: float, final: bool = False) -> None:
        """Note a new peak's time on every drain; add a timeline point and
        read the peak RSS (a /proc read) only every so often."""
        self.lib.ctprof_heap_totals(self.consumer, self._totals)
        live, peak = self._totals[0], self._totals[2]
        if peak > self._peak_seen:
            self._peak_seen = peak
            self.info.peak_time = now
        if not final and now - self._last_point < TIMELINE_STEP_S:
            return
        tl = self.info.timeline
        if len(tl) >= TIMELINE_MAX_POINTS:
            del tl[1::2]  # keep it bounded: halve the resolution
        tl.append((round(now, 4), live))
        if final or now - self._last_rss >= RSS_STEP_S:
            self._last_rss = now
            self.info.peak_rss = max(self.info.peak_rss, read_peak_rss(self.pid))
            if not final:
                self._maybe_grow()
        self._last_point = now

    def _maybe_grow(self) -> None:
        """Let the ring grow once it is worth it (ring_worth_growing)."""
        if self._grown:
            return
        h = self.header()
        data_size = struct.unpack_from("<Q", self.map, RING_DATA_SIZE_OFFSET)[0]
        if ring_worth_growing(h["wait_ns"], h["grow_size"] - data_size, self.info.peak_rss):
            self._grown = bool(self.lib.ctprof_heap_grow(self.consumer, self.address, len(self.map)))

    def exit_waiting(self) -> bool:
        return struct.unpack_from("<I", self.map, EXIT_STATE_OFFSET)[0] == EXIT_WAITING

    def scan(self) -> None:
        """Classify live blocks while the process waits in its exit hook."""
        ranges = root_ranges(self.pid, self.header(), os.path.dirname(self.path))
        arr = (ctypes.c_uint64 * (3 * len(ranges) + 1))()
        for i, triple in enumerate(ranges):
            arr[3 * i:3 * i + 3] = list(triple)
        beat = ctypes.c_uint64.from_buffer(self.map, HEARTBEAT_OFFSET)
        rc = self.lib.ctprof_heap_scan(self.consumer, self.pid, arr, len(ranges), ctypes.pointer(beat))
        del beat
        self.info.scanned = rc == 0
        if rc != 0:
            self.info.scan_error = "could not read the program's memory for the leak scan"
        self.release_exit()

    def release_exit(self) -> None:
        """Let the process go on from its exit hook, and wake it there."""
        struct.pack_into("<I", self.map, EXIT_STATE_OFFSET, EXIT_SCANNED)
        self.lib.ctprof_heap_exit_wake(self.address)

    def snapshot(self) -> HeapProcess:
        """A copy of what is known now (for a snapshot while the program
        runs): no scan, so everything live counts as "live now"."""
        saved = self.info
        self.info = HeapProcess(self.pid, timeline=list(saved.timeline), peak_time=saved.peak_time,
                                peak_rss=saved.peak_rss)
        try:
            return self.finish(final=False)
        finally:
            self.info = saved

    def finish(self, final: bool = True) -> HeapProcess:
        info = self.info
        info.header = self.header()
        data_size, written = struct.unpack_from("<QQ", self.map, RING_DATA_SIZE_OFFSET)
        info.ring_bytes_used = ring_bytes_used(data_size, written, info.header["grow_at"], info.header["grow_size"])
        if self.consumer is None:
            return info
        self._observe(time.monotonic() - self.start, final=True)
        info.totals = dict(zip(TOTAL_NAMES, list(self._totals)))
        self._name_python_frames(time.monotonic())
        info.python_version = self.codes.interp.version if self.codes.interp else None
        info.python_codes = self.codes.entries
        info.stacks, info.stats = self._stacks(final)
        return info

    def close(self) -> None:
        if self.consumer is not None:
            self.lib.ctprof_heap_delete(self.consumer)
            self.consumer = None
        super().close()


def ring_worth_growing(wait_ns: int, growth: int, peak_rss: int) -> bool:
    """Should a process's ring grow by ``growth`` bytes (0: it cannot),
    having waited ``wait_ns`` for ring space, at ``peak_rss`` so far?"""
    return wait_ns > 0 and 0 < growth <= GROW_RSS_SHARE * peak_rss


def ring_bytes_used(data_size: int, written: int, grow_at: int, grow_size: int) -> int:
    """The ring's resident bytes: wherever it was ever written, its header
    page, then its first data_size bytes once it has gone round; once grown
    (from position grow_at), what follows them in the file too."""
    used = min(data_size, written)
    if grow_at and grow_size > data_size:
        used = min(grow_size, min(data_size, grow_at) + max(0, written - grow_at))
    return 4096 + (used + 4095) // 4096 * 4096


def read_peak_rss(pid: int) -> int:
    """VmHWM of a live process, in bytes (0 if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def root_ranges(pid: int, h: Dict[str, int], session_dir: str) -> List[Tuple[int, int, int]]:
    """(lo, hi, kind) ranges for the leak scan (kinds: collect.c).

    Roots are all the writable memory of the process, as valgrind scans it:
    data and bss of every module (ld.so's too: glibc's list of cached thread
    stacks), every thread stack whole, however many threads, cached stacks
    and the static TLS and descriptor they hold, the program's own mmaps --
    except the allocator's heap ([heap] and the thread arenas, whose free
    chunks hold stale pointers) and ctprof's own files.  The exiting
    thread's stack counts from its stack pointer up (the dead frames below
    are not roots); its static TLS blocks and thread descriptor are added
    explicitly, wherever the loader put them."""
    exit_sp = h.get("exit_sp", 0)
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    ranges: List[Tuple[int, int, int]] = []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 5 or not parts[1].startswith("rw"):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        path = parts[5].strip() if len(parts) > 5 else ""
        if path.startswith(("/dev/", session_dir + "/")):
            continue
        if path == "[heap]":
            ranges.append((lo, hi, RANGE_HEAP))
        elif os.path.basename(path).startswith("libc.so"):
            # glibc's data, where its malloc state points at chunk headers
            # (see next_chunk in collect.c): a root all the same
            ranges.append((lo, hi, RANGE_MALLOC_STATE))
        elif not path and lo % ARENA_ALIGN == 0:
            ranges.append((lo, hi, RANGE_ARENA_LIKE))
        else:
            ranges.append((exit_sp if lo <= exit_sp < hi else lo, hi, RANGE_ROOT))
    # ctprof's own memory in the program is not a root: the shim's set of
    # sampled addresses, its unwinder's rule cache
    for own_lo, own_hi in ((h.get("own_lo", 0), h.get("own_hi", 0)),
                           (h.get("own_cache_lo", 0), h.get("own_cache_hi", 0))):
        if own_hi > own_lo:
            ranges = [piece for lo, hi, kind in ranges
                      for piece in ((lo, min(hi, own_lo), kind), (max(lo, own_hi), hi, kind)) if piece[1] > piece[0]]
    if h.get("exit_tls_hi", 0) > h.get("exit_tls_lo", 0):
        ranges.append((h["exit_tls_lo"], h["exit_tls_hi"], RANGE_ROOT))
    if h.get("exit_fs"):
        ranges.append((h["exit_fs"], h["exit_fs"] + THREAD_DESCRIPTOR_BYTES, RANGE_ROOT))
    return ranges


def prepare_frame_reader() -> None:
    """Build the frame reader that names Python frames' code objects while
    the program runs: before the program starts (and before its clock
    does), not when its first Python process is found -- a short script
    would end meanwhile, and its code objects be gone.  (Cached after the
    first run; without it Python frames stay unnamed.)"""
    try:
        shim_path("pyreader")
    except (BuildError, OSError):
        pass


class HeapCollector:
    """Finds .heap rings in the session directory and follows them in a
    background thread until :meth:`stop` (the shim's C drainer drains them;
    this thread hands them to it, names Python frames, starts leak scans,
    and finishes processes that have exited).  A leak scan runs in a thread
    of its own, so the other processes' rings keep draining meanwhile (their
    writers never take a long scan for a stalled controller).

    What happens to processes that outlive the run (``sh -c 'worker &'``, a
    daemon): at :meth:`stop` each is detached -- its hooks see the flag at
    their next call and only forward from then on, at full speed; what it
    did until then is in the profile as still allocated, not as leaks."""

    def __init__(self, session_dir: str, shim: str, start: float) -> None:
        self.session_dir = session_dir
        self.lib = bind(shim)
        self.start = start
        self.rings: Dict[str, HeapRing] = {}
        self._stop = threading.Event()
        self._snapshot_wanted = threading.Event()
        self._snapshot_ready = threading.Event()
        self._snapshot: Dict[int, HeapProcess] = {}
        self._thread = threading.Thread(target=self._loop, name="ctprof-heap", daemon=True)
        self._scans: Dict[str, threading.Thread] = {}
        self._last_discover = -1.0
        self._finished: Dict[str, HeapProcess] = {}     # processes over before the run
        self._last_exit_check = -1.0

    def start_thread(self) -> None:
        # the drainer calls us as soon as a new process's ring appears
        self.lib.ctprof_heap_watch(os.fsencode(self.session_dir))
        self._thread.start()

    def _discover(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_discover < DISCOVER_STEP_S:
            return
        self._last_discover = now
        try:
            names = os.listdir(self.session_dir)
        except OSError:
            return
        for name in names:
            if name.endswith(".heap") and name not in self.rings and name not in self._finished:
                try:
                    self.rings[name] = HeapRing(self.lib, os.path.join(self.session_dir, name), self.start)
                except (OSError, ValueError):
                    continue

    def _scan(self, ring: HeapRing) -> None:
        try:
            ring.scan()
        except Exception as err:  # the target must never be left waiting
            ring.info.scan_error = f"the leak scan failed: {err}"
            ring.release_exit()

    def poll_once(self, final: bool = False) -> int:
        self._discover(force=final)
        moved = 0
        for name, ring in list(self.rings.items()):
            scanning = self._scans.get(name)
            if scanning is not None:
                if scanning.is_alive() and not final:
                    ring.heartbeat()
                    continue
                scanning.join()
                del self._scans[name]
            moved += ring.consume(drain=final)
            if ring.consumer is not None and ring.exit_waiting():
                if not final:                 # (a final poll has just drained it)
                    ring.consume(drain=True)
                if final:
                    self._scan(ring)
                else:
                    self._scans[name] = threading.Thread(target=self._scan, args=(ring,), name="ctprof-leak-scan",
                                                         daemon=True)
                    self._scans[name].start()
        return moved

    def _finish_exited(self) -> None:
        """Finish each process that has exited (after its leak scan, or
        killed) now, not when the run ends: its consumer's tables are freed
        at once (a build runs hundreds of processes one after another), and
        copying out its figures is off the wait after the program."""
        now = time.monotonic()
        if now - self._last_exit_check < EXIT_CHECK_S:
            return
        self._last_exit_check = now
        for name, ring in list(self.rings.items()):
            if ring.consumer is None or name in self._scans or not process_gone(ring.pid):
                continue
            ring.consume(drain=True)                 # whatever it wrote last
            self.lib.ctprof_heap_forget_live(ring.consumer)
            self._finished[name] = ring.finish()
            ring.detach()        # a process given the same pid later is not tracked into this file
            ring.close()
            del self.rings[name]

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._snapshot_wanted.is_set():
                self._snapshot_wanted.clear()
                self.poll_once()
                snapshot = {info.pid: info.copy() for info in self._finished.values()}
                snapshot.update({r.pid: r.snapshot() for n, r in self.rings.items()
                                 if r.consumer is not None and n not in self._scans})
                self._snapshot = snapshot
                self._snapshot_ready.set()
            moved = self.poll_once()
            self._finish_exited()
            if not moved:
                self._idle()

    def _idle(self) -> None:
        """Wait for the next look.  While the drainer thread drains every
        ring, Python only follows the figures, discovers new processes, and
        answers the drainer's calls (a process waiting at its exit, code
        objects to read): it sleeps until called, or LOOK_STEP_S.  A ring
        Python drains itself is looked at every millisecond."""
        if all(r.drained_in_c for r in self.rings.values()):
            if self.lib.ctprof_heap_wait_attention(int(LOOK_STEP_S * 1000)):
                self._last_discover = -1.0        # (a new ring, maybe: look now)
        else:
            time.sleep(0.001)

    def stacks_so_far(self) -> List[Tuple[int, FlatStacks, int, Optional[PythonCodes]]]:
        """(pid, its stacks, how many of them are complete, the code objects
        their Python frames name so far) of every process seen, for a caller
        on another thread while the program runs (the complete ones never
        change; code objects are only added)."""
        out = [(info.pid, info.stacks, len(info.stacks),
                (info.python_version, info.python_codes) if info.python_version is not None else None)
               for info in list(self._finished.values())]
        finished = {pid for pid, *_ in out}
        for ring in list(self.rings.values()):
            if ring.pid in finished:              # (finished a moment ago: its stacks are there)
                continue
            out.append((ring.pid, *ring.stacks_so_far()))
        return out

    def snapshot(self, timeout: float = 30.0) -> Dict[int, HeapProcess]:
        """The heap state of every process now, taken by the draining thread
        (the only Python thread that reads the consumers while it runs)."""
        self._snapshot_ready.clear()
        self._snapshot_wanted.set()
        self.lib.ctprof_heap_raise_attention()
        self._snapshot_ready.wait(timeout)
        return self._snapshot

    def stop(self) -> Dict[int, HeapProcess]:
        self._stop.set()
        self.lib.ctprof_heap_raise_attention()
        if self._thread.is_alive():
            self._thread.join()
        self.lib.ctprof_heap_drain_stop()
        self.poll_once(final=True)
        out: Dict[int, HeapProcess] = {info.pid: info for info in self._finished.values()}
        self._finished = {}
        for ring in self.rings.values():  # one .heap file per pid
            if ring.consumer is not None:
                self.lib.ctprof_heap_forget_live(ring.consumer)   # done with: free it before the stacks come over
            info = ring.finish() if ring.consumer is not None else None
            if process_running(ring.pid):
                ring.detach()
                if info is not None:
                    info.header["detached"] = info.header.get("detached") or DETACH_RUN_ENDED
            if info is not None:
                out[ring.pid] = info
            ring.close()
        return out


def process_gone(pid: int) -> bool:
    """Has ``pid`` certainly ended (no such process, or a zombie)?  A
    process whose state cannot be read counts as running."""
    state = process_state(pid)
    return state in ("Z", "X") or (state is None and not os.path.exists(f"/proc/{pid}"))
