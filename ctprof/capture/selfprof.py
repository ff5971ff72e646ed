"""Self-profiling: sample threads of this Python process (``ctprof.profile``).

The "self" build of the shim (``shim/selfprof.c``, with ``shim/pylocal.c``
reading Python frames by this interpreter's layout from :mod:`.cpython`)
is loaded with ctypes.  A
daemon "ctprof-drain" thread arms a per-thread CPU timer for each selected
thread (perf_event task-clock delivered to that thread, or a POSIX timer on
its CPU clock), drains the ring the signal handler writes into, and watches
for threads that start or end.  Each sample holds the native return
addresses and, on CPython 3.9 to 3.13, the thread's Python frames as (code
object address, instruction index).  At the end the native frames are
symbolised like any other session and the Python frames take the place of
the ``_PyEval_EvalFrameDefault`` frame that ran them, as ``py-spy --native``
shows them.

Code objects are recognised by address: the ones reachable from functions,
generators and running frames are collected (and kept alive, so an address
cannot be reused) at start and whenever an unknown address shows up.
"""
from __future__ import annotations

import ctypes
import fnmatch
import gc
import os
import shutil
import sys
import sysconfig
import threading
import time
import types
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from ..errors import CtprofError, UsageError
from ..profile import Frame, Profile, merge_identical
from ..session import ProcessInfo, Session
from ..symbols.pylines import line_for
from . import cpython
from . import ring as ringmod
from .build import shim_path

REC_PYSAMPLE = 16
PYFRAME_ENTRY = 1 << 32
POLL_SECONDS = 0.02
THREAD_POLL_SECONDS = 0.05
MAPS_POLL_SECONDS = 0.25
TIMER_PERF, TIMER_POSIX = 1, 2

ThreadSpec = Union[threading.Thread, int, str]

_lib_cache: Dict[str, object] = {}
_active_lock = threading.Lock()


def python_layout() -> Optional[List[int]]:
    """The frame layout of this interpreter (:mod:`.cpython`), or None
    when it is not a supported CPython (3.9-3.13, release, with the GIL)."""
    version = sys.version_info[:2]
    if (sys.implementation.name != "cpython" or version not in cpython.LAYOUTS
            or hasattr(sys, "gettotalrefcount") or sysconfig.get_config_var("Py_GIL_DISABLED")):
        return None
    return cpython.Interpreter(version, 0, 0, sys.executable).layout(-1)


def load_library():
    """The compiled "self" shim, loaded once per process."""
    lib = _lib_cache.get("lib")
    if lib is not None:
        return lib
    lib = ctypes.CDLL(shim_path("self"))
    lib.ctprof_self_start.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_int]
    lib.ctprof_self_start.restype = ctypes.c_int
    lib.ctprof_self_add_thread.argtypes = [ctypes.c_int, ctypes.c_ulong]
    lib.ctprof_self_add_thread.restype = ctypes.c_int
    lib.ctprof_self_remove_thread.argtypes = [ctypes.c_int]
    lib.ctprof_self_remove_thread.restype = ctypes.c_int
    lib.ctprof_self_stop.argtypes = []
    lib.ctprof_self_stop.restype = ctypes.c_long
    lib.ctprof_self_python_layout.argtypes = [ctypes.POINTER(ctypes.c_int64)]
    lib.ctprof_self_python_layout.restype = ctypes.c_int
    lib.ctprof_ring_drain.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.ctprof_ring_drain.restype = ctypes.c_size_t
    _lib_cache["lib"] = lib
    return lib


# -- thread selection -------------------------------------------------------------

