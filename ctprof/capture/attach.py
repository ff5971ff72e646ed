"""Attach to a running process: sample it from outside with perf events.

Design (README "How attach works"): nothing is injected.  For every thread
of the target (``/proc/PID/task``, polled so threads started during the
attach are picked up) a ``perf_event_open`` software task-clock event samples
the user registers and the top of the user stack every ``1/hz`` seconds of
that thread's CPU time; the kernel writes the samples into per-thread ring
buffers that this controller drains and unwinds offline from ``.eh_frame``
(:mod:`ctprof.unwinder`) against ``/proc/PID/maps`` snapshots.  Detaching is
closing the events, so the process keeps running exactly as before: no
ptrace stop, no signal, no timer, no code or memory of ours in it.

The result is the same :class:`~ctprof.session.Session` that ``ctprof run``
produces (raw return addresses + maps), so symbols, saving and every
renderer work unchanged.
"""
from __future__ import annotations

import errno
import os
import pwd
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import AttachError, UsageError
from ..session import ProcessInfo, Session
from ..symbols.maps import MapTable
from ..unwinder import Unwinder
from . import perf
from .kernel import own_vdso
from .ring import raw_stacks

POLL_SECONDS = 0.02
THREAD_POLL_SECONDS = 0.05
MAPS_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class AttachOptions:
    """How to sample an attached process.

    hz: samples per CPU-second per thread (default 99).
    duration: seconds to sample; None samples until the process exits or
        :func:`attach_process`'s ``should_stop`` says so (Ctrl-C on the CLI).
    max_depth: frames kept per sample, leaf end first (default 128).
    stack_kb: KiB of user stack copied per sample (default 32, at most 63);
        frames whose return address lies deeper are not reached.
    ring_kb: per-thread ring buffer in KiB (default 2048; halved while the
        locked-memory limit refuses it).
    """

    hz: float = 99.0
    duration: Optional[float] = None
    max_depth: int = 128
    stack_kb: int = 32
    ring_kb: int = 2048

    def validate(self) -> None:
        if not (self.hz > 0) or self.hz != self.hz or self.hz > 100000:
            raise UsageError(f"sampling rate must be between 1 and 100000 Hz, got {self.hz}")
        if self.duration is not None and not (self.duration > 0):
            raise UsageError(f"duration must be a positive number of seconds, got {self.duration}")
        if not 1 <= self.max_depth <= 65536:
            raise UsageError("max_depth must be between 1 and 65536")
        if not 1 <= self.stack_kb <= 63:
            raise UsageError("stack_kb must be between 1 and 63")
        if self.ring_kb < 64 or self.ring_kb & (self.ring_kb - 1):
            raise UsageError("ring_kb must be a power of two of at least 64")


# -- target facts ----------------------------------------------------------------

