"""Launch a program under the shim and collect what it samples.

The program runs with the shim appended to ``LD_PRELOAD`` and its stdio
untouched.  Every process of the run (the target, its fork and exec
children) writes its own ring file into a private session directory
(``mkdtemp``: mode 0700, on tmpfs), so whatever a process sampled survives
a crash, ``_exit`` or SIGKILL: the controller drains the rings while the
program runs and once more after it ends.
"""
from __future__ import annotations

import contextlib
import errno
import mmap
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Tuple

from ..errors import TargetError, UsageError
from ..files import private_session_dir, process_uid, read_shared_file
from ..nogc import paused_collector
from . import perf
from .kernel import REORDER_NS, KernelSampler, KernelSamplerError, TraceOptions, own_vdso
from .target import check_program

# Only what starts the program is imported with this module: the kernel
# sampler's unwinder, the shim's rings and the session are imported where
# they are used, once the program runs or only with the shim (``ctprof
# run`` starts the program as early as it can).
if TYPE_CHECKING:
    from ..session import FlatStacks, ProcessInfo, RawStack, Session
    from . import ring as ringmod

POLL_SECONDS = 0.05
KERNEL_POLL_SECONDS = 0.02
#: After the program exits, the wait before ctprof first decides whether
#: anything it started is still running.  A drain handles the records
#: stamped up to REORDER_NS before it begins, so one REORDER_NS after the
#: exit was seen the first drain has the FORK record of every process
#: started until then (the kernel writes it within the fork call).  (It
#: was 10 ms.)
FOLLOW_SETTLE_SECONDS = REORDER_NS / 1e9
#: Deeper than this, ``auto`` samples in the program: the kernel's stack
#: copy (at most 63 KiB) cannot hold thousands of frames.
KERNEL_MAX_DEPTH = 1024
#: With --mem, how long the program runs before the controller does its
#: own preparations (``while_running``) beside the heap drainer.
HEAP_WARM_UP_DELAY_SECONDS = 0.5
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
        ctprof unwinds them outside the program: nothing of ours runs in it),
        "signal" (a timer signal in the program unwinds in-process: the
        only way to reach stacks deeper than the kernel's 63 KiB copy), or
        "auto" (default: kernel, unless perf events are refused or
        ``max_depth`` is above 1024).
    stack_kb: KiB of user stack the kernel copies per sample (1 to 63,
        default 32); frames deeper than that end the chain.
    off_cpu: also record where threads wait (kernel sampler only).
    """

    hz: float = 99.0
    unwind: str = "auto"
    max_depth: int = 128
    timer: Optional[str] = None
    ring_mb: int = 16
    memory: bool = False
    mem_depth: int = 32
    mem_sample: int = 0
    sampler: str = "auto"
    stack_kb: int = 32
    off_cpu: bool = False

    def validate(self) -> None:
        if not (self.hz > 0) or self.hz != self.hz:
            raise UsageError(f"sampling rate must be a positive number of Hz, got {self.hz}")
        if self.hz < 1:
            raise UsageError(f"sampling rate {self.hz} Hz is below 1 Hz")
        if self.unwind not in ("auto", "fp", "dwarf"):
            raise UsageError(f"--unwind must be auto, fp or dwarf, not {self.unwind!r}")
        if not 1 <= self.max_depth <= MAX_DEPTH_LIMIT:
            raise UsageError(f"--max-depth must be between 1 and {MAX_DEPTH_LIMIT}")
        if self.sampler not in ("auto", "kernel", "signal"):
            raise UsageError(f"--sampler must be auto, kernel or signal, not {self.sampler!r}")
        if not 1 <= self.stack_kb <= 63:
            raise UsageError("--stack-kb must be between 1 and 63")
        if self.off_cpu and self.sampler == "signal":
            raise UsageError("--off-cpu needs the kernel sampler (not --sampler signal)")
        if self.timer not in (None, "perf", "posix", "itimer"):
            raise UsageError(f"unknown timer {self.timer!r}")
        if self.ring_mb < 1 or self.ring_mb & (self.ring_mb - 1) or self.ring_mb > 1024:
            raise UsageError("ring size must be a power of two between 1 and 1024 MiB")
        if not 1 <= self.mem_depth <= 256:
            raise UsageError("--mem-depth must be between 1 and 256")
        if self.mem_sample < 0:
            raise UsageError("--mem-sample must be a positive number of bytes")


def make_session_dir() -> str:
    """A private (0700) directory, on tmpfs where there is one; stale ones
    of controllers that no longer exist are removed first."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else None
    return private_session_dir(base)


def child_environment(shim: str, session_dir: str, opts: CaptureOptions,
                      in_process_sampler: bool = True) -> Dict[str, str]:
    """The program's environment plus the shim's settings.  ``CTPROF_*``
    variables the user had are dropped: only the controller configures the
    shim.  Without the in-process sampler (``CTPROF_HZ=0``) the shim only
    tracks the heap and the memory maps."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTPROF_")}
    existing = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{existing} {shim}".strip() if existing else shim
    env["CTPROF_SESSION"] = session_dir
    env["CTPROF_HZ"] = str(max(1, int(round(opts.hz)))) if in_process_sampler else "0"
    env["CTPROF_UNWIND"] = opts.unwind
    env["CTPROF_MAX_DEPTH"] = str(opts.max_depth)
    env["CTPROF_RING_MB"] = str(opts.ring_mb)
    if opts.timer:
        env["CTPROF_TIMER"] = opts.timer
    else:
        env.pop("CTPROF_TIMER", None)
    env["CTPROF_MEM_DEPTH"] = str(opts.mem_depth)
    env["CTPROF_MEM_SAMPLE"] = str(opts.mem_sample)
    from . import cpython
    env["CTPROF_PYLAYOUTS"] = cpython.layouts_env()
    return env


class Collector:
    """Discovers ring files in the session directory and drains them."""

    def __init__(self, session_dir: str, shim: str) -> None:
        from . import ring as ringmod
        self.session_dir = session_dir
        self.drain_fn = ringmod.load_drain(shim)
        self.buffer = bytearray(4 << 20)
        self.buffer_address = ringmod.buffer_address(self.buffer)
        self.rings: Dict[str, ringmod.RingFile] = {}
        self.thread_names: Dict[int, Dict[int, str]] = {}
        self.gone_ns: Dict[int, int] = {}
        self._last_names = 0.0
        self._maps_read: Dict[Tuple[int, int], str] = {}
        self._so_far: Dict[int, Tuple[tuple, ProcessInfo]] = {}   # pid -> (what it was made from, it)

    def poll(self, decode: bool = False) -> None:
        from . import ring as ringmod
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

    def processes_so_far(self) -> Dict[int, ProcessInfo]:
        """Each process seen whose maps snapshot of the moment is written,
        as far as symbols need it while the program runs: its executable
        and the maps snapshots known complete so far, as :meth:`finish`
        will read them ("" for the others: the newest complete one is the
        header's maps_written; one below it may still be being written by
        another thread).  The last one is the current one.  (A process
        whose maps changed since its last snapshot -- a dlopen, written
        only when a sample needs it -- is left out meanwhile.)"""
        from ..session import ProcessInfo
        out: Dict[int, ProcessInfo] = {}
        for ring in list(self.rings.values()):
            if not ring.ready():
                continue
            h = ring.header()
            pid = int(h["pid"])
            newest = ring.maps_written()
            if newest != int(h["maps_next"]) - 1 or not self._maps_text(pid, newest, read=True):
                continue
            key = (newest, h["exe"], h["ppid"])
            known = self._so_far.get(pid)
            if known is None or known[0] != key:      # (asked at every poll: made anew only on a change)
                known = self._so_far[pid] = (key, ProcessInfo(
                    pid=pid, ppid=int(h["ppid"]), exe=str(h["exe"]),
                    maps=[self._maps_text(pid, gen) for gen in range(newest + 1)]))
            out[pid] = known[1]
        return out

    def _maps_text(self, pid: int, gen: int, read: bool = False) -> str:
        """The snapshot of a generation known complete (``read``: it is;
        read it if not yet), else ""."""
        text = self._maps_read.get((pid, gen))
        if text is None and read:
            try:
                with open(os.path.join(self.session_dir, f"{pid}.maps.{gen}"), encoding="utf-8",
                          errors="replace") as f:
                    text = f.read()
            except OSError:
                return ""
            self._maps_read[(pid, gen)] = text
        return text or ""

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
        from ..session import ProcessInfo
        from . import ring as ringmod
        h = ring.header()
        pid = int(h["pid"])
        maps: List[str] = []
        for gen in range(int(h["maps_next"])):
            try:
                with open(os.path.join(self.session_dir, f"{pid}.maps.{gen}"), encoding="utf-8", errors="replace") as f:
                    maps.append(f.read())
            except OSError:
                maps.append(maps[-1] if maps else "")
        # Anyone can create files in /tmp: see read_shared_file for the checks.
        perf_map, perf_map_note = read_shared_file(f"/tmp/perf-{pid}.map", process_uid(pid, os.geteuid()))
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
        info.python = ring.python_doc()
        if perf_map_note:
            info.notes.append(perf_map_note)
        return info


def _snapshot_session(argv, opts: CaptureOptions, collector: "Collector", heap, start: float,
                      start_ns: int) -> Session:
    """The session so far, without disturbing the run."""
    from ..session import Session
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


def _needs_signal_sampler(opts: CaptureOptions) -> Optional[str]:
    """Why ``auto`` must sample in the program, or None."""
    if opts.max_depth > KERNEL_MAX_DEPTH:
        return f"--max-depth above {KERNEL_MAX_DEPTH}: deeper than the kernel's stack copy reaches"
    if opts.timer:
        return f"--timer {opts.timer} is a timer of the in-process sampler"
    if opts.unwind == "fp":
        return "--unwind fp walks frame pointers in the program"
    return None


def preloads_shim(opts: CaptureOptions) -> bool:
    """Whether the run loads the shim into the program (``--mem``, the
    signal sampler) as far as the options decide; ``auto`` still falls back
    to the signal sampler where perf events are refused."""
    return opts.memory or opts.sampler == "signal" or (opts.sampler == "auto" and bool(_needs_signal_sampler(opts)))


def _kernel_sampler(opts: CaptureOptions) -> Optional[KernelSampler]:
    """The kernel sampler for this run, or None when the signal sampler is
    to be used (asked for, or chosen by ``auto``)."""
    if opts.sampler == "signal" or (opts.sampler == "auto" and _needs_signal_sampler(opts)):
        return None
    stack_bytes = min(opts.stack_kb * 1024, 65528)
    # Room for a quarter of a second of samples per CPU (a dozen drains).
    want = opts.hz * (stack_bytes + 512) / 4 / mmap.PAGESIZE
    pages = 256
    while pages < want and pages < 4096:
        pages *= 2
    trace = TraceOptions(hz=opts.hz, stack_bytes=stack_bytes, max_depth=opts.max_depth, ring_pages=pages,
                         enable_on_exec=True, off_cpu=opts.off_cpu)
    sampler = KernelSampler(trace, None)     # its unwinder: _give_unwinder, once the program runs
    try:
        sampler.probe()
    except KernelSamplerError as err:
        if opts.sampler == "kernel":
            raise TargetError(f"--sampler kernel: perf_event_open refused ({err.strerror}): "
                              f"{perf_refusal_advice(err.errno)}") from None
        return None
    return sampler


def perf_refusal_advice(err: int) -> str:
    if err in (errno.EACCES, errno.EPERM):
        level = perf.read_sysctl("/proc/sys/kernel/perf_event_paranoid")
        return (f"kernel.perf_event_paranoid is {level}; as root run 'sysctl -w kernel.perf_event_paranoid=2' "
                f"(or give ctprof CAP_PERFMON)")
    return "the kernel lacks perf events, or a seccomp filter forbids perf_event_open"


def _start_under(cmd: List[str], program: str, env: Optional[Dict[str, str]],
                 kernel: Optional[KernelSampler]) -> subprocess.Popen:
    """Start the program.  With the kernel sampler the child waits between
    fork and exec until its events are open (they start counting at its
    exec: ``enable_on_exec``), so the first instruction is covered and the
    events are never on anything but the program."""
    if kernel is None:
        try:
            return subprocess.Popen(cmd, env=env, executable=program)
        except OSError as err:
            raise TargetError(f"cannot run {cmd[0]}: {err.strerror}") from None
    # Popen returns only once the child has exec'd, so the child's pid comes
    # back through a pipe to a thread that opens the events meanwhile.
    pid_read, pid_write = os.pipe()
    go_read, go_write = os.pipe()
    failure: List[BaseException] = []

    def wait_for_controller() -> None:        # runs in the child, before exec
        os.close(go_write)
        os.close(pid_read)
        os.write(pid_write, str(os.getpid()).encode())
        os.close(pid_write)
        if os.read(go_read, 1) != b"1":
            os._exit(127)                      # the controller gave up
        os.close(go_read)

    def open_events() -> None:
        try:
            data = os.read(pid_read, 32)
            if data:
                kernel.follow(int(data))
                kernel.process(int(data))      # starts its clock now
                os.write(go_write, b"1")
        except BaseException as err:  # handed to the main thread
            failure.append(err)
        finally:
            os.close(go_write)
            os.close(pid_read)

    opener = threading.Thread(target=open_events, name="ctprof-open-events", daemon=True)
    opener.start()
    try:
        proc = subprocess.Popen(cmd, env=env, executable=program, preexec_fn=wait_for_controller)
    except OSError as err:
        raise TargetError(f"cannot run {cmd[0]}: {err.strerror}") from None
    finally:
        os.close(pid_write)
        os.close(go_read)
        opener.join()
    if failure:
        proc.wait()
        err = failure[0]
        if isinstance(err, KernelSamplerError):
            raise TargetError(f"cannot sample {cmd[0]}: perf_event_open: {err.strerror}") from None
        raise err
    return proc


class _ExitWatch:
    """Waits up to a poll interval for the program's exit, woken the moment
    it exits: a pidfd (Linux 5.3+) polled for readability.  Popen.wait with
    a timeout instead calls waitpid between growing sleeps (up to 8 ms of a
    20 ms poll): it noticed the exit a few ms late and woke the controller
    several times a poll; it stays the fallback."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.poller = None
        try:
            self.fd: Optional[int] = os.pidfd_open(proc.pid)   # not reaped before we wait: the right process
        except (AttributeError, OSError):
            self.fd = None
            return
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)

    def wait(self, seconds: float) -> None:
        if self.poller is None:
            try:
                self.proc.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                pass
            return
        self.poller.poll(seconds * 1000)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _give_unwinder(kernel: KernelSampler) -> None:
    """The kernel sampler's unwinder, made once the program runs (its
    modules are a good part of what ctprof imports) and before the first
    drain needs it."""
    from ..unwinder import Unwinder
    kernel.use_unwinder(Unwinder(vdso=own_vdso()))


