"""Read the shared ring files the shim writes (layout: shim/ctprof.h).

The controller maps each ``<pid>.ring`` file and calls the shim's
``ctprof_ring_drain`` through ctypes: one call copies many committed records
into one buffer (and frees their space for the writers), which is then
decoded here with ``struct`` and ``memoryview.cast``.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..session import RawStack
from .pystacks import CodeReader, code_addresses, split_python

MAGIC = 0x46525443
RING_VERSION = 1
HEADER_SIZE = 4096
HEADER = struct.Struct("<IIIIQQQQQQQQIIIIIIII1024s")
HEADER_FIELDS = ("magic", "version", "pid", "ppid", "data_size", "write_pos", "read_pos",
                 "samples", "dropped", "handler_ns", "start_ns", "end_ns",
                 "maps_gen", "timer_kind", "notes", "signo", "hz", "max_depth", "pad",
                 "maps_next", "exe")
REC_HEADER = struct.Struct("<IHH")
REC_SAMPLE = 1
REC_THREAD = 2
SAMPLE_TRUNCATED = 1
SAMPLE_BODY = struct.Struct("<IIIIQQ")       # tid, nips, gen, pad, time_ns, cpu_ns
THREAD_BODY = struct.Struct("<IIQ16s")        # tid, pad, cpu_ns, name
THREAD_EXIT = 1
PENDING_DECODE_BYTES = 32 << 20

TIMER_NAMES = {0: "none", 1: "perf_event task-clock", 2: "timer_create thread CPU clock", 3: "ITIMER_PROF"}
NOTES = {
    1: "the program installed its own SIGPROF handler",
    2: "the program armed its own ITIMER_PROF timer",
    4: "the program installed a handler for ctprof's sampling signal; ctprof kept its handler and forwards other signals to the program's",
    8: "perf_event_open was refused (see /proc/sys/kernel/perf_event_paranoid), so the signal sampler took no "
       "samples; it does not fall back to a tick-driven timer on its own, since those count kernel time and "
       "interrupt the program's system calls",
    16: "no sampling timer could be armed",
    32: "a tick-driven timer was forced (timer_create / ITIMER_PROF): it counts kernel time, so the program's "
        "system calls may fail with EINTR or return short",
}


@dataclass
class ThreadStats:
    samples: int = 0
    cpu_ns: int = 0          # last known CPU time of the thread
    name: str = ""


@dataclass
class ProcessCapture:
    """Everything decoded so far from one process's ring."""

    stacks: Dict[Tuple[int, int, Tuple[int, ...], bool], int] = field(default_factory=dict)
    threads: Dict[int, ThreadStats] = field(default_factory=dict)
    #: stacks first seen since the last look (kept only when ``track_new``:
    #: a CPython process, whose code objects must be named while it runs)
    new_keys: List[tuple] = field(default_factory=list)
    track_new: bool = False


class MappedFile:
    """A shared file mapped read-write, with the address C code needs.
    (Never follows a symlink: the session directory is private anyway.)"""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.map = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._anchor = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(self._anchor)

    def close(self) -> None:
        del self._anchor
        self.map.close()