def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _stat_fields(pid: int) -> Optional[List[str]]:
    text = _read(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    return text[text.rindex(")") + 2:].split()   # fields from 3 (state) on


def _start_ticks(pid: int) -> Optional[int]:
    f = _stat_fields(pid)
    return int(f[19]) if f and len(f) > 19 else None


def _alive(pid: int, start: Optional[int]) -> bool:
    f = _stat_fields(pid)
    if not f or f[0] in ("Z", "X"):
        return False
    return start is None or int(f[19]) == start


def _uid_of(pid: int) -> Optional[int]:
    text = _read(f"/proc/{pid}/status") or ""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def _user(uid: Optional[int]) -> str:
    if uid is None:
        return "?"
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _in_container() -> bool:
    if os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv"):
        return True
    cg = _read("/proc/1/cgroup") or ""
    return any(word in cg for word in ("docker", "kubepods", "containerd", "lxc"))


def explain_permission(pid: int, what: str) -> str:
    """Why ``what`` was refused for ``pid``, as one line: owner mismatch,
    non-dumpable target, perf_event_paranoid, Yama, seccomp/container."""
    reasons: List[str] = []
    me = os.geteuid()
    owner = _uid_of(pid)
    if owner is not None and owner != me and me != 0:
        reasons.append(f"it belongs to {_user(owner)} and you are {_user(me)}: "
                       f"run ctprof as that user or as root")
    elif owner == me and me != 0:
        try:
            if os.stat(f"/proc/{pid}").st_uid != me:
                reasons.append("it is not dumpable (setuid/setgid program or prctl(PR_SET_DUMPABLE, 0)): "
                               "only root may look inside it")
        except OSError:
            pass
    paranoid = perf.read_sysctl("/proc/sys/kernel/perf_event_paranoid")
    if paranoid is not None and me != 0:
        try:
            level = int(paranoid)
        except ValueError:
            level = 0
        if level >= 3:
            reasons.append(f"kernel.perf_event_paranoid is {level}: perf events are disabled for "
                           f"unprivileged users (sysctl -w kernel.perf_event_paranoid=2, or run as root)")
        elif not reasons:
            reasons.append(f"kernel.perf_event_paranoid is {level}")
    scope = perf.read_sysctl("/proc/sys/kernel/yama/ptrace_scope")
    if scope not in (None, "0"):
        reasons.append(f"kernel.yama.ptrace_scope is {scope}")
    seccomp = next((l.split()[1] for l in (_read("/proc/self/status") or "").splitlines()
                    if l.startswith("Seccomp:")), "0")
    if seccomp != "0":
        reasons.append("ctprof runs under a seccomp filter that may forbid perf_event_open "
                       "(containers: allow perf_event_open or add CAP_PERFMON)")
    elif _in_container() and me == 0 and owner in (me, None):
        reasons.append("inside a container perf_event_open needs CAP_PERFMON/CAP_SYS_ADMIN "
                       "or a seccomp profile that allows it")
    comm = (_read(f"/proc/{pid}/comm") or "").strip()
    return (f"cannot attach to process {pid}{f' ({comm})' if comm else ''}: permission denied ({what})"
            + (f": {'; '.join(reasons)}" if reasons else ""))


# -- the attach ------------------------------------------------------------------

class _Target:
    """Events, maps and unwinding state of the attached process."""

    def __init__(self, pid: int, opts: AttachOptions) -> None:
        self.pid = pid
        self.opts = opts
        self.period_ns = int(1e9 / opts.hz)
        self.stack_bytes = opts.stack_kb * 1024
        self.pages = max(8, opts.ring_kb * 1024 // perf.mmap.PAGESIZE)
        self.exclude_kernel = False
        self.rings: Dict[int, perf.ThreadRing] = {}
        self.closed: Dict[int, Tuple[int, int]] = {}      # tid -> (cpu_ns, lost)
        self.names: Dict[int, str] = {}
        self.refused: Dict[int, int] = {}
        self.maps: List[str] = []
        self.table: Optional[MapTable] = None
        self.last_maps = 0.0
        self.stacks: Dict[tuple, int] = {}
        self.thread_samples: Dict[int, int] = {}
        self.samples = 0
        self.unwind_ns = 0
        self.unwinder = Unwinder(root=f"/proc/{pid}/root", vdso=own_vdso())

    # maps --------------------------------------------------------------------
    def read_maps(self, first: bool = False) -> bool:
        """Snapshot /proc/PID/maps; a new generation if it changed.  False
        if it could not be read."""
        try:
            with open(f"/proc/{self.pid}/maps", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except PermissionError:
            if first:
                raise AttachError(explain_permission(self.pid, "reading its memory map")) from None
            return False
        except OSError:
            return False
        if first and not text.strip():
            raise AttachError(f"process {self.pid} has no user memory (a kernel thread?): nothing to sample")
        self.last_maps = time.monotonic()
        if not self.maps or self.maps[-1] != text:
            self.maps.append(text)
            self.table = MapTable(text)
        return True

    # threads -------------------------------------------------------------------
    def open_thread(self, tid: int, first: bool = False) -> None:
        try:
            fd = perf.open_sampler(tid, self.period_ns, self.stack_bytes, self.exclude_kernel)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM) and not self.exclude_kernel:
                # Unprivileged (perf_event_paranoid >= 2): user-mode samples only.
                self.exclude_kernel = True
                return self.open_thread(tid, first)
            if err.errno == errno.ESRCH:
                return                                     # the thread ended meanwhile
            self.refused[tid] = err.errno
            if first:
                self._raise_open(err)
            return
        try:
            ring = perf.map_ring(tid, fd, self.pages)
        except OSError as err:
            os.close(fd)
            self.refused[tid] = err.errno
            if first:
                raise AttachError(f"cannot map the perf ring buffer for process {self.pid}: {err.strerror} "
                                  f"(locked-memory limit: kernel.perf_event_mlock_kb, ulimit -l)") from None
            return
        self.rings[tid] = ring
        self.names[tid] = (_read(f"/proc/{self.pid}/task/{tid}/comm") or "").strip()

    def _raise_open(self, err: OSError) -> None:
        if err.errno in (errno.EACCES, errno.EPERM):
            raise AttachError(explain_permission(self.pid, "perf_event_open")) from None
        if err.errno in (errno.ENOSYS, errno.ENOENT, errno.EOPNOTSUPP):
            raise AttachError(f"perf events are not available here ({err.strerror}): the kernel lacks "
                              f"CONFIG_PERF_EVENTS, or a container's seccomp profile blocks perf_event_open")
        if err.errno == errno.EMFILE:
            raise AttachError("too many open files: raise ulimit -n (one perf event per thread)")
        raise AttachError(f"cannot attach to process {self.pid}: perf_event_open: {err.strerror}")

    def poll_threads(self) -> None:
        live = perf.thread_ids(self.pid)
        for tid in live:
            if tid not in self.rings and tid not in self.closed and tid not in self.refused:
                self.open_thread(tid)
        live_set = set(live)
        for tid in list(self.rings):
            if tid not in live_set:
                self.drain_one(self.rings[tid])
                self.close_thread(tid)
            elif not self.names.get(tid):
                self.names[tid] = (_read(f"/proc/{self.pid}/task/{tid}/comm") or "").strip()

    def close_thread(self, tid: int) -> None:
        ring = self.rings.pop(tid)
        self.closed[tid] = (ring.cpu_ns(), ring.lost)
        ring.close()

    # samples --------------------------------------------------------------------
    def drain(self) -> None:
        for ring in list(self.rings.values()):
            self.drain_one(ring)

    def drain_one(self, ring: perf.ThreadRing) -> None:
        t0 = time.thread_time_ns()
        for s in ring.read():
            self.add_sample(s)
        self.unwind_ns += time.thread_time_ns() - t0

    def add_sample(self, s: perf.Sample) -> None:
        table = self.table
        pc = s.regs.get(16, 0)
        if table is None:
            return
        if table.find(pc) is None and time.monotonic() - self.last_maps > 0.05:
            self.read_maps()                  # a library mapped since the last snapshot
            table = self.table
        ips, truncated = self.unwinder.unwind(table, s.regs, s.stack, s.stack_base, self.opts.max_depth)
        key = (s.tid, len(self.maps) - 1, tuple(ips), truncated)
        self.stacks[key] = self.stacks.get(key, 0) + 1
        self.thread_samples[s.tid] = self.thread_samples.get(s.tid, 0) + 1
        self.samples += 1

    def close_all(self) -> None:
        for tid in list(self.rings):
            self.close_thread(tid)


def attach_process(pid: int, opts: AttachOptions,
                   should_stop: Optional[Callable[[], bool]] = None,
                   on_start: Optional[Callable[[int], None]] = None) -> Session:
    """Sample process ``pid`` until ``opts.duration`` passes, the process
    exits, ``should_stop()`` returns true, or (in the main thread) Ctrl-C /
    SIGTERM; then detach and return the session.  ``on_start(threads)`` is
    called once sampling runs.  Raises
    :class:`~ctprof.errors.AttachError` when the process cannot be attached."""
    opts.validate()
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise UsageError(f"process id must be a positive integer, not {pid!r}")
    if pid == os.getpid():
        raise AttachError("ctprof cannot attach to itself; use ctprof.profile() to profile this Python process")
    if not os.path.exists(f"/proc/{pid}"):
        raise AttachError(f"no such process: {pid}")
    start_ticks = _start_ticks(pid)
    if start_ticks is None or not _alive(pid, start_ticks):
        raise AttachError(f"no such process: {pid} (it has exited)")
    stat = _stat_fields(pid) or []
    target = _Target(pid, opts)
    target.read_maps(first=True)
    cmdline = (_read(f"/proc/{pid}/cmdline") or "").split("\0")
    cmdline = [c for c in cmdline if c] or [(_read(f"/proc/{pid}/comm") or str(pid)).strip()]
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = cmdline[0]
    ppid = int(stat[1]) if len(stat) > 1 else 0

    tids = perf.thread_ids(pid)
    if not tids:
        raise AttachError(f"no such process: {pid} (it has exited)")
    try:
        target.open_thread(pid if pid in tids else tids[0], first=True)
        for tid in tids:
            if tid not in target.rings:
                target.open_thread(tid)
    except BaseException:
        target.close_all()
        raise
    if not target.rings:
        if not _alive(pid, start_ticks):
            raise AttachError(f"no such process: {pid} (it exited while ctprof attached)")
        raise AttachError(f"cannot attach to process {pid}: no thread could be sampled")

    stop = {"signal": 0}
    saved = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, frame):
            stop["signal"] = signum
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                saved[sig] = signal.signal(sig, on_signal)
            except (ValueError, OSError):
                pass

    if on_start is not None:
        on_start(len(target.rings))
    wall_start = time.time()
    t0 = time.monotonic()
    t0_ns = time.monotonic_ns()
    cpu0 = time.process_time()
    exited_at: Optional[float] = None
    last_threads = t0
    try:
        while True:
            now = time.monotonic()
            if opts.duration is not None and now - t0 >= opts.duration:
                break
            if stop["signal"] or (should_stop is not None and should_stop()):
                break
            target.drain()
            if now - last_threads >= THREAD_POLL_SECONDS:
                last_threads = now
                if not _alive(pid, start_ticks):
                    exited_at = now - t0
                    break
                target.poll_threads()
                if now - target.last_maps >= MAPS_POLL_SECONDS:
                    target.read_maps()
            time.sleep(POLL_SECONDS)
        target.drain()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        target.close_all()
    end_ns = time.monotonic_ns()
    ctprof_cpu = time.process_time() - cpu0

    info = ProcessInfo(pid=pid, ppid=ppid, exe=exe, maps=list(target.maps), timer="perf_event task-clock (attach)")
    for tid, (cpu_ns, lost) in target.closed.items():
        info.thread_cpu_ns[tid] = cpu_ns
        info.dropped += lost
    info.threads = dict(target.names)
    info.thread_samples = dict(target.thread_samples)
    info.samples = target.samples
    info.wall_ns = end_ns - t0_ns
    stacks = raw_stacks(pid, target.stacks)
    session = Session(kind="cpu", command=cmdline, hz=float(opts.hz), unwind="dwarf", max_depth=opts.max_depth,
                      start_time=wall_start, wall_s=(end_ns - t0_ns) / 1e9, exit_status=None,
                      processes={pid: info}, stacks=stacks)
    session.notes.append(f"attached to running process {pid} for {(end_ns - t0_ns) / 1e9:.2f} s; samples taken by "
                         f"the kernel (no code in the target), unwound offline from .eh_frame: ctprof used "
                         f"{ctprof_cpu:.2f} s of its own CPU")
    if exited_at is not None:
        session.notes.append(f"process {pid} exited during the attach (after {exited_at:.2f} s); "
                             f"everything sampled until then is kept")
    if stop["signal"]:
        session.notes.append("interrupted: detached on Ctrl-C/SIGTERM; the process keeps running")
    if target.exclude_kernel:
        session.notes.append("not privileged for kernel-mode samples (perf_event_paranoid >= 2): "
                             "time inside system calls is not sampled")
    if target.refused:
        session.notes.append(f"{len(target.refused)} thread(s) could not be sampled "
                             f"({', '.join(os.strerror(e) for e in sorted(set(target.refused.values())))})")
    stats = target.unwinder.stats
    session.notes.append(f"unwound {target.samples} samples offline in {target.unwind_ns / 1e9:.2f} s "
                         f"({stats['frames']} frames, {stats['fp']} by frame pointer)")
    session.exited = exited_at is not None  # type: ignore[attr-defined]
    return session