def _warm_up_step(steps) -> None:
    """Run the next of the caller's ``while_running`` steps, if any.  A step
    only prepares what is needed after the program ends (imports): one that
    fails is left for that later use to report, never stops the run."""
    step = next(steps, None)
    if step is None:
        return
    try:
        step()
    except Exception:  # noqa: BLE001 -- see the docstring
        pass


def _exit_note(rc: int) -> Optional[str]:
    if rc >= 0:
        return None
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    return f"the program was killed by {name} (signal {-rc}); its exit status is {128 - rc}"


def _follow_descendants(kernel: KernelSampler, main_pid: int, interrupts: "_Interrupts",
                        say: Optional[Callable[[str], None]]) -> List[str]:
    """After the program exits, keep sampling the processes it left running
    (daemons, background jobs) until they end or Ctrl-C; returns notes.
    Nothing is decided before the records of the last moments are in: a
    process that forked and exited just now has its child's FORK record
    still in flight."""
    t0 = time.monotonic()
    announced = False
    left: List = []
    time.sleep(FOLLOW_SETTLE_SECONDS)
    while True:
        kernel.drain()
        left = kernel.running(exclude=[main_pid])
        if interrupts.count:
            break
        if left and not announced and say:
            announced = True
            names = ", ".join(f"{p.pid} {p.comm}" for p in left[:5]) + (" ..." if len(left) > 5 else "")
            say(f"the program exited; following the {len(left)} process(es) it left running ({names}) "
                f"until they end (Ctrl-C to stop)")
        if not left:
            break
        time.sleep(KERNEL_POLL_SECONDS)
    if left:
        names = ", ".join(f"{p.pid} {p.comm}" for p in left[:5]) + (" ..." if len(left) > 5 else "")
        return [f"{len(left)} process(es) the program started were still running when ctprof stopped "
                f"({names}); their samples until then are kept"]
    if announced:
        return [f"followed the processes the program left running for {time.monotonic() - t0:.2f} s "
                f"after it exited, until they ended"]
    return []


