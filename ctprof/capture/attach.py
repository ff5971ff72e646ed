"""Attach to a running process: sample it from outside with perf events.

Design (README "How attach works"): nothing is injected.  The kernel
sampler (:mod:`ctprof.capture.kernel`, the same one ``ctprof run`` uses)
opens an inherited task-clock event on every thread the process has (on
every CPU); threads and processes those threads start later are followed
by the kernel itself, however short-lived, and their mappings, names and
ends arrive as records in the same rings.  What the process had mapped
before the attach comes from ``/proc/PID/maps``.  Its files are read
through ``/proc/PID/root`` (another mount namespace) and, for a deleted
binary, ``/proc/PID/map_files``.  Detaching is closing the events, so the
process keeps running exactly as before: no ptrace stop, no signal, no
timer, no code or memory of ours in it.

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
from ..symbols.maps import parse_maps
from ..unwinder import Unwinder
from . import perf
from .kernel import KernelSampler, KernelSamplerError, TraceOptions, own_vdso

POLL_SECONDS = 0.02
ALIVE_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class AttachOptions:
    """How to sample an attached process.

    hz: samples per CPU-second per thread (default 99).
    duration: seconds to sample; None samples until the process exits or
        :func:`attach_process`'s ``should_stop`` says so (Ctrl-C on the CLI).
    max_depth: frames kept per sample, leaf end first (default 128).
    stack_kb: KiB of user stack copied per sample (default 32, at most 63);
        frames whose return address lies deeper are not reached.
    ring_kb: per-CPU ring buffer in KiB (default 2048; halved while the
        locked-memory limit refuses it).
    off_cpu: also record where threads wait (blocked or preempted).
    """

    hz: float = 99.0
    duration: Optional[float] = None
    max_depth: int = 128
    stack_kb: int = 32
    ring_kb: int = 2048
    off_cpu: bool = False

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

def _thread_cpu_ns(pid: int, tid: int) -> Optional[int]:
    """CPU time of a thread so far (``schedstat``: ns on a CPU)."""
    text = _read(f"/proc/{pid}/task/{tid}/schedstat")
    try:
        return int(text.split()[0]) if text else None
    except (ValueError, IndexError):
        return None


def _open_all_threads(sampler: KernelSampler, pid: int) -> Tuple[Dict[int, int], int]:
    """Follow every thread of ``pid``; threads started meanwhile by a thread
    not yet followed are picked up by listing again until nothing is new.
    Returns tid -> its CPU time when it was followed, and how many threads
    refused."""
    followed: Dict[int, int] = {}
    refused = 0
    while True:
        new = [t for t in perf.thread_ids(pid) if t not in followed]
        if not new:
            break
        for tid in new:
            cpu0 = _thread_cpu_ns(pid, tid)
            try:
                sampler.follow(tid)
            except KernelSamplerError as err:
                if err.errno == errno.ESRCH:
                    followed[tid] = 0                  # it ended meanwhile
                    continue
                if not followed:
                    _raise_open(pid, err)
                refused += 1
                followed[tid] = -1
                continue
            followed[tid] = cpu0 or 0
            sampler.process(pid).threads[tid] = (_read(f"/proc/{pid}/task/{tid}/comm") or "").strip()
    return {t: c for t, c in followed.items() if c >= 0}, refused


def _raise_open(pid: int, err: OSError) -> None:
    if err.errno in (errno.EACCES, errno.EPERM):
        raise AttachError(explain_permission(pid, "perf_event_open")) from None
    if err.errno in (errno.ENOSYS, errno.ENOENT, errno.EOPNOTSUPP):
        raise AttachError(f"perf events are not available here ({err.strerror}): the kernel lacks "
                          f"CONFIG_PERF_EVENTS, or a container's seccomp profile blocks perf_event_open")
    if err.errno == errno.EMFILE:
        raise AttachError("too many open files: raise ulimit -n (one perf event per thread and CPU)")
    raise AttachError(f"cannot attach to process {pid}: perf_event_open: {err.strerror}")


def _initial_maps(sampler: KernelSampler, pid: int) -> None:
    """What the process mapped before we came: from /proc/PID/maps (the
    kernel reports only mappings made while the events are open)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except PermissionError:
        raise AttachError(explain_permission(pid, "reading its memory map")) from None
    except OSError:
        raise AttachError(f"no such process: {pid} (it has exited)") from None
    if not text.strip():
        raise AttachError(f"process {pid} has no user memory (a kernel thread?): nothing to sample")
    for m in parse_maps(text):
        if m.executable:
            sampler.add_mapping(pid, m)


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
    ppid = int(stat[1]) if len(stat) > 1 else 0
    cmdline = [c for c in (_read(f"/proc/{pid}/cmdline") or "").split("\0") if c] \
        or [(_read(f"/proc/{pid}/comm") or str(pid)).strip()]
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = cmdline[0]
    if exe.endswith(" (deleted)"):
        exe = exe[:-len(" (deleted)")]

    trace = TraceOptions(hz=opts.hz, stack_bytes=opts.stack_kb * 1024, max_depth=opts.max_depth,
                         ring_pages=max(8, opts.ring_kb * 1024 // perf.mmap.PAGESIZE), off_cpu=opts.off_cpu)
    sampler = KernelSampler(trace, Unwinder(root=f"/proc/{pid}/root", vdso=own_vdso(),
                                            map_files=f"/proc/{pid}/map_files"))
    target = sampler.process(pid, ppid)
    target.comm = (_read(f"/proc/{pid}/comm") or "").strip()
    _initial_maps(sampler, pid)
    target.exe = exe
    try:
        cpu_at_start, refused = _open_all_threads(sampler, pid)
    except BaseException:
        sampler.close()
        raise
    if not sampler.fds:
        sampler.close()
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
        on_start(len(cpu_at_start))
    wall_start = time.time()
    t0 = time.monotonic()
    t0_ns = time.monotonic_ns()
    cpu0 = time.process_time()
    exited_at: Optional[float] = None
    last_alive = t0
    cpu_at_end: Dict[int, int] = {}
    try:
        while True:
            now = time.monotonic()
            if opts.duration is not None and now - t0 >= opts.duration:
                break
            if stop["signal"] or (should_stop is not None and should_stop()):
                break
            sampler.drain()
            if now - last_alive >= ALIVE_POLL_SECONDS:
                last_alive = now
                if not _alive(pid, start_ticks):
                    exited_at = now - t0
                    break
            time.sleep(POLL_SECONDS)
        for tid in cpu_at_start:
            ns = _thread_cpu_ns(pid, tid)
            if ns is not None:
                cpu_at_end[tid] = ns
        sampler.drain(final=True)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        sampler.close()
    end_ns = time.monotonic_ns()
    ctprof_cpu = time.process_time() - cpu0

    processes, stacks = sampler.process_infos(end_ns)
    info = processes.get(pid) or ProcessInfo(pid=pid, ppid=ppid, exe=exe)
    processes[pid] = info
    info.exe = exe
    info.timer = "perf_event task-clock (kernel sampler, attach)"
    info.wall_ns = end_ns - t0_ns
    info.dropped += sampler.lost
    # Threads that were there when we came: their CPU time while attached,
    # from the kernel's own account; threads born since reported theirs at
    # exit (READ records) or are still running (read now).
    for tid, start in cpu_at_start.items():
        if tid in cpu_at_end:
            info.thread_cpu_ns[tid] = max(0, cpu_at_end[tid] - start)
    for p in processes.values():
        p.timer = info.timer
    session = Session(kind="cpu", command=cmdline, hz=float(opts.hz), unwind="dwarf", max_depth=opts.max_depth,
                      start_time=wall_start, wall_s=(end_ns - t0_ns) / 1e9, exit_status=None,
                      processes=processes, stacks=stacks)
    session.notes.append(f"attached to running process {pid} for {(end_ns - t0_ns) / 1e9:.2f} s; samples taken by "
                         f"the kernel (no code in the target), unwound offline from .eh_frame: ctprof used "
                         f"{ctprof_cpu:.2f} s of its own CPU")
    if exited_at is not None:
        session.notes.append(f"process {pid} exited during the attach (after {exited_at:.2f} s); "
                             f"everything sampled until then is kept")
    if stop["signal"]:
        session.notes.append("interrupted: detached on Ctrl-C/SIGTERM; the process keeps running")
    if sampler.off_cpu_refused:
        session.notes.append(sampler.off_cpu_refused)
    if sampler.exclude_kernel:
        session.notes.append("not privileged for kernel-mode samples (perf_event_paranoid >= 2): "
                             "time inside system calls is not sampled")
    if refused:
        session.notes.append(f"{refused} thread(s) could not be sampled")
    if any(m.deleted for m in target.mappings):
        session.notes.append("the program's files were deleted or replaced since it started: they were read "
                             "through /proc/PID/map_files while it ran")
    stats = sampler.unwinder.stats
    samples = sum(p.samples for p in processes.values())
    session.notes.append(f"unwound {samples} samples offline in {sampler.unwind_ns / 1e9:.2f} s "
                         f"({stats['frames']} frames, {stats['fp']} by frame pointer)")
    session.exited = exited_at is not None  # type: ignore[attr-defined]
    return session
