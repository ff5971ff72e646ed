"""The kernel sampler: sample a process tree from outside, with perf events.

Used by ``ctprof run`` (``--sampler kernel``, the default) and ``ctprof
attach``.  On every CPU one software ``task-clock`` event follows the
target: every ``1/hz`` seconds of a thread's CPU time the kernel copies the
user registers and the top of the user stack into a ring buffer that this
controller maps.  The events are *inherited*, so the kernel does the same
for every thread and process the target starts, however short-lived (fork
children, exec'd images, daemons), exactly as ``perf record`` follows a
command.  Side-band records in the same rings say what each process mapped
(``MMAP2``), how it is named (``COMM``, also after ``exec``), when it
started and ended (``FORK``, ``EXIT``), and at each thread's exit how much
CPU it used (``READ``, ``inherit_stat``).  The records are put in time order
(one clock for every CPU: ``CLOCK_MONOTONIC``) and each sample is unwound
(:mod:`ctprof.unwinder`, from ``.eh_frame``) against its process's
mappings as they were at that moment.

Why from outside: nothing of ours runs in the program.  No signal of ours
can reach its code, its system calls or an image it execs; no descriptor,
thread or memory of ours is in it or counts against its limits; the
unwinder reads only the copied bytes, so it can neither fault nor deadlock
the program (coroutine stacks, JIT code, a ``throw`` in flight).  The cost
to the program is the kernel's copy at each sample (``bench/bench_cpu.py``);
the unwinding runs in the controller.  The limit: the kernel copies at most
63 KiB of stack, so frames deeper than that end the chain (``--sampler
signal`` unwinds in the program and reaches any depth).
"""
from __future__ import annotations

import bisect
import ctypes
import errno
import os
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple

from ..files import process_running, process_uid, read_shared_file
from . import perf

# Opening the events (``run``: between the program's fork and exec) needs
# only perf; the maps, session, unwinder and Python frame modules are
# imported where the records are handled, once the program runs (``ctprof
# run`` starts it before importing them).
if TYPE_CHECKING:
    from ..session import ProcessInfo, RawStack
    from ..symbols.maps import MapTable, Mapping
    from ..unwinder import Unwinder
    from .pystacks import PythonStacks

TIMER_NAME = "perf_event task-clock (kernel sampler)"
#: Records newer than this when a drain starts wait for the next drain: a
#: record of another CPU stamped a moment earlier may still be in flight.
REORDER_NS = 2_000_000

_U32x2 = struct.Struct("<II")
_U32x4 = struct.Struct("<IIII")
_U64 = struct.Struct("<Q")
_MMAP2 = struct.Struct("<IIQQQIIQQII")      # pid tid addr len pgoff maj min ino ino_gen prot flags
_SAMPLE_ID = struct.Struct("<IIQ")           # the trailer of every other record: pid tid time
_PROT_READ, _PROT_WRITE, _PROT_EXEC, _MAP_SHARED = 1, 2, 4, 1
#: A sample of the switch event (our own tag: it shares nothing with perf's types).
_SWITCH_OUT_SAMPLE = -1


class KernelSamplerError(OSError):
    """perf_event_open or mmap refused (``errno`` says why)."""


@dataclass
class TraceOptions:
    """What the events sample.

    hz: samples per CPU-second of each thread.  stack_bytes: user stack
    copied per sample (at most 65528).  max_depth: frames kept per sample.
    ring_pages: data pages of each CPU's ring (halved while the locked
    memory limit refuses).  inherit: follow threads and processes the
    target starts.  enable_on_exec: start counting at the target's exec
    (``run``: the controller opens the events between fork and exec).
    off_cpu: also record every interval a thread spends off the CPU, with
    its user stack when it left (a context-switch event sampled at every
    switch-out, and the kernel's switch records for when it came back).
    python: read the Python frames of CPython processes at each sample
    (:mod:`.pystacks`)."""

    hz: float = 99.0
    stack_bytes: int = 32 * 1024
    max_depth: int = 128
    ring_pages: int = 1024
    inherit: bool = True
    enable_on_exec: bool = False
    off_cpu: bool = False
    python: bool = True