class ThreadSelection:
    """Which threads to sample: None (every thread, also those started
    later), or threading.Thread objects, thread idents / native ids, and
    name globs (matched again as threads start)."""

    def __init__(self, spec: Union[None, ThreadSpec, Iterable[ThreadSpec]]) -> None:
        self.all = spec is None
        self.threads: List[threading.Thread] = []
        self.ids: Set[int] = set()
        self.names: List[str] = []
        if spec is None:
            return
        if isinstance(spec, (threading.Thread, int, str)):
            items: List[object] = [spec]
        else:
            try:
                items = list(spec)  # type: ignore[arg-type]
            except TypeError:
                raise UsageError(f"threads= takes a threading.Thread, a thread ident or name, or a list "
                                 f"of them, not {type(spec).__name__}") from None
        if not items:
            raise UsageError("threads= is empty: give threads, idents or names (or None for all threads)")
        for item in items:
            if isinstance(item, threading.Thread):
                self.threads.append(item)
            elif isinstance(item, bool) or not isinstance(item, (int, str)):
                raise UsageError(f"threads= takes threading.Thread objects, thread idents or names, "
                                 f"not {type(item).__name__}")
            elif isinstance(item, int):
                self.ids.add(item)
            elif item:
                self.names.append(item)
            else:
                raise UsageError("threads=: an empty thread name")
        live = {t.ident for t in threading.enumerate()} | {t.native_id for t in threading.enumerate()}
        missing = [i for i in self.ids if i not in live and not os.path.isdir(f"/proc/self/task/{i}")]
        if missing:
            raise UsageError(f"threads=: no running thread has ident or id {missing[0]}")

    def current(self, exclude: Set[int]) -> Dict[int, int]:
        """native tid -> pthread id (0 if unknown) of the selected live threads."""
        by_native = {t.native_id: t for t in threading.enumerate() if t.native_id is not None}
        out: Dict[int, int] = {}
        if self.all:
            for tid in _task_ids():
                if tid not in exclude:
                    t = by_native.get(tid)
                    out[tid] = (t.ident or 0) if t else 0
            return out
        for t in threading.enumerate():
            if t.native_id is None or t.native_id in exclude:
                continue
            if (any(t is s for s in self.threads) or t.ident in self.ids or t.native_id in self.ids
                    or any(fnmatch.fnmatchcase(t.name, n) for n in self.names)):
                out[t.native_id] = t.ident or 0
        for tid in self.ids:
            if tid not in out and tid not in exclude and tid not in by_native and os.path.isdir(f"/proc/self/task/{tid}"):
                out[tid] = 0                                    # a native id of a non-Python thread
        return out


def _task_ids() -> List[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task") if t.isdigit()]
    except OSError:
        return []


# -- code objects -----------------------------------------------------------------

class CodeRegistry:
    """Code objects by address, kept alive while the profile is open."""

    def __init__(self) -> None:
        self.codes: Dict[int, types.CodeType] = {}
        self.last_scan = 0.0
        self.module_of_file: Dict[str, str] = {}
        self._lines: Dict[Tuple[int, int], Optional[int]] = {}

    def _add(self, code: types.CodeType) -> None:
        todo = [code]
        while todo:
            c = todo.pop()
            if id(c) in self.codes:
                continue
            self.codes[id(c)] = c
            todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))

    def scan(self) -> None:
        self.last_scan = time.monotonic()
        for obj in gc.get_objects():
            code = getattr(obj, "__code__", None) if isinstance(obj, (types.FunctionType, types.MethodType)) else None
            if code is None and isinstance(obj, (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)):
                code = getattr(obj, "gi_code", None) or getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None)
            if isinstance(code, types.CodeType):
                self._add(code)
        for frame in sys._current_frames().values():
            f: Optional[types.FrameType] = frame
            while f is not None:
                self._add(f.f_code)
                f = f.f_back
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str):
                self.module_of_file.setdefault(path, name)

    def knows(self, address: int) -> bool:
        return address in self.codes

    def line(self, code: types.CodeType, lasti: int) -> Optional[int]:
        key = (id(code), lasti)
        if key in self._lines:
            return self._lines[key]
        table = code.co_lnotab if sys.version_info < (3, 10) else code.co_linetable
        line = line_for(sys.version_info[:2], table, code.co_firstlineno, lasti)
        if line is None:
            line = code.co_firstlineno
        self._lines[key] = line
        return line

    def frame(self, address: int, lasti: int) -> Frame:
        code = self.codes.get(address)
        if code is None:
            return Frame(f"[python code {address:#x}]", "", "python")
        filename = code.co_filename
        module = self.module_of_file.get(filename)
        if module is None:
            base = os.path.basename(filename)
            module = base[:-3] if base.endswith(".py") else base
            self.module_of_file[filename] = module
        line = self.line(code, lasti)
        qualname = getattr(code, "co_qualname", code.co_name)
        name = f"{module}.{qualname} ({os.path.basename(filename)}:{line})"
        return Frame(name, module, "python", filename, line)


