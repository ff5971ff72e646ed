"""Launch a program under the shim and collect what it samples.

The program runs with the shim appended to ``LD_PRELOAD`` and its stdio
untouched.  Every process of the run (the target, its fork and exec
children) writes its own ring file into a private session directory
(``mkdtemp``: mode 0700, on tmpfs), so whatever a process sampled survives
a crash, ``_exit`` or SIGKILL: the controller drains the rings while the
program runs and once more after it ends.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..errors import TargetError, UsageError
from ..session import ProcessInfo, RawStack, Session
from . import ring as ringmod
from .build import shim_path
from .target import check_program

POLL_SECONDS = 0.05
THREAD_NAME_POLL_SECONDS = 0.2
MAX_DEPTH_LIMIT = 65536


@dataclass(frozen=True)
class CaptureOptions:
    """How to sample.

    hz: requested rate per thread in samples per CPU-second (default 99).
    unwind: "auto" (DWARF .eh_frame, frame pointers where that fails),
        "fp" (frame pointers only, fastest) or "dwarf".
    max_depth: frames kept per sample, leaf end first (default 128).
    timer: force "perf", "posix" or "itimer" (default: best available).
    ring_mb: size of each process's ring in MiB, a power of two (default 16).
    memory: also track every heap allocation (``--mem``).
    mem_depth: frames kept per allocation stack (default 32).
    mem_sample: 0 for exact heap tracking, else sample about one allocation
        per this many bytes (Poisson, unbiased estimates).
    sampler: "kernel" (the kernel samples registers and a stack copy,
        ctprof unwinds them outside the program: nothing of ours runs in it)
        or "signal" (a timer signal in the program unwinds in-process: the
        only way to reach stacks deeper than the kernel's 63 KiB copy).
    """

    hz: float = 99.0
    unwind: str = "auto"
    max_depth: int = 128
    timer: Optional[str] = None
    ring_mb: int = 16
    memory: bool = False
    mem_depth: int = 32
    mem_sample: int = 0
    sampler: str = "signal"

    def validate(self) -> None:
        if not (self.hz > 0) or self.hz != self.hz:
            raise UsageError(f"sampling rate must be a positive number of Hz, got {self.hz}")
        if self.hz < 1:
            raise UsageError(f"sampling rate {self.hz} Hz is below 1 Hz")
        if self.unwind not in ("auto", "fp", "dwarf"):
            raise UsageError(f"--unwind must be auto, fp or dwarf, not {self.unwind!r}")
        if not 1 <= self.max_depth <= MAX_DEPTH_LIMIT:
            raise UsageError(f"--max-depth must be between 1 and {MAX_DEPTH_LIMIT}")
        if self.sampler not in ("kernel", "signal"):
            raise UsageError(f"--sampler must be kernel or signal, not {self.sampler!r}")
        if self.timer not in (None, "perf", "posix", "itimer"):
            raise UsageError(f"unknown timer {self.timer!r}")
        if self.ring_mb < 1 or self.ring_mb & (self.ring_mb - 1) or self.ring_mb > 1024:
            raise UsageError("ring size must be a power of two between 1 and 1024 MiB")
        if not 1 <= self.mem_depth <= 256:
            raise UsageError("--mem-depth must be between 1 and 256")
        if self.mem_sample < 0:
            raise UsageError("--mem-sample must be a positive number of bytes")


def make_session_dir() -> str:
    """A private (0700) directory, on tmpfs where there is one."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else None
    return tempfile.mkdtemp(prefix="ctprof-", dir=base)


def child_environment(shim: str, session_dir: str, opts: CaptureOptions) -> Dict[str, str]:
    env = dict(os.environ)
    existing = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{existing} {shim}".strip() if existing else shim
    env["CTPROF_SESSION"] = session_dir
    env["CTPROF_HZ"] = str(max(1, int(round(opts.hz))))
    env["CTPROF_UNWIND"] = opts.unwind
    env["CTPROF_MAX_DEPTH"] = str(opts.max_depth)
    env["CTPROF_RING_MB"] = str(opts.ring_mb)
    if opts.timer:
        env["CTPROF_TIMER"] = opts.timer
    else:
        env.pop("CTPROF_TIMER", None)
    env["CTPROF_MEM_DEPTH"] = str(opts.mem_depth)
    env["CTPROF_MEM_SAMPLE"] = str(opts.mem_sample)
    return env


class Collector:
    """Discovers ring files in the session directory and drains them."""

    def __init__(self, session_dir: str, shim: str) -> None:
        self.session_dir = session_dir
        self.drain_fn = ringmod.load_drain(shim)
        self.buffer = bytearray(4 << 20)
        self.buffer_address = ringmod.buffer_address(self.buffer)
        self.rings: Dict[str, ringmod.RingFile] = {}
        self.thread_names: Dict[int, Dict[int, str]] = {}
        self.gone_ns: Dict[int, int] = {}
        self._last_names = 0.0

    def poll(self, decode: bool = False) -> None:
        try:
            names = os.listdir(self.session_dir)
        except OSError:
            names = []
        for name in names:
            if name.endswith(".ring") and name not in self.rings:
                path = os.path.join(self.session_dir, name)
                try:
                    ring = ringmod.RingFile(path, self.drain_fn)
                except (OSError, ValueError):
                    continue
                self.rings[name] = ring
        for ring in self.rings.values():
            if ring.ready():
                ring.drain(self.buffer, self.buffer_address, decode)
        now = time.monotonic()
        if now - self._last_names >= THREAD_NAME_POLL_SECONDS:
            self._last_names = now
            self._poll_threads()

    def _poll_threads(self) -> None:
        """Thread names as the kernel reports them, and when processes end
        (for processes that die without running their exit handlers)."""
        for ring in self.rings.values():
            if not ring.ready():
                continue
            pid = ring.header()["pid"]
            task_dir = f"/proc/{pid}/task"
            try:
                tids = os.listdir(task_dir)
            except OSError:
                self.gone_ns.setdefault(pid, time.monotonic_ns())
                continue
            names = self.thread_names.setdefault(pid, {})
            for tid in tids:
                try:
                    with open(f"{task_dir}/{tid}/comm") as f:
                        names[int(tid)] = f.read().strip()
                except (OSError, ValueError):
                    pass

    def finish(self, end_ns: int) -> Dict[int, ProcessInfo]:
        """Drain everything left and turn it into ProcessInfo + raw stacks."""
        self.poll()
        self.poll(decode=True)
        processes: Dict[int, ProcessInfo] = {}
        self.raw_stacks: List[RawStack] = []
        for ring in self.rings.values():
            if not ring.ready():
                continue
            info = self._process_info(ring, end_ns)
            processes[info.pid] = info
            self.raw_stacks.extend(ring.raw_stacks(info.pid))
        for ring in self.rings.values():
            ring.close()
        return processes

    def _process_info(self, ring: ringmod.RingFile, end_ns: int) -> ProcessInfo:
        h = ring.header()
        pid = int(h["pid"])
        maps: List[str] = []
        for gen in range(int(h["maps_next"])):
            try:
                with open(os.path.join(self.session_dir, f"{pid}.maps.{gen}"), encoding="utf-8", errors="replace") as f:
                    maps.append(f.read())
            except OSError:
                maps.append(maps[-1] if maps else "")
        perf_map = None
        try:
            with open(f"/tmp/perf-{pid}.map", encoding="utf-8", errors="replace") as f:
                perf_map = f.read()
        except OSError:
            pass
        finished = int(h["end_ns"]) or self.gone_ns.get(pid) or end_ns
        info = ProcessInfo(pid=pid, ppid=int(h["ppid"]), exe=str(h["exe"]), maps=maps, perf_map=perf_map,
                           samples=sum(t.samples for t in ring.capture.threads.values()),
                           dropped=int(h["dropped"]), handler_ns=int(h["handler_ns"]),
                           wall_ns=max(0, finished - int(h["start_ns"])),
                           timer=ringmod.TIMER_NAMES.get(int(h["timer_kind"]), "?"))
        names = self.thread_names.get(pid, {})
        for tid, stats in ring.capture.threads.items():
            info.threads[tid] = stats.name or names.get(tid, "")
            info.thread_cpu_ns[tid] = stats.cpu_ns
            info.thread_samples[tid] = stats.samples
        for tid, name in names.items():
            info.threads.setdefault(tid, name)
        for bit, text in ringmod.NOTES.items():
            if int(h["notes"]) & bit:
                info.notes.append(text)
        return info


def _snapshot_session(argv, opts: CaptureOptions, collector: "Collector", heap, start: float,
                      start_ns: int) -> Session:
    """The session so far, without disturbing the run."""
    now = time.monotonic_ns()
    collector.poll(decode=True)
    processes: Dict[int, ProcessInfo] = {}
    stacks: List[RawStack] = []
    for ring in collector.rings.values():
        if not ring.ready():
            continue
        info = collector._process_info(ring, now)
        processes[info.pid] = info
        stacks.extend(ring.raw_stacks(info.pid))
    session = Session(kind="memory" if opts.memory else "cpu", command=list(argv), hz=float(opts.hz),
                      unwind=opts.unwind, max_depth=opts.max_depth, start_time=start,
                      wall_s=(now - start_ns) / 1e9, exit_status=None, processes=processes, stacks=stacks,
                      mem_sample=opts.mem_sample)
    session.notes.append("snapshot taken while the program ran (kill -USR2)")
    if heap is not None:
        from ..memory.model import add_heap_to_session
        add_heap_to_session(session, heap.snapshot())
    return session


class _Interrupts:
    """Ctrl-C / SIGTERM while the target runs: the target (in our process
    group) gets the terminal's SIGINT itself; if it is still alive a moment
    later it is sent one, and a second Ctrl-C kills it.  Either way the
    controller goes on to write the profile."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.snapshot_requested = False
        self.count = 0
        self.first_at = 0.0
        self.saved = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handle)
        self.saved[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, self._snapshot)
        return self

    def _snapshot(self, signum, frame) -> None:
        self.snapshot_requested = True

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            self.first_at = time.monotonic()
            if signum == signal.SIGTERM:
                self._send(signal.SIGTERM)
        else:
            self._send(signal.SIGKILL)

    def tick(self) -> None:
        if self.count == 1 and self.first_at and time.monotonic() - self.first_at > 0.5:
            self.first_at = 0.0
            self._send(signal.SIGINT)

    def _send(self, sig: int) -> None:
        try:
            self.proc.send_signal(sig)
        except OSError:
            pass


def run_program(argv: List[str], opts: CaptureOptions,
                on_snapshot: Optional[Callable[[Session], None]] = None) -> Session:
    """Run ``argv`` under the sampler until it exits; return the session.

    ``kill -USR2`` on ctprof while the program runs calls ``on_snapshot``
    with the session so far (heap: what is live now)."""
    opts.validate()
    if not argv:
        raise UsageError("no program given (usage: ctprof run [options] -- PROGRAM ARGS...)")
    program = check_program(argv[0])
    shim = shim_path()  # the controller's own copy: ring drain and heap consumer
    target_shim = shim_path("mem") if opts.memory else shim
    session_dir = make_session_dir()
    heap = None
    try:
        collector = Collector(session_dir, shim)
        env = child_environment(target_shim, session_dir, opts)
        start = time.time()
        start_ns = time.monotonic_ns()
        if opts.memory:
            from ..memory.collect import HeapCollector
            heap = HeapCollector(session_dir, shim, time.monotonic())
            heap.start_thread()
        try:
            proc = subprocess.Popen([program] + list(argv[1:]), env=env, executable=program)
        except OSError as err:
            raise TargetError(f"cannot run {argv[0]}: {err.strerror}") from None
        with _Interrupts(proc) as interrupts:
            while proc.poll() is None:
                collector.poll()
                interrupts.tick()
                if interrupts.snapshot_requested:
                    interrupts.snapshot_requested = False
                    if on_snapshot:
                        on_snapshot(_snapshot_session(argv, opts, collector, heap, start, start_ns))
                try:
                    proc.wait(timeout=POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            end_ns = time.monotonic_ns()
            heap_processes = heap.stop() if heap else {}
            heap = None
            processes = collector.finish(end_ns)
        rc = proc.returncode
        session = Session(kind="memory" if opts.memory else "cpu", command=list(argv), hz=float(opts.hz),
                          unwind=opts.unwind, max_depth=opts.max_depth, start_time=start,
                          wall_s=(end_ns - start_ns) / 1e9, exit_status=128 - rc if rc < 0 else rc,
                          processes=processes, stacks=collector.raw_stacks, mem_sample=opts.mem_sample)
        if opts.memory:
            from ..memory.model import add_heap_to_session
            from .target import own_allocator
            add_heap_to_session(session, heap_processes)
            if own_allocator(program):
                session.notes.append(f"{os.path.basename(program)} defines its own malloc/free (a statically "
                                     f"linked allocator): its heap is invisible to ctprof's hooks, so the memory "
                                     f"figures miss its allocations")
        if interrupts.count:
            session.notes.append("interrupted: the program was stopped by Ctrl-C/SIGTERM")
        if not processes:
            session.notes.append("the shim never started in the program (is LD_PRELOAD cleared or ignored?)")
        return session
    finally:
        if heap is not None:
            heap.stop()
        shutil.rmtree(session_dir, ignore_errors=True)