def _merge_kernel_processes(processes: Dict[int, ProcessInfo], stacks: List[RawStack],
                            kernel_procs: Dict[int, ProcessInfo], kernel_stacks: List[RawStack]) -> None:
    """With ``--mem`` the shim's rings describe each process (maps for the
    heap stacks) and the kernel sampler its CPU samples: one ProcessInfo per
    process, the kernel's maps generations appended after the shim's."""
    offset: Dict[int, int] = {}
    for pid, k in kernel_procs.items():
        mine = processes.get(pid)
        if mine is None:
            processes[pid] = k
            continue
        offset[pid] = len(mine.maps)
        mine.maps.extend(k.maps)
        mine.samples += k.samples
        mine.timer = k.timer
        mine.python = k.python or mine.python
        mine.notes.extend(n for n in k.notes if n not in mine.notes)
        for tid, n in k.thread_samples.items():
            mine.thread_samples[tid] = mine.thread_samples.get(tid, 0) + n
        for tid, ns in k.thread_cpu_ns.items():
            mine.thread_cpu_ns[tid] = max(ns, mine.thread_cpu_ns.get(tid, 0))
        for tid, name in k.threads.items():
            mine.threads.setdefault(tid, name)
    for st in kernel_stacks:
        st.gen += offset.get(st.pid, 0)
        stacks.append(st)


