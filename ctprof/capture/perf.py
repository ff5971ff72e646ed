"""perf_event_open from Python: sampling events and their ring buffers.

Used by the kernel sampler (``ctprof run`` and ``ctprof attach``): software
``task-clock`` events that sample the user registers and a copy of the top
of the user stack (``PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER``) every
``1/hz`` seconds of a thread's CPU time, inherited by the threads and
processes it starts.  The kernel writes samples and side-band records
(mmap, comm, fork, exit) into ring buffers we ``mmap``; nothing runs inside
the target, so closing the events leaves it exactly as it was.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from typing import Iterator, List, Optional, Tuple

SYS_perf_event_open = 298          # x86-64
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_TASK_CLOCK = 1
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_TIME = 1 << 2
PERF_SAMPLE_REGS_USER = 1 << 12
PERF_SAMPLE_STACK_USER = 1 << 13
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_RECORD_MMAP = 1
PERF_RECORD_LOST = 2
PERF_RECORD_COMM = 3
PERF_RECORD_EXIT = 4
PERF_RECORD_FORK = 7
PERF_RECORD_READ = 8
PERF_RECORD_SAMPLE = 9
PERF_RECORD_MMAP2 = 10
PERF_RECORD_SWITCH = 14
PERF_RECORD_MISC_COMM_EXEC = 1 << 13
PERF_RECORD_MISC_SWITCH_OUT = 1 << 13
PERF_RECORD_MISC_SWITCH_OUT_PREEMPT = 1 << 14
PERF_SAMPLE_REGS_ABI_NONE = 0
PERF_COUNT_SW_CONTEXT_SWITCHES = 3
PERF_EVENT_IOC_SET_OUTPUT = 0x2405
CLOCK_MONOTONIC = 1

# attr flag bits (struct perf_event_attr's bit field, in order)
_DISABLED, _INHERIT = 1 << 0, 1 << 1
_EXCLUDE_KERNEL, _EXCLUDE_HV = 1 << 5, 1 << 6
_MMAP, _COMM, _INHERIT_STAT, _ENABLE_ON_EXEC, _TASK = 1 << 8, 1 << 9, 1 << 11, 1 << 12, 1 << 13
_SAMPLE_ID_ALL, _MMAP2, _COMM_EXEC, _USE_CLOCKID, _CONTEXT_SWITCH = 1 << 18, 1 << 23, 1 << 24, 1 << 25, 1 << 26

#: perf register indexes (arch/x86/include/uapi/asm/perf_regs.h) -> DWARF
#: register numbers.  Sampled: the general registers and rip.
PERF_TO_DWARF = {0: 0, 1: 3, 2: 2, 3: 1, 4: 4, 5: 5, 6: 6, 7: 7, 8: 16,
                 16: 8, 17: 9, 18: 10, 19: 11, 20: 12, 21: 13, 22: 14, 23: 15}
REGS_MASK = sum(1 << i for i in PERF_TO_DWARF)
_REG_ORDER = [PERF_TO_DWARF[i] for i in sorted(PERF_TO_DWARF)]
_NREGS = len(_REG_ORDER)

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64), ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64), ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16), ("reserved_2", ctypes.c_uint16),
    ]


assert ctypes.sizeof(PerfEventAttr) == 112  # PERF_ATTR_SIZE_VER5


def open_event(attr: "PerfEventAttr", pid: int, cpu: int) -> int:
    """perf_event_open(attr, pid, cpu); the fd, or OSError with the kernel's errno."""
    fd = _syscall(SYS_perf_event_open, ctypes.byref(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def ioctl(fd: int, request: int, arg: int = 0) -> None:
    if _libc.ioctl(fd, request, ctypes.c_ulong(arg)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def online_cpus() -> List[int]:
    """The CPUs a per-CPU event must be opened on (``/sys/.../cpu/online``)."""
    text = read_sysctl("/sys/devices/system/cpu/online") or ""
    cpus: List[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if lo.strip().isdigit():
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus or list(range(os.cpu_count() or 1))


class Sample:
    __slots__ = ("pid", "tid", "time", "regs", "stack", "stack_base")

    def __init__(self, pid, tid, time, regs, stack, stack_base) -> None:
        self.pid = pid
        self.tid = tid
        self.time = time
        self.regs = regs            # DWARF register number -> value
        self.stack = stack          # bytes copied from stack_base (= rsp)
        self.stack_base = stack_base


_HDR = struct.Struct("<IHH")
_TIDTIME = struct.Struct("<IIQ")
_REGS = struct.Struct("<Q" + "Q" * _NREGS)
_U64 = struct.Struct("<Q")
_PAGE = mmap.PAGESIZE


class EventRing:
    """An event's mmap'ed ring buffer (other events of its CPU may write
    into it too: ``PERF_EVENT_IOC_SET_OUTPUT``)."""

    def __init__(self, fd: int, pages: int) -> None:
        self.fd = fd
        self.map = mmap.mmap(fd, (pages + 1) * _PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.data_size = pages * _PAGE

    def chunk(self, limit: Optional[int] = None) -> bytes:
        """Every byte the kernel wrote since the last call (up to position
        ``limit``), as one copy (the space is handed back to the kernel
        before decoding)."""
        m = self.map
        head = _U64.unpack_from(m, 1024)[0]           # data_head
        tail = _U64.unpack_from(m, 1032)[0]           # data_tail
        if limit is not None:
            head = max(tail, min(head, limit))
        if head == tail:
            return b""
        size = self.data_size
        start = tail % size
        avail = head - tail
        if start + avail <= size:
            data = m[_PAGE + start:_PAGE + start + avail]
        else:
            first = size - start
            data = m[_PAGE + start:_PAGE + size] + m[_PAGE:_PAGE + avail - first]
        _U64.pack_into(m, 1032, head)
        return data

    def close(self) -> None:
        try:
            self.map.close()
        except (BufferError, ValueError):
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


def records(chunk: bytes) -> Iterator[Tuple[int, int, int, int]]:
    """(type, misc, offset, size) of each whole record in ``chunk``."""
    off = 0
    n = len(chunk)
    while off + 8 <= n:
        rtype, misc, rsize = _HDR.unpack_from(chunk, off)
        if rsize < 8 or off + rsize > n:
            break
        yield rtype, misc, off, rsize
        off += rsize


def decode_sample(buf: bytes, off: int) -> Optional[Sample]:
    pid, tid, time = _TIDTIME.unpack_from(buf, off)
    off += _TIDTIME.size
    abi = _U64.unpack_from(buf, off)[0]
    if abi == PERF_SAMPLE_REGS_ABI_NONE:
        return None                                      # no user context (kernel thread)
    values = _REGS.unpack_from(buf, off)
    regs = dict(zip(_REG_ORDER, values[1:]))
    off += _REGS.size
    size = _U64.unpack_from(buf, off)[0]
    off += 8
    stack = memoryview(b"")
    if size:
        dyn = _U64.unpack_from(buf, off + size)[0]
        stack = memoryview(buf)[off:off + min(dyn, size)]  # a view: no second copy of up to 32 KiB
    return Sample(pid, tid, time, regs, stack, regs[7])


def map_ring(fd: int, pages: int) -> EventRing:
    """mmap the ring of ``fd``, halving ``pages`` while the locked-memory
    limit refuses (perf_event_mlock_kb, then RLIMIT_MEMLOCK)."""
    while True:
        try:
            return EventRing(fd, pages)
        except OSError as err:
            if err.errno in (errno.EPERM, errno.ENOMEM) and pages > 8:
                pages //= 2
                continue
            raise


def thread_ids(pid: int) -> List[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit())
    except OSError:
        return []


def read_sysctl(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None