class RingFile(MappedFile):
    """One mapped ring file and the records drained from it."""

    def __init__(self, path: str, drain_fn) -> None:
        super().__init__(path)
        self._drain = drain_fn
        self._pending: List[bytes] = []
        self._pending_bytes = 0
        self.capture = ProcessCapture()
        self.codes: Optional[CodeReader] = None

    def header(self) -> Dict[str, object]:
        values = HEADER.unpack_from(self.map, 0)
        data = dict(zip(HEADER_FIELDS, values))
        data["exe"] = data["exe"].split(b"\0", 1)[0].decode("utf-8", "replace")
        return data

    def ready(self) -> bool:
        return struct.unpack_from("<I", self.map, 0)[0] == MAGIC

    def maps_written(self) -> int:
        """The newest maps generation whose snapshot file is complete (the
        header's maps_written, after ``exe``)."""
        return struct.unpack_from("<I", self.map, HEADER.size + 4)[0]

    def drain(self, buffer: bytearray, buffer_address: int, decode: bool = False) -> int:
        """Move every committed record out of the ring (freeing its space);
        returns the number of bytes read.  Records are only copied while the
        program runs (the controller stays light on a machine whose other
        core may share the program's), and decoded in bulk when ``decode``
        is set or a lot has piled up."""
        total = 0
        while True:
            n = self._drain(self.address, buffer_address, len(buffer))
            if not n:
                break
            self._pending.append(bytes(memoryview(buffer)[:n]))
            self._pending_bytes += n
            total += n
        python = self._runs_python()
        if decode or python or self._pending_bytes > PENDING_DECODE_BYTES:
            self.decode_pending()
        if python:
            self._name_code_objects()
        return total

    def _runs_python(self) -> bool:
        """Is this a CPython process whose samples carry Python frames?
        (Then records are decoded at once, to name their code objects while
        the process lives.)"""
        if self.codes is None:
            self.codes = CodeReader(int(self.header()["pid"]))
        found = self.codes.found(time.monotonic())
        self.capture.track_new = found
        return found

    def _name_code_objects(self) -> None:
        addresses = set()
        for key in self.capture.new_keys:
            addresses.update(code_addresses(key[2]))
        self.capture.new_keys.clear()
        self.codes.learn(addresses)

    def python_doc(self) -> Dict[str, object]:
        """:attr:`ProcessInfo.python` for this process ({} if not CPython)."""
        return self.codes.table_doc() if self.codes is not None else {}

    def decode_pending(self) -> None:
        for chunk in self._pending:
            decode_records(memoryview(chunk), self.capture)
        self._pending.clear()
        self._pending_bytes = 0

    def raw_stacks(self, pid: int) -> List[RawStack]:
        """Every unique stack sampled so far, with its count (Python frames
        split off the return addresses, their code objects as table indexes)."""
        codes = self.codes
        if codes is None or codes.interp is None:
            return raw_stacks(pid, self.capture.stacks)
        out = []
        for (tid, gen, words, truncated), count in self.capture.stacks.items():
            ips, py = split_python(words, codes.code_id)
            out.append(RawStack(pid, tid, gen, ips, truncated, {"samples": count}, py))
        return out


def raw_stacks(pid: int, counts: Dict[tuple, int]) -> List[RawStack]:
    """Sample counts keyed by (tid, maps generation, ips, truncated[, Python
    frames]) as the session's raw stacks (shared by run, attach and
    self-profiling)."""
    return [RawStack(pid, key[0], key[1], key[2], key[3], {"samples": count}, key[4] if len(key) > 4 else ())
            for key, count in counts.items()]


def decode_records(buf: memoryview, cap: ProcessCapture) -> None:
    """Fold a buffer of records into ``cap`` (stacks counted, threads noted)."""
    off = 0
    end = len(buf)
    stacks = cap.stacks
    threads = cap.threads
    while off + 8 <= end:
        size, rtype, flags = REC_HEADER.unpack_from(buf, off)
        if size < 8 or off + size > end:
            break
        if rtype == REC_SAMPLE:
            tid, nips, gen, _pad, _time_ns, cpu_ns = SAMPLE_BODY.unpack_from(buf, off + 8)
            start = off + 8 + SAMPLE_BODY.size
            ips = tuple(buf[start:start + 8 * nips].cast("Q"))
            key = (tid, gen, ips, bool(flags & SAMPLE_TRUNCATED))
            seen = stacks.get(key)
            if seen is None and cap.track_new:
                cap.new_keys.append(key)
            stacks[key] = (seen or 0) + 1
            t = threads.get(tid)
            if t is None:
                t = threads[tid] = ThreadStats()
            t.samples += 1
            if cpu_ns > t.cpu_ns:
                t.cpu_ns = cpu_ns
        elif rtype == REC_THREAD:
            tid, _pad, cpu_ns, name = THREAD_BODY.unpack_from(buf, off + 8)
            t = threads.get(tid)
            if t is None:
                t = threads[tid] = ThreadStats()
            t.name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
            if cpu_ns > t.cpu_ns:
                t.cpu_ns = cpu_ns
        off += size


def load_drain(shim: str):
    """The ``ctprof_ring_drain`` function of the compiled shim."""
    lib = ctypes.CDLL(shim)
    fn = lib.ctprof_ring_drain
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    fn.restype = ctypes.c_size_t
    return fn


def buffer_address(buffer: bytearray) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