def _finish_kernel(kernel: KernelSampler, main_pid: int, end_ns: int) -> Tuple[Dict[int, ProcessInfo], List[RawStack], List[str]]:
    """Last drain, CPU times, and what each process left."""
    kernel.drain(final=True)
    counts = kernel.top_counts()
    kernel.close()
    procs, stacks = kernel.process_infos(end_ns)
    notes: List[str] = []
    kernel.settle_cpu(procs, counts)
    main = procs.get(main_pid)
    if main is not None:
        main.dropped += kernel.lost
    period = 1.0 / kernel.opts.hz
    for p in procs.values():
        if p.samples == 0:
            cpu = sum(p.thread_cpu_ns.values()) / 1e9
            notes.append(f"pid {p.pid} {os.path.basename(p.exe)}: no samples: it used {cpu * 1e3:.1f} ms of CPU, "
                         f"{'less than one sampling period' if cpu < period else 'yet none was sampled'} "
                         f"({period * 1e3:.1f} ms at {kernel.opts.hz:g} Hz)")
        unsampled = [ns for tid, ns in p.thread_cpu_ns.items() if ns and not p.thread_samples.get(tid)]
        if p.samples and unsampled:
            notes.append(f"pid {p.pid} {os.path.basename(p.exe)}: {len(unsampled)} thread(s) that ran "
                         f"{sum(unsampled) / 1e6:.1f} ms of CPU in all got no sample (each ran less than a "
                         f"sampling period, {period * 1e3:.1f} ms; perf record misses them the same way): "
                         f"a higher --hz reaches them")
    if kernel.exclude_kernel:
        notes.append("not privileged for kernel-mode samples (perf_event_paranoid >= 2): "
                     "time inside system calls is not sampled")
    notes.append(f"samples taken by the kernel (nothing of ctprof ran in the program), unwound by ctprof "
                 f"in {kernel.unwind_ns / 1e9:.2f} s of its own CPU")
    return procs, stacks, notes


