"""Drain the ``.heap`` rings of a run (layout: shim/ctprof.h) into the
controller-side consumers in shim/collect.c, and run the leak scan when a
process reaches its exit.

A background thread does the draining: the C consumer runs without the GIL,
the program's allocations wait on it only when its ring is full.
"""
from __future__ import annotations

import ctypes
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from ..capture.ring import MappedFile

HEAP_SHARED_OFFSET = 2048
HEAP_MAGIC = 0x50414548
HEAP_HEADER = struct.Struct("<IIQIIQQQQQQQQQQ")
HEAP_FIELDS = ("magic", "depth", "sample_bytes", "exit_state", "nthreads", "exit_sp", "exit_fs", "exit_tid",
               "heartbeat_ns", "lost", "wait_ns", "hook_calls", "timed_calls", "timed_ns", "sampled_free_overflow")
EXIT_STATE_OFFSET = HEAP_SHARED_OFFSET + 16
HEARTBEAT_OFFSET = HEAP_SHARED_OFFSET + 48
STACKS_OFFSET = HEAP_SHARED_OFFSET + HEAP_HEADER.size
MAX_THREADS = 60
UNWIND_CACHE_OFFSET = STACKS_OFFSET + 24 * MAX_THREADS
EXIT_WAITING, EXIT_SCANNED = 1, 2
RING_DATA_SIZE_OFFSET = 16

NSTAT = 16
STAT_NAMES = ("alloc_count", "alloc_bytes", "free_count", "free_bytes", "live_count", "live_bytes",
              "peak_count", "peak_bytes", "definite_count", "definite_bytes", "indirect_count",
              "indirect_bytes", "reachable_count", "reachable_bytes", "truncated")
NTOTAL = 16
TOTAL_NAMES = ("live_bytes", "live_count", "peak_bytes", "peak_count", "alloc_count", "alloc_bytes",
               "free_count", "free_bytes", "unmatched_frees", "events", "stacks", "scanned", "snapshots",
               "max_live_blocks")
TIMELINE_MAX_POINTS = 20000
TIMELINE_STEP_S = 0.005
RSS_STEP_S = 0.05
DISCOVER_STEP_S = 0.02


def bind(shim: str):
    """ctypes bindings of the consumer functions in the compiled shim."""
    lib = ctypes.CDLL(shim)
    vp, u64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)
    lib.ctprof_heap_new.argtypes = [ctypes.c_double]
    lib.ctprof_heap_new.restype = vp
    lib.ctprof_heap_delete.argtypes = [vp]
    lib.ctprof_heap_consume.argtypes = [vp, vp, vp, ctypes.c_size_t]
    lib.ctprof_heap_consume.restype = ctypes.c_size_t
    lib.ctprof_heap_totals.argtypes = [vp, ctypes.POINTER(ctypes.c_double)]
    lib.ctprof_heap_nstacks.argtypes = [vp]
    lib.ctprof_heap_nstacks.restype = ctypes.c_uint32
    lib.ctprof_heap_stack.argtypes = [vp, ctypes.c_uint32, u64p, ctypes.c_int, ctypes.POINTER(ctypes.c_double)]
    lib.ctprof_heap_stack.restype = ctypes.c_int
    lib.ctprof_heap_scan.argtypes = [vp, ctypes.c_int, u64p, ctypes.c_int, u64p]
    lib.ctprof_heap_scan.restype = ctypes.c_int
    return lib