# -- the sampler ------------------------------------------------------------------

_UNWIND = {"auto": 0, "fp": 1, "dwarf": 2}


class SelfSampler:
    """One self-profiling session: ``start()``, the code to measure, ``stop()``."""

    def __init__(self, hz: float = 99.0, threads=None, max_depth: int = 128, python: bool = True,
                 unwind: str = "auto", ring_mb: int = 16) -> None:
        self.hz = hz
        self.selection = ThreadSelection(threads)
        self.max_depth = max_depth
        self.python = python
        self.unwind = unwind
        self.ring_mb = ring_mb
        self.codes = CodeRegistry()
        self.raw: Dict[tuple, int] = {}
        self.armed: Dict[int, int] = {}
        self.names: Dict[int, str] = {}
        self.cpu_start: Dict[int, int] = {}
        self.cpu_last: Dict[int, int] = {}
        self.thread_samples: Dict[int, int] = {}
        self.maps: List[str] = []
        self.timer_kinds: Set[int] = set()
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._drainer: Optional[threading.Thread] = None
        self._unknown = False
        self.python_frames = False
        self.session_dir = ""

    # maps / threads -----------------------------------------------------------
    def _snapshot_maps(self) -> None:
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return
        if not self.maps or self.maps[-1] != text:
            self.maps.append(text)

    def _sync_threads(self) -> None:
        exclude = {threading.get_native_id()}
        want = self.selection.current(exclude)
        for tid, ident in want.items():
            if tid not in self.armed:
                kind = self.lib.ctprof_self_add_thread(tid, ident)
                if kind > 0:
                    self.armed[tid] = kind
                    self.timer_kinds.add(kind)
                    self._name(tid)
                elif kind != -3:                                        # ESRCH: it just ended
                    self.errors.append(f"thread {tid}: {os.strerror(-kind)}")
                    self.armed[tid] = 0
        for tid in self.armed:
            cpu = _thread_cpu_ns(tid)
            if cpu:
                self.cpu_last[tid] = cpu
        for tid in list(self.armed):
            if tid not in want:
                if self.armed[tid]:
                    self.lib.ctprof_self_remove_thread(tid)
                del self.armed[tid]

    def _name(self, tid: int) -> None:
        self.cpu_start.setdefault(tid, _thread_cpu_ns(tid))
        for t in threading.enumerate():
            if t.native_id == tid:
                self.names[tid] = t.name
                return
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                self.names[tid] = f.read().strip()
        except OSError:
            pass

    # records ------------------------------------------------------------------
    def _drain(self) -> None:
        ring = self.ring
        while True:
            n = self.lib.ctprof_ring_drain(ring.address, self.buffer_address, len(self.buffer))
            if not n:
                return
            self._decode(memoryview(self.buffer)[:n])

    def _decode(self, buf: memoryview) -> None:
        off, end = 0, len(buf)
        gen = len(self.maps) - 1
        raw = self.raw
        counts = self.thread_samples
        codes = self.codes
        while off + 8 <= end:
            size, rtype, flags = ringmod.REC_HEADER.unpack_from(buf, off)
            if size < 8 or off + size > end:
                break
            if rtype == REC_PYSAMPLE:
                tid, nips, _gen, npy, _t, _cpu = ringmod.SAMPLE_BODY.unpack_from(buf, off + 8)
                start = off + 8 + ringmod.SAMPLE_BODY.size
                words = buf[start:start + 8 * (nips + 2 * npy)].cast("Q")
                ips = tuple(words[:nips])
                py = tuple(words[nips:])
                if not self._unknown:
                    for i in range(0, len(py), 2):
                        if not codes.knows(py[i]):
                            self._unknown = True
                            break
                key = (tid, gen, ips, bool(flags & ringmod.SAMPLE_TRUNCATED), py)
                raw[key] = raw.get(key, 0) + 1
                counts[tid] = counts.get(tid, 0) + 1
            off += size

    def _loop(self) -> None:
        last_threads = last_maps = time.monotonic()
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._drain()
                now = time.monotonic()
                if self._unknown and now - self.codes.last_scan > 0.2:
                    self._unknown = False
                    self.codes.scan()
                if now - last_threads >= THREAD_POLL_SECONDS:
                    last_threads = now
                    self._sync_threads()
                if now - last_maps >= MAPS_POLL_SECONDS:
                    last_maps = now
                    self._snapshot_maps()
            except Exception as err:  # never let the drain thread die silently
                self.errors.append(f"drain: {err}")

    # start / stop ----------------------------------------------------------------
    def start(self) -> None:
        from .launch import make_session_dir
        self.lib = load_library()
        if not _active_lock.acquire(blocking=False):
            raise CtprofError("another ctprof.profile() session is already running in this process")
        try:
            layout = python_layout() if self.python else None
            self.python_frames = bool(layout and self.lib.ctprof_self_python_layout(
                (ctypes.c_int64 * len(layout))(*layout)))
            self.codes.scan()
            self._snapshot_maps()
            self.session_dir = make_session_dir()
            rc = self.lib.ctprof_self_start(self.session_dir.encode(), max(1, int(round(self.hz))), self.max_depth,
                                            128 if self.python_frames else 0, _UNWIND.get(self.unwind, 0),
                                            self.ring_mb)
            if rc != 0:
                raise CtprofError(f"self-profiling could not start: {os.strerror(-rc)}")
            self.ring = ringmod.RingFile(os.path.join(self.session_dir, f"{os.getpid()}.ring"),
                                         self.lib.ctprof_ring_drain)
            self.buffer = bytearray(4 << 20)
            self.buffer_address = ringmod.buffer_address(self.buffer)
            self.wall_start = time.time()
            self.t0 = time.monotonic_ns()
            self._drainer = threading.Thread(target=self._loop, name="ctprof-drain", daemon=True)
            self._drainer.start()
            # Arm the selected threads now, from here, so sampling covers the
            # code right after start(); the drain thread keeps it in sync.
            self._exclude_drainer()
        except BaseException:
            self._cleanup()
            raise

    def _exclude_drainer(self) -> None:
        while self._drainer is not None and self._drainer.native_id is None:
            time.sleep(0.001)
        exclude = {self._drainer.native_id} if self._drainer else set()
        want = self.selection.current(exclude)
        for tid, ident in want.items():
            kind = self.lib.ctprof_self_add_thread(tid, ident)
            if kind > 0:
                self.armed[tid] = kind
                self.timer_kinds.add(kind)
                self._name(tid)

    def _cleanup(self) -> None:
        if getattr(self, "session_dir", ""):
            shutil.rmtree(self.session_dir, ignore_errors=True)
        if _active_lock.locked():
            _active_lock.release()

    def stop(self) -> Tuple[Session, Profile]:
        """Disarm, drain what is left, resolve; returns (session, profile)."""
        self._stop.set()
        if self._drainer is not None:
            self._drainer.join()
        end_ns = time.monotonic_ns()
        for tid in self.armed:
            cpu = _thread_cpu_ns(tid)
            if cpu:
                self.cpu_last[tid] = cpu
        try:
            self.lib.ctprof_self_stop()
            self._drain()
            header = self.ring.header()
            self.ring.close()
        finally:
            self._cleanup()
        self._snapshot_maps()
        if any(not self.codes.knows(k[4][i]) for k in self.raw for i in range(0, len(k[4]), 2)):
            self.codes.scan()
        return self._build(header, end_ns)

    # results ----------------------------------------------------------------------
    def _build(self, header: Dict[str, object], end_ns: int) -> Tuple[Session, Profile]:
        from ..symbols.resolve import Resolver
        pid = os.getpid()
        timers = {TIMER_PERF: "perf_event task-clock", TIMER_POSIX: "timer_create thread CPU clock"}
        info = ProcessInfo(pid=pid, ppid=os.getppid(), exe=sys.executable, maps=list(self.maps),
                           threads=dict(self.names), thread_samples=dict(self.thread_samples),
                           samples=int(header["samples"]), dropped=int(header["dropped"]),
                           handler_ns=int(header["handler_ns"]), wall_ns=end_ns - self.t0,
                           timer=", ".join(timers[k] for k in sorted(self.timer_kinds)) or "none")
        for tid, start in self.cpu_start.items():
            info.thread_cpu_ns[tid] = max(0, self.cpu_last.get(tid, start) - start)
        native: Dict[tuple, int] = {}
        for (tid, gen, ips, truncated, _py), n in self.raw.items():
            k = (tid, gen, ips, truncated)
            native[k] = native.get(k, 0) + n
        stacks = ringmod.raw_stacks(pid, native)
        session = Session(kind="cpu", command=[sys.executable] + sys.argv, hz=float(self.hz), unwind=self.unwind,
                          max_depth=self.max_depth, start_time=self.wall_start, wall_s=(end_ns - self.t0) / 1e9,
                          exit_status=None, processes={pid: info}, stacks=stacks)
        session.notes.append("self-profile of this Python process"
                             + (" with Python frames" if self.python_frames else
                                f" (native frames only: Python frames need {cpython.SUPPORTED})"))
        session.notes.extend(self.errors[:5])

        resolver = Resolver(session, progress=False)
        profile = Profile(metadata={"kind": "cpu"})
        for (tid, gen, ips, truncated, py), n in self.raw.items():
            frames = self._merge(resolver, pid, gen, ips, py)
            if truncated:
                frames.insert(0, Frame("[truncated]", "", "unknown"))
            profile.add(frames, {"samples": n}, pid, tid)
        resolver.close()
        profile = merge_identical(profile)
        if resolver.warnings:
            profile.metadata["symbol_warnings"] = list(resolver.warnings)
        return session, profile

    def _merge(self, resolver, pid: int, gen: int, ips: Sequence[int], py: Sequence[int]) -> List[Frame]:
        """Native frames with each ``_PyEval_EvalFrameDefault`` replaced by the
        Python frames it was running; root first."""
        groups: List[List[Frame]] = []
        cur: List[Frame] = []
        for i in range(0, len(py), 2):
            cur.append(self.codes.frame(py[i], py[i + 1] & 0xFFFFFFFF))
            if py[i + 1] & PYFRAME_ENTRY:
                groups.append(cur)
                cur = []
        if cur:
            groups.append(cur)
        leaf_first: List[Frame] = []
        g = 0
        for i, ip in enumerate(ips):
            frames = resolver.resolve(pid, gen, ip, i > 0)
            if g < len(groups) and any(f.name.startswith("_PyEval_EvalFrameDefault") for f in frames):
                leaf_first.extend(groups[g])
                g += 1
            else:
                leaf_first.extend(reversed(frames))
        for rest in groups[g:]:
            leaf_first.extend(rest)
        leaf_first.reverse()
        return leaf_first


def _thread_cpu_ns(tid: int) -> int:
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