def run_program(argv: List[str], opts: CaptureOptions,
                on_snapshot: Optional[Callable[[Session], None]] = None,
                say: Optional[Callable[[str], None]] = None,
                while_running: Iterable[Callable[[], object]] = (),
                on_heap_stacks: Optional[Callable[[Dict[int, ProcessInfo], List[Tuple[int, "FlatStacks", int]]],
                                                  None]] = None) -> Session:
    """Run ``argv`` under the sampler until it exits; return the session.

    ``kill -USR2`` on ctprof while the program runs calls ``on_snapshot``
    with the session so far (heap: what is live now).  ``say`` receives
    progress lines meant for a person (following a daemon).
    ``while_running``: steps (callables) run one per poll while the program
    runs, on what is otherwise an idle controller -- the caller's imports of
    what it needs once the program ends, so they are not paid after it
    (steps left when it ends are skipped).  ``on_heap_stacks`` (with the
    heap tracked): called at each of those polls too, with each process's
    maps so far and its heap stacks so far (pid, stacks, how many are
    complete), for work that can be done on them before the end."""
    opts.validate()
    if not argv:
        raise UsageError("no program given (usage: ctprof run [options] -- PROGRAM ARGS...)")
    kernel = _kernel_sampler(opts)
    if kernel is None and opts.off_cpu:
        raise TargetError(f"--off-cpu needs the kernel sampler, which this run cannot use "
                          f"({_needs_signal_sampler(opts) or 'perf events refused: ' + perf_refusal_advice(errno.EACCES)})")
    preload = opts.memory or kernel is None
    program = check_program(argv[0], preload=preload)
    session_dir = make_session_dir() if preload else None
    heap = None
    notes: List[str] = []
    after_exit = contextlib.ExitStack()
    if kernel is None and opts.sampler == "auto":
        why = _needs_signal_sampler(opts) or "perf events refused: " + perf_refusal_advice(errno.EACCES)
        notes.append(f"sampled in the program with a timer signal ({why})")
    try:
        collector = None
        env = None
        if preload:
            from .build import shim_path
            shim = shim_path()  # the controller's own copy: ring drain and heap consumer
            target_shim = shim_path("mem") if opts.memory else shim
            if opts.memory:
                from ..memory.collect import prepare_frame_reader
                prepare_frame_reader()
            collector = Collector(session_dir, shim)
            env = child_environment(target_shim, session_dir, opts, in_process_sampler=kernel is None)
        start = time.time()
        start_ns = time.monotonic_ns()
        if opts.memory:
            from ..memory.collect import HeapCollector
            heap = HeapCollector(session_dir, shim, time.monotonic())
            heap.start_thread()
        proc = _start_under([program] + list(argv[1:]), program, env, kernel)
        exit_watch = _ExitWatch(proc)
        after_exit.callback(exit_watch.close)
        if kernel is not None:
            try:
                _give_unwinder(kernel)
            except BaseException:      # nothing samples it: the program does not run on alone
                proc.kill()
                proc.wait()
                raise
        steps = iter(while_running)
        # With the heap tracked, the drainer needs the spare CPU most while
        # the program starts (a program allocating flat out waits for ring
        # space meanwhile: 12% of the first 0.2 s of bench_memory's loop):
        # the steps wait until it has run a while.
        steps_from = time.monotonic() + (HEAP_WARM_UP_DELAY_SECONDS if opts.memory else 0.0)
        if kernel is not None and kernel.off_cpu_refused:
            notes.append(kernel.off_cpu_refused)        # printed once, with the notes
        poll = KERNEL_POLL_SECONDS if kernel else POLL_SECONDS
        with _Interrupts(proc) as interrupts:
            while proc.poll() is None:
                if kernel:
                    kernel.drain()
                if collector:
                    collector.poll()
                interrupts.tick()
                if interrupts.snapshot_requested:
                    interrupts.snapshot_requested = False
                    if on_snapshot and collector:
                        on_snapshot(_snapshot_session(argv, opts, collector, heap, start, start_ns))
                if time.monotonic() >= steps_from:
                    _warm_up_step(steps)
                    if on_heap_stacks is not None and heap is not None and collector is not None:
                        try:
                            on_heap_stacks(collector.processes_so_far(), heap.stacks_so_far())
                        except Exception:      # work ahead of the end, never worth the run
                            on_heap_stacks = None
                exit_watch.wait(poll)
            if kernel:
                notes += _follow_descendants(kernel, proc.pid, interrupts, say)
            end_ns = time.monotonic_ns()
            # From here to the session: 100,000 heap stacks and raw stacks
            # built, no cycle among them, no collector pass over them
            after_exit.enter_context(paused_collector())
            heap_processes = heap.stop() if heap else {}
            heap = None
            processes = collector.finish(end_ns) if collector else {}
            stacks = collector.raw_stacks if collector else []
            if kernel:
                kprocs, kstacks, knotes = _finish_kernel(kernel, proc.pid, end_ns)
                _merge_kernel_processes(processes, stacks, kprocs, kstacks)
                notes += knotes
        rc = proc.returncode
        from ..session import Session
        session = Session(kind="memory" if opts.memory else "cpu", command=list(argv), hz=float(opts.hz),
                          unwind="dwarf" if kernel else opts.unwind, max_depth=opts.max_depth, start_time=start,
                          wall_s=(end_ns - start_ns) / 1e9, exit_status=128 - rc if rc < 0 else rc,
                          processes=processes, stacks=stacks, mem_sample=opts.mem_sample)
        exit_note = _exit_note(rc)
        if exit_note:
            session.notes.append(exit_note)
        session.notes.extend(notes)
        if opts.memory:
            from ..memory.model import add_heap_to_session
            from .target import own_allocator
            add_heap_to_session(session, heap_processes)
            if own_allocator(program):
                session.notes.append(f"{os.path.basename(program)} defines its own malloc/free (a statically "
                                     f"linked allocator): its heap is invisible to ctprof's hooks, so the memory "
                                     f"figures miss its allocations")
        if interrupts.count:
            # Say what happened: a program may catch or ignore the signal.
            outcome = (f"which was killed by signal {-rc}" if rc < 0 else
                       f"which handled or ignored it and exited by itself with status {rc}")
            session.notes.append(f"interrupted: ctprof passed Ctrl-C/SIGTERM on to the program, {outcome}")
        if not processes:
            session.notes.append("the shim never started in the program (is LD_PRELOAD cleared or ignored?)"
                                 if preload else "no process of the program was seen by the kernel sampler")
        return session
    finally:
        after_exit.close()
        if kernel is not None:
            kernel.close()
        if heap is not None:
            heap.stop()
        if session_dir:
            shutil.rmtree(session_dir, ignore_errors=True)