@dataclass
class HeapProcess:
    """The heap side of one process, as the controller saw it."""

    pid: int
    totals: Dict[str, float] = field(default_factory=dict)
    header: Dict[str, int] = field(default_factory=dict)
    stacks: List[Tuple[Tuple[int, ...], Dict[str, float]]] = field(default_factory=list)
    timeline: List[Tuple[float, float]] = field(default_factory=list)  # (seconds since start, live bytes)
    peak_time: float = 0.0
    scanned: bool = False
    scan_error: str = ""
    peak_rss: int = 0
    ring_bytes_used: int = 0


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

    def ready(self) -> bool:
        return struct.unpack_from("<I", self.map, HEAP_SHARED_OFFSET)[0] == HEAP_MAGIC

    def header(self) -> Dict[str, int]:
        h = dict(zip(HEAP_FIELDS, HEAP_HEADER.unpack_from(self.map, HEAP_SHARED_OFFSET)))
        h["unwind_cache_bytes"] = struct.unpack_from("<Q", self.map, UNWIND_CACHE_OFFSET)[0]
        return h

    def ensure_consumer(self) -> bool:
        if self.consumer is None and self.ready():
            self.consumer = self.lib.ctprof_heap_new(float(self.header()["sample_bytes"]))
        return self.consumer is not None

    def heartbeat(self) -> None:
        struct.pack_into("<Q", self.map, HEARTBEAT_OFFSET, time.monotonic_ns())

    def consume(self, buf_address: int, cap: int) -> int:
        if not self.ensure_consumer():
            return 0
        self.heartbeat()
        n = self.lib.ctprof_heap_consume(self.consumer, self.address, buf_address, cap)
        self._observe(time.monotonic() - self.start)
        return n

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
        self._last_point = now

    def exit_waiting(self) -> bool:
        return struct.unpack_from("<I", self.map, EXIT_STATE_OFFSET)[0] == EXIT_WAITING

    def scan(self) -> None:
        """Classify live blocks while the process waits in its exit hook."""
        h = self.header()
        ranges = root_ranges(self.pid, h, self.thread_stacks(), os.path.dirname(self.path))
        arr = (ctypes.c_uint64 * (2 * len(ranges) + 1))()
        for i, (lo, hi) in enumerate(ranges):
            arr[2 * i], arr[2 * i + 1] = lo, hi
        beat = ctypes.c_uint64.from_buffer(self.map, HEARTBEAT_OFFSET)
        rc = self.lib.ctprof_heap_scan(self.consumer, self.pid, arr, len(ranges), ctypes.pointer(beat))
        del beat
        self.info.scanned = rc == 0
        if rc != 0:
            self.info.scan_error = "could not read the program's memory for the leak scan"
        struct.pack_into("<I", self.map, EXIT_STATE_OFFSET, EXIT_SCANNED)

    def thread_stacks(self) -> List[Tuple[int, int, int]]:
        out = []
        for i in range(MAX_THREADS):
            tid, lo, hi = struct.unpack_from("<QQQ", self.map, STACKS_OFFSET + 24 * i)
            if tid and hi > lo:
                out.append((tid, lo, hi))
        return out

    def snapshot(self) -> HeapProcess:
        """A copy of what is known now (for a snapshot while the program
        runs): no scan, so everything live counts as "live now"."""
        saved = self.info
        self.info = HeapProcess(self.pid, timeline=list(saved.timeline), peak_time=saved.peak_time,
                                peak_rss=saved.peak_rss)
        try:
            return self.finish()
        finally:
            self.info = saved

    def finish(self) -> HeapProcess:
        info = self.info
        info.header = self.header()
        data_size, write_pos = struct.unpack_from("<QQ", self.map, RING_DATA_SIZE_OFFSET)
        info.ring_bytes_used = min(data_size, write_pos) + 4096
        if self.consumer is None:
            return info
        self._observe(time.monotonic() - self.start, final=True)
        info.totals = dict(zip(TOTAL_NAMES, list(self._totals)))
        n = self.lib.ctprof_heap_nstacks(self.consumer)
        depth = max(1, info.header.get("depth") or 32)
        ips = (ctypes.c_uint64 * depth)()
        stats = (ctypes.c_double * NSTAT)()
        for sid in range(n):
            d = self.lib.ctprof_heap_stack(self.consumer, sid, ips, depth, stats)
            if d < 0:
                continue
            info.stacks.append((tuple(ips[:d]), dict(zip(STAT_NAMES, list(stats)))))
        return info

    def close(self) -> None:
        if self.consumer is not None:
            self.lib.ctprof_heap_delete(self.consumer)
            self.consumer = None
        super().close()


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