def _sampling_attr(opts: TraceOptions, exclude_kernel: bool, switches: bool = False) -> perf.PerfEventAttr:
    """The task-clock sampling event, or with ``switches`` the event sampled
    at every switch-out of a thread (its stack when it left the CPU) that
    also asks for the kernel's switch records (when it came back)."""
    a = perf.PerfEventAttr()
    a.type = perf.PERF_TYPE_SOFTWARE
    a.size = ctypes.sizeof(a)
    a.config = perf.PERF_COUNT_SW_CONTEXT_SWITCHES if switches else perf.PERF_COUNT_SW_TASK_CLOCK
    a.sample_period = 1 if switches else max(10000, int(1e9 / opts.hz))
    a.sample_type = (perf.PERF_SAMPLE_TID | perf.PERF_SAMPLE_TIME
                     | perf.PERF_SAMPLE_REGS_USER | perf.PERF_SAMPLE_STACK_USER)
    flags = (perf._EXCLUDE_HV | perf._MMAP | perf._COMM | perf._TASK | perf._SAMPLE_ID_ALL
             | perf._MMAP2 | perf._COMM_EXEC | perf._USE_CLOCKID)
    if opts.inherit:
        flags |= perf._INHERIT | perf._INHERIT_STAT
    if opts.enable_on_exec:
        flags |= perf._DISABLED | perf._ENABLE_ON_EXEC
    if exclude_kernel:
        flags |= perf._EXCLUDE_KERNEL
    if switches:
        # side-band (mmap, comm, task) comes once, with the task-clock event
        flags = (flags & ~(perf._MMAP | perf._COMM | perf._TASK | perf._MMAP2 | perf._COMM_EXEC
                           | perf._INHERIT_STAT)) | perf._CONTEXT_SWITCH
    a.flags = flags
    a.clockid = perf.CLOCK_MONOTONIC
    a.sample_regs_user = perf.REGS_MASK
    a.sample_stack_user = opts.stack_bytes
    return a


# -- one process as the records describe it ---------------------------------------

def _mapping_line(m: Mapping) -> str:
    # The kernel escapes a newline in a path as \\012 in /proc/PID/maps.
    path = m.path.replace("\n", "\\012") + (" (deleted)" if m.deleted else "")
    return f"{m.start:x}-{m.end:x} {m.perms} {m.offset:08x} {m.dev} {m.inode} {path}".rstrip()


@dataclass
class TracedProcess:
    """A process of the target tree: its mappings now, every maps generation
    a sample used, its threads and its samples."""

    pid: int
    ppid: int = 0
    comm: str = ""
    exe: str = ""
    mappings: List[Mapping] = field(default_factory=list)   # sorted, disjoint
    gens: List[str] = field(default_factory=list)
    table: Optional[MapTable] = None
    dirty: bool = True
    threads: Dict[int, str] = field(default_factory=dict)
    thread_samples: Dict[int, int] = field(default_factory=dict)
    thread_cpu_ns: Dict[int, int] = field(default_factory=dict)
    stacks: Dict[tuple, int] = field(default_factory=dict)
    off_cpu_us: Dict[tuple, int] = field(default_factory=dict)
    samples: int = 0
    start_ns: int = 0
    end_ns: int = 0
    exited: bool = False

    def add_mapping(self, m: Mapping) -> None:
        """A new mapping replaces whatever it overlaps, as mmap does."""
        keep: List[Mapping] = []
        for old in self.mappings:
            if old.end <= m.start or old.start >= m.end:
                keep.append(old)
                continue
            if old.start < m.start:
                keep.append(_slice(old, old.start, m.start))
            if old.end > m.end:
                keep.append(_slice(old, m.end, old.end))
        bisect.insort(keep, m, key=lambda x: x.start)
        self.mappings = keep
        self.dirty = True
        if not self.exe and m.executable and m.is_file:
            self.exe = m.path            # the kernel maps the program before its loader

    def new_image(self, comm: str) -> None:
        """``exec``: a new address space."""
        self.mappings = []
        self.dirty = True
        self.exe = ""
        self.comm = comm

    def current(self) -> Tuple[MapTable, int]:
        """The maps table for a sample now, and its generation number.  A
        generation is written only when a sample needs it, so a program that
        maps and unmaps thousands of times between two samples costs one."""
        if self.dirty or self.table is None:
            from ..symbols.maps import MapTable
            text = "\n".join(_mapping_line(m) for m in self.mappings) + "\n"
            if not self.gens or self.gens[-1] != text:
                self.gens.append(text)
            self.table = MapTable(text)
            self.dirty = False
        return self.table, len(self.gens) - 1