def root_ranges(pid: int, h: Dict[str, int], stacks: List[Tuple[int, int, int]], session_dir: str) -> List[Tuple[int, int]]:
    """Where pointers that keep blocks alive can live: every module's data
    and bss, the thread stacks (the exiting thread's from its stack pointer
    up: the dead frames below it are not roots), and the mapping holding
    the exiting thread's TLS."""
    ranges: List[Tuple[int, int]] = []
    exit_sp, exit_fs = h.get("exit_sp", 0), h.get("exit_fs", 0)
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return ranges
    prev_file, prev_end = "", 0
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        perms = parts[1]
        path = parts[5].strip() if len(parts) > 5 else ""
        if path == "[stack]":
            start = exit_sp if lo <= exit_sp < hi else lo
            ranges.append((start, hi))
        elif lo <= exit_fs < hi and not path.startswith("["):
            ranges.append((lo, hi))
        elif perms.startswith("rw"):
            is_file = path.startswith("/") and not path.startswith(("/dev/", session_dir)) and "(deleted)" not in path
            bss = not path and prev_file and prev_end == lo
            if is_file or bss:
                ranges.append((lo, hi))
        prev_file = path if path.startswith("/") else ""
        prev_end = hi
    for tid, lo, hi in stacks:
        if tid == h.get("exit_tid") and lo <= exit_sp < hi:
            lo = exit_sp
        ranges.append((lo, hi))
    return ranges


class HeapCollector:
    """Finds .heap rings in the session directory and drains them in a
    background thread until :meth:`stop`."""

    def __init__(self, session_dir: str, shim: str, start: float) -> None:
        self.session_dir = session_dir
        self.lib = bind(shim)
        self.start = start
        self.rings: Dict[str, HeapRing] = {}
        self.buffer = bytearray(4 << 20)
        self.buffer_address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        self._stop = threading.Event()
        self._snapshot_wanted = threading.Event()
        self._snapshot_ready = threading.Event()
        self._snapshot: Dict[int, HeapProcess] = {}
        self._thread = threading.Thread(target=self._loop, name="ctprof-heap", daemon=True)
        self._last_discover = -1.0

    def start_thread(self) -> None:
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
            if name.endswith(".heap") and name not in self.rings:
                try:
                    self.rings[name] = HeapRing(self.lib, os.path.join(self.session_dir, name), self.start)
                except (OSError, ValueError):
                    continue

    def poll_once(self, final: bool = False) -> int:
        self._discover(force=final)
        moved = 0
        for ring in list(self.rings.values()):
            moved += ring.consume(self.buffer_address, len(self.buffer))
            if ring.consumer is not None and ring.exit_waiting():
                ring.consume(self.buffer_address, len(self.buffer))
                try:
                    ring.scan()
                except Exception as err:  # the target must never be left waiting
                    ring.info.scan_error = f"the leak scan failed: {err}"
                    struct.pack_into("<I", ring.map, EXIT_STATE_OFFSET, EXIT_SCANNED)
        return moved

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._snapshot_wanted.is_set():
                self._snapshot_wanted.clear()
                self.poll_once()
                self._snapshot = {r.pid: r.snapshot() for r in self.rings.values() if r.consumer is not None}
                self._snapshot_ready.set()
            if not self.poll_once():
                time.sleep(0.001)

    def snapshot(self, timeout: float = 30.0) -> Dict[int, HeapProcess]:
        """The heap state of every process now, taken by the draining thread
        (the only one that touches the consumers)."""
        self._snapshot_ready.clear()
        self._snapshot_wanted.set()
        self._snapshot_ready.wait(timeout)
        return self._snapshot

    def stop(self) -> Dict[int, HeapProcess]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.poll_once(final=True)
        out: Dict[int, HeapProcess] = {}
        for ring in self.rings.values():  # one .heap file per pid
            if ring.consumer is not None:
                out[ring.pid] = ring.finish()
            ring.close()
        return out