def _slice(m: Mapping, start: int, end: int) -> Mapping:
    from ..symbols.maps import Mapping
    return Mapping(start, end, m.perms, m.offset + (start - m.start), m.dev, m.inode, m.path, m.deleted)


def _cstring(buf: bytes, start: int, end: int) -> str:
    raw = buf[start:end]
    nul = raw.find(b"\0")
    return (raw[:nul] if nul >= 0 else raw).decode("utf-8", "surrogateescape")


# -- the sampler ---------------------------------------------------------------------

class KernelSampler:
    """Per-CPU inherited sampling events on a target, their rings, and the
    process tree rebuilt from their records."""

    def __init__(self, opts: TraceOptions, unwinder: Optional[Unwinder]) -> None:
        self.opts = opts
        self.cpus = perf.online_cpus()
        self.rings: Dict[int, perf.EventRing] = {}          # cpu -> ring
        self.switch_rings: Dict[int, perf.EventRing] = {}   # cpu -> ring of the switch event
        self.off_cpu = opts.off_cpu
        self.off_cpu_refused = ""                            # why off-CPU recording is off
        self.leaving: Dict[int, tuple] = {}                  # tid -> (pid, stack key, time) at switch-out
        self.preempted: Dict[int, bool] = {}                 # tid -> its last switch-out was a preemption
        self.period_us = max(10000, int(1e9 / opts.hz)) // 1000
        self.fds: List[Tuple[int, int]] = []                 # (cpu, fd) of every event we opened
        self.top_tids: Dict[int, int] = {}                   # fd -> tid it was opened on
        self.exclude_kernel = False
        self.procs: Dict[int, TracedProcess] = {}
        self.pending: List[tuple] = []
        self.lost = 0
        self.unwind_ns = 0
        self.unwinder: Optional[Unwinder] = None
        self.python: Optional[PythonStacks] = None
        if unwinder is not None:
            self.use_unwinder(unwinder)

    def use_unwinder(self, unwinder: Unwinder) -> None:
        """The samples' unwinder, and the Python frame reader that reads
        images through it; before the first drain.  ``run`` opens the
        events without them and gives them once the program runs, so that
        their modules load while it does (a reader made after rings were
        attached takes them all when it starts)."""
        from .pystacks import PythonStacks
        self.unwinder = unwinder
        self.python = PythonStacks(unwinder.image) if self.opts.python else None

    # -- events ----------------------------------------------------------------
    def probe(self) -> None:
        """Open and close one event on ourselves: decides whether kernel-mode
        time can be sampled, and raises KernelSamplerError if perf events are
        refused altogether, before any program runs."""
        fd = self._open(0, self.cpus[0])
        os.close(fd)

    def _open(self, pid: int, cpu: int) -> int:
        while True:
            try:
                return perf.open_event(_sampling_attr(self.opts, self.exclude_kernel), pid, cpu)
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EPERM) and not self.exclude_kernel:
                    # Unprivileged (perf_event_paranoid 2): user-mode samples only.
                    self.exclude_kernel = True
                    continue
                raise KernelSamplerError(err.errno, err.strerror) from None

    def follow(self, tid: int) -> None:
        """Open the events of thread ``tid`` on every CPU; their records go
        to that CPU's rings."""
        opened: List[Tuple[int, int]] = []
        try:
            for cpu in self.cpus:
                fd = self._open(tid, cpu)
                opened.append((cpu, fd))
                self._attach_ring(self.rings, cpu, fd)
        except OSError as err:
            self._close_opened(opened)
            if isinstance(err, KernelSamplerError):
                raise
            raise KernelSamplerError(err.errno, err.strerror) from None
        for cpu, fd in opened:
            self.fds.append((cpu, fd))
            self.top_tids[fd] = tid
        if self.off_cpu:
            self._follow_switches(tid)

    def _follow_switches(self, tid: int) -> None:
        """The off-CPU events of ``tid``.  Their samples are taken in the
        kernel (at the switch), so a user-mode-only (unprivileged) event
        gets none: then off-CPU recording is off, and says why."""
        if self.exclude_kernel:
            self._refuse_off_cpu()
            return
        opened: List[Tuple[int, int]] = []
        try:
            for cpu in self.cpus:
                fd = perf.open_event(_sampling_attr(self.opts, False, switches=True), tid, cpu)
                opened.append((cpu, fd))
                self._attach_ring(self.switch_rings, cpu, fd)
        except OSError as err:
            self._close_opened(opened)
            if err.errno in (errno.EACCES, errno.EPERM):
                self._refuse_off_cpu()
                return
            raise KernelSamplerError(err.errno, err.strerror) from None
        self.fds.extend(opened)

    def _refuse_off_cpu(self) -> None:
        self.off_cpu = False
        level = perf.read_sysctl("/proc/sys/kernel/perf_event_paranoid")
        self.off_cpu_refused = (f"--off-cpu needs kernel-mode samples, which kernel.perf_event_paranoid={level} "
                                f"refuses to unprivileged users: run 'sysctl -w kernel.perf_event_paranoid=1' "
                                f"as root (or give ctprof CAP_PERFMON); this profile has on-CPU samples only")

    def _attach_ring(self, rings: Dict[int, perf.EventRing], cpu: int, fd: int) -> None:
        ring = rings.get(cpu)
        if ring is None:
            ring = rings[cpu] = self._map(fd)
            if self.python is not None and rings is self.rings:
                self.python.add_ring(ring)
        else:
            perf.ioctl(fd, perf.PERF_EVENT_IOC_SET_OUTPUT, ring.fd)

    def _close_opened(self, opened: List[Tuple[int, int]]) -> None:
        ring_fds = {r.fd: (rings, cpu) for rings in (self.rings, self.switch_rings) for cpu, r in rings.items()}
        for _cpu, fd in opened:
            if fd in ring_fds:
                rings, cpu = ring_fds[fd]
                rings.pop(cpu).close()
            else:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _map(self, fd: int) -> perf.EventRing:
        try:
            return perf.map_ring(fd, self.opts.ring_pages)
        except OSError as err:                 # the caller closes fd
            raise KernelSamplerError(err.errno, f"cannot map the perf ring buffer: {err.strerror} "
                                                f"(locked-memory limit: kernel.perf_event_mlock_kb, ulimit -l)") from None

    def top_counts(self) -> Dict[int, int]:
        """Task-clock ns counted by our own events per thread they were
        opened on (children's counts included, as the kernel sums them)."""
        out: Dict[int, int] = {}
        for fd, tid in self.top_tids.items():
            try:
                data = os.read(fd, 8)
            except OSError:
                continue
            if len(data) == 8:
                out[tid] = out.get(tid, 0) + _U64.unpack(data)[0]
        return out

    def settle_cpu(self, infos: Dict[int, ProcessInfo], counts: Dict[int, int]) -> None:
        """Give each thread of ``infos`` its own CPU time.

        A thread's inherited events report its count when it ends (a READ
        record), except the thread holding the *original* events: the kernel
        swaps whole event contexts between a parent and its clone at a
        context switch (keeping each task's counts with it), so after a
        parent waited for its child the child may hold the events opened on
        the parent.  That thread has no READ record; its time is the total
        our events counted (``counts``, every descendant summed in by the
        kernel) less every READ.  It is whoever has none, not necessarily
        the program's first thread: charging the remainder to the first
        thread reported a compiler driver that only waited with its child's
        ten seconds.  Threads still running at the end have no READ either;
        several without one share the remainder by their samples."""
        remainder = sum(counts.values()) - sum(ns for p in infos.values() for ns in p.thread_cpu_ns.values())
        missing = [(p, tid) for p in infos.values() for tid in sorted(p.threads.keys() | {p.pid})
                   if tid not in p.thread_cpu_ns]
        if not missing or remainder <= 0:
            return
        if len(missing) == 1:
            p, tid = missing[0]
            p.thread_cpu_ns[tid] = remainder
            return
        samples = sum(p.thread_samples.get(tid, 0) for p, tid in missing)
        for p, tid in missing:
            n = p.thread_samples.get(tid, 0)
            if n:
                p.thread_cpu_ns[tid] = remainder * n // samples

    def close(self) -> None:
        if self.python is not None:
            self.python.stop()              # its thread reads the rings
        all_rings = list(self.rings.values()) + list(self.switch_rings.values())
        rings = {r.fd for r in all_rings}
        for ring in all_rings:
            ring.close()
        for _cpu, fd in self.fds:
            if fd not in rings:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.rings.clear()
        self.switch_rings.clear()
        self.fds.clear()

    # -- records -----------------------------------------------------------------
    def drain(self, final: bool = False) -> None:
        """Read every ring and handle, in time order, the records stamped
        before the drain began (all of them when ``final``)."""
        cut = time.monotonic_ns() - REORDER_NS
        batch = self.pending
        seq = len(batch)
        limits = self._python_limits(final)
        for switches, rings in ((False, self.rings), (True, self.switch_rings)):
            for ring in rings.values():
                chunk = ring.chunk(None if switches else limits.get(id(ring)))
                for rtype, misc, off, size in perf.records(chunk):
                    if rtype == perf.PERF_RECORD_SAMPLE:
                        stamp = _U64.unpack_from(chunk, off + 16)[0]
                        if switches:
                            rtype = _SWITCH_OUT_SAMPLE
                    else:
                        stamp = _U64.unpack_from(chunk, off + size - 8)[0] if size >= 24 else 0
                    batch.append((stamp, seq, rtype, misc, chunk, off, size))
                    seq += 1
        batch.sort(key=lambda r: (r[0], r[1]))
        if final:
            ready, self.pending = batch, []
        else:
            n = bisect.bisect_left(batch, cut, key=lambda r: r[0])
            ready, self.pending = batch[:n], batch[n:]
        t0 = time.thread_time_ns()
        for stamp, _seq, rtype, misc, chunk, off, size in ready:
            self._record(stamp, rtype, misc, chunk, off, size)
        self.unwind_ns += time.thread_time_ns() - t0

    def _python_limits(self, final: bool) -> Dict[int, Optional[int]]:
        """How far each sample ring may be consumed: only as far as the
        Python-frame reader has read it (its cursors are taken before its
        output, so every sample consumed has its frames).  At the end the
        reader stops and everything is consumed."""
        py = self.python
        if py is None or not py.active:
            return {}
        if final:
            py.stop()
            return {}
        limits = {id(r): py.limit(r) for r in self.rings.values()}
        py.collect()
        return limits

    def _record(self, stamp: int, rtype: int, misc: int, buf: bytes, off: int, size: int) -> None:
        body = off + 8
        if rtype == perf.PERF_RECORD_SAMPLE:
            self._sample(buf, body)
        elif rtype == _SWITCH_OUT_SAMPLE:
            self._switch_out(buf, body)
        elif rtype == perf.PERF_RECORD_SWITCH:
            pid, tid, _time = _SAMPLE_ID.unpack_from(buf, off + size - _SAMPLE_ID.size)
            if misc & perf.PERF_RECORD_MISC_SWITCH_OUT:
                self.preempted[tid] = bool(misc & perf.PERF_RECORD_MISC_SWITCH_OUT_PREEMPT)
            else:
                self._switch_in(pid, tid, stamp)
        elif rtype == perf.PERF_RECORD_MMAP2:
            self._mmap2(buf, body, off + size)
        elif rtype == perf.PERF_RECORD_COMM:
            pid, tid = _U32x2.unpack_from(buf, body)
            self._comm(pid, tid, _cstring(buf, body + 8, off + size - _SAMPLE_ID.size),
                       bool(misc & perf.PERF_RECORD_MISC_COMM_EXEC))
        elif rtype == perf.PERF_RECORD_FORK:
            pid, ppid, tid, ptid = _U32x4.unpack_from(buf, body)
            self._fork(pid, ppid, tid, ptid, stamp)
        elif rtype == perf.PERF_RECORD_EXIT:
            pid, _ppid, tid, _ptid = _U32x4.unpack_from(buf, body)
            if pid == tid:
                proc = self.process(pid)
                proc.exited = True
                proc.end_ns = stamp
                if self.python is not None:
                    self.python.gone(pid)
        elif rtype == perf.PERF_RECORD_READ:
            pid, tid = _U32x2.unpack_from(buf, body)
            value = _U64.unpack_from(buf, body + 8)[0]
            cpu = self.process(pid).thread_cpu_ns
            cpu[tid] = cpu.get(tid, 0) + value
        elif rtype == perf.PERF_RECORD_LOST:
            self.lost += _U64.unpack_from(buf, body + 8)[0]

    def process(self, pid: int, ppid: int = 0) -> TracedProcess:
        proc = self.procs.get(pid)
        if proc is None:
            proc = self.procs[pid] = TracedProcess(pid=pid, ppid=ppid, start_ns=time.monotonic_ns())
        return proc

    def _fork(self, pid: int, ppid: int, tid: int, ptid: int, stamp: int) -> None:
        parent = self.process(ppid)
        if pid != ppid:                        # a new process: a copy of its parent
            child = self.procs.get(pid)
            if child is None or child.exited:
                child = self.procs[pid] = TracedProcess(pid=pid, ppid=ppid, start_ns=stamp)
            child.comm = parent.comm
            child.exe = parent.exe
            child.mappings = list(parent.mappings)
            child.dirty = True
            child.threads[tid] = parent.threads.get(ptid, parent.comm)
            if self.python is not None:
                self.python.forked(ppid, pid, self.rings.values())
        else:                                  # a new thread: its creator's name
            parent.threads.setdefault(tid, parent.threads.get(ptid, parent.comm))

    def _comm(self, pid: int, tid: int, comm: str, is_exec: bool) -> None:
        proc = self.process(pid)
        if is_exec:
            proc.new_image(comm)
            if self.python is not None:
                self.python.gone(pid)
        elif pid == tid:
            proc.comm = comm
        proc.threads[tid] = comm

    def _mmap2(self, buf: bytes, body: int, end: int) -> None:
        (pid, _tid, addr, length, pgoff, maj, mnr, ino, _gen, prot, flags) = _MMAP2.unpack_from(buf, body)
        if not prot & _PROT_EXEC:
            return
        path = _cstring(buf, body + _MMAP2.size, end - _SAMPLE_ID.size)
        deleted = path.endswith(" (deleted)")
        if deleted:
            path = path[:-len(" (deleted)")]
        if path == "//anon":
            path = ""
        perms = ("r" if prot & _PROT_READ else "-") + ("w" if prot & _PROT_WRITE else "-") + "x" \
            + ("s" if flags & _MAP_SHARED else "p")
        from ..symbols.maps import Mapping
        self.add_mapping(pid, Mapping(addr, addr + length, perms, pgoff, f"{maj:02x}:{mnr:02x}", ino, path, deleted))

    def add_mapping(self, pid: int, mapping: Mapping) -> None:
        """An executable mapping of ``pid`` (from a record, or from
        ``/proc/PID/maps`` when attaching)."""
        self.process(pid).add_mapping(mapping)
        if self.python is not None:
            self.python.mapped(pid, mapping, self.rings.values())

    def _unwound(self, buf: bytes, body: int):
        """(sample, process, stack key) of a sample record, or None for a
        sample without user context (a kernel thread)."""
        s = perf.decode_sample(buf, body)
        if s is None:
            return None
        proc = self.process(s.pid)
        table, gen = proc.current()
        py, check = self.python.frames_of(s.pid, s.tid, s.time) if self.python is not None else ((), None)
        if not py:
            ips, truncated = self.unwinder.unwind(table, s.regs, s.stack, s.stack_base, self.opts.max_depth)
            return s, proc, (s.tid, gen, tuple(ips), truncated, ())
        # Python frames read after the sample: kept only if the registers of
        # the innermost eval-loop activation at the sample confirm them.
        values: List[int] = []
        ips, truncated = self.unwinder.unwind(table, s.regs, s.stack, s.stack_base, self.opts.max_depth,
                                              self.python.eval_ranges(s.pid), values)
        if not self.python.confirmed(check, values):
            py = ()
        return s, proc, (s.tid, gen, tuple(ips), truncated, py)

    def _sample(self, buf: bytes, body: int) -> None:
        got = self._unwound(buf, body)
        if got is None:
            return
        s, proc, key = got
        proc.stacks[key] = proc.stacks.get(key, 0) + 1
        proc.thread_samples[s.tid] = proc.thread_samples.get(s.tid, 0) + 1
        proc.samples += 1

    def _switch_out(self, buf: bytes, body: int) -> None:
        """A thread leaves the CPU: keep its stack until it comes back."""
        got = self._unwound(buf, body)
        if got is not None:
            s, proc, key = got
            self.leaving[s.tid] = (proc, key, s.time)

    def _switch_in(self, pid: int, tid: int, stamp: int) -> None:
        """A thread is back on a CPU: the interval since it left is charged
        to the stack it left with, under the reason it left for."""
        left = self.leaving.pop(tid, None)
        if left is None:
            return
        proc, (ktid, gen, ips, truncated, py), t_out = left
        us = max(0, stamp - t_out) // 1000
        if not us or not ips:
            return
        # The leaf of an off-CPU raw stack says why the thread left the CPU:
        # not an address (no user mapping lies there); the symbolizer turns
        # it into a ``[off-cpu: REASON]`` frame.
        from ..symbols.offcpu import OFF_CPU_BLOCKED, OFF_CPU_PREEMPTED
        marker = OFF_CPU_PREEMPTED if self.preempted.pop(tid, False) else OFF_CPU_BLOCKED
        key = (ktid, gen, (marker,) + ips, truncated, py)
        proc.off_cpu_us[key] = proc.off_cpu_us.get(key, 0) + us

    # -- the tree --------------------------------------------------------------------
    def running(self, exclude: Iterable[int] = ()) -> List[TracedProcess]:
        """Processes of the tree that have not exited (checked against /proc
        too, in case an EXIT record was lost)."""
        skip = set(exclude)
        return [p for pid, p in sorted(self.procs.items())
                if pid not in skip and not p.exited and process_running(pid)]

    def process_infos(self, end_ns: int) -> Tuple[Dict[int, ProcessInfo], List[RawStack]]:
        """What each process left: ProcessInfo and its raw stacks."""
        from ..session import ProcessInfo
        from .ring import raw_stacks
        infos: Dict[int, ProcessInfo] = {}
        stacks: List[RawStack] = []
        stale_note = self.python.summary_note() if self.python is not None else ""
        for pid, p in sorted(self.procs.items()):
            if not p.gens and not p.samples and not p.mappings:
                continue                        # seen only as a parent
            p.current()
            finished = p.end_ns or end_ns
            info = ProcessInfo(pid=pid, ppid=p.ppid, exe=p.exe or p.comm, maps=list(p.gens),
                               samples=p.samples, wall_ns=max(0, finished - p.start_ns), timer=TIMER_NAME)
            info.threads = dict(p.threads)
            info.thread_samples = dict(p.thread_samples)
            info.thread_cpu_ns = dict(p.thread_cpu_ns)
            if self.python is not None:
                info.python = self.python.process_doc(pid)
                info.notes.extend(self.python.notes.get(pid, []))
                if info.python and stale_note:
                    info.notes.append(stale_note)
            # JIT names; anyone can create files in /tmp: see read_shared_file.
            info.perf_map, note = read_shared_file(f"/tmp/perf-{pid}.map", process_uid(pid, os.geteuid()))
            if note:
                info.notes.append(note)
            infos[pid] = info
            if self.opts.off_cpu:
                stacks.extend(self._wall_stacks(pid, p))
            else:
                stacks.extend(raw_stacks(pid, p.stacks))
        return infos, stacks

    def _wall_stacks(self, pid: int, p: TracedProcess) -> List[RawStack]:
        """With off-CPU recording: on-CPU stacks weigh ``period`` of wall
        time per sample, off-CPU stacks their measured time (``wall`` and
        ``offcpu`` in microseconds); ``samples`` stays the CPU profile."""
        from ..session import RawStack
        out = [RawStack(pid, tid, gen, ips, truncated, {"samples": n, "wall": n * self.period_us, "offcpu": 0}, py)
               for (tid, gen, ips, truncated, py), n in p.stacks.items()]
        out += [RawStack(pid, tid, gen, ips, truncated, {"samples": 0, "wall": us, "offcpu": us}, py)
                for (tid, gen, ips, truncated, py), us in p.off_cpu_us.items()]
        return out


def own_vdso() -> Optional[bytes]:
    """Our vdso image: the kernel maps the same one into every process."""
    try:
        with open("/proc/self/maps") as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.rstrip().endswith("[vdso]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            return ctypes.string_at(lo, hi - lo)
    return None
