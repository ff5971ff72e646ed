"""The importable API: ``ctprof.run``, ``ctprof.attach``, ``ctprof.load`` and
``ctprof.profile``.

Every entry point returns a :class:`Result`: the resolved profile (frames,
stacks, values, metadata) with what the command line offers on top of it
(``top``, ``folded``, ``write_svg``, ``write``) and, for captures, the raw
session and the program's exit status.  Every error is a
:class:`~ctprof.errors.CtprofError` (subclasses: ``UsageError`` for bad
arguments, ``TargetError``, ``AttachError``, ``BuildError``,
``FormatError``) whose ``str()`` is one clear line.

Example::

    import ctprof
    result = ctprof.run(["./app", "--fast"], hz=499)
    for row in result.top(5):
        print(row["function"], row["self_percent"])
    result.write_svg("app.svg")

    with ctprof.profile(hz=999) as p:
        work()
    print(p.result.folded())
"""
from __future__ import annotations

import functools
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union

from .errors import CtprofError, UsageError
from .files import check_outputs
from .profile import Frame, Profile

if TYPE_CHECKING:  # the session module is imported once a run has one, not before the program starts
    from .session import Session

__all__ = ["Result", "run", "attach", "load", "profile", "Profiler"]

F = TypeVar("F", bound=Callable[..., Any])
ThreadSpec = Union[threading.Thread, int, str]

#: Output formats of :meth:`Result.write`, by name and by file extension.
FORMATS = ("ctprof", "folded", "speedscope", "pprof", "svg")
_EXTENSIONS = ((".speedscope.json", "speedscope"), (".pb.gz", "pprof"), (".pprof", "pprof"),
               (".folded", "folded"), (".txt", "folded"), (".svg", "svg"), (".ctprof", "ctprof"))


class Result:
    """A profile and what produced it.

    Plain data for your own analysis: :attr:`frames` (list of
    :class:`~ctprof.Frame`: name, module, category, file, line),
    :attr:`stacks` (tuples of frame indexes, root first), :attr:`values`
    (metric name -> one number per stack; ``samples`` for CPU profiles),
    :attr:`tids`/:attr:`pids` (per stack, or None), :attr:`metadata`.
    :attr:`exit_status` is the program's exit status for :func:`run` (128+N
    if signal N killed it), else None.
    """

    def __init__(self, profile: Profile, session: Optional[Session] = None,
                 exit_status: Optional[int] = None) -> None:
        self.profile = profile
        self.session = session
        self.exit_status = exit_status

    # -- plain data -----------------------------------------------------------
    @property
    def frames(self) -> List[Frame]:
        return self.profile.frames

    @property
    def stacks(self) -> List[Tuple[int, ...]]:
        return self.profile.stacks

    @property
    def values(self) -> Dict[str, List[int]]:
        return self.profile.values

    @property
    def pids(self) -> Optional[List[Optional[int]]]:
        return self.profile.pids

    @property
    def tids(self) -> Optional[List[Optional[int]]]:
        return self.profile.tids

    @property
    def metadata(self) -> Dict[str, object]:
        return self.profile.metadata

    @property
    def metrics(self) -> List[str]:
        """Value columns in this profile (``samples``; memory: ``alloc_bytes`` ...)."""
        return self.profile.metrics

    def total(self, metric: Optional[str] = None) -> int:
        """Sum of ``metric`` (default: the profile's default metric) over all stacks."""
        return self.profile.total(metric)

    def named_stacks(self, metric: Optional[str] = None) -> List[Tuple[Tuple[str, ...], int]]:
        """``[(frame names root first, value), ...]`` for stacks with a non-zero value."""
        return list(self.profile.named_stacks(metric))

    # -- what the command line shows -------------------------------------------
    def top(self, n: int = 10, metric: Optional[str] = None, by: str = "self") -> List[Dict[str, object]]:
        """The ``n`` hottest functions, as dictionaries with ``function``,
        ``module``, ``self``, ``self_percent``, ``total``, ``total_percent``;
        sorted by ``by`` ("self" or "total")."""
        from .render.top import function_totals
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise UsageError(f"top(n): n must be a non-negative integer, not {n!r}")
        if by not in ("self", "total"):
            raise UsageError(f"top(by=...) must be 'self' or 'total', not {by!r}")
        self_v, total_v, grand = function_totals(self.profile, metric)
        primary, secondary = (self_v, total_v) if by == "self" else (total_v, self_v)
        keys = sorted(primary, key=lambda k: (-primary[k], -secondary.get(k, 0), k))[:n]
        pct = (lambda v: round(100.0 * v / grand, 2)) if grand else (lambda v: 0.0)
        return [{"function": k[0], "module": k[1], "self": self_v.get(k, 0), "self_percent": pct(self_v.get(k, 0)),
                 "total": total_v.get(k, 0), "total_percent": pct(total_v.get(k, 0))} for k in keys]

    def top_text(self, n: int = 10, metric: Optional[str] = None) -> str:
        """The two-part table ``ctprof report`` prints."""
        from .render import top_text
        return top_text(self.profile, metric, n)

    def folded(self, metric: Optional[str] = None) -> str:
        """Folded stacks (``root;...;leaf COUNT`` lines), flamegraph.pl compatible."""
        from .render.folded import folded_lines
        return "".join(line + "\n" for line in folded_lines(self.profile, metric))

    def write_svg(self, path: str, inverted: bool = False, title: Optional[str] = None,
                  metric: Optional[str] = None, **options: Any) -> str:
        """Write an interactive flame graph (``inverted``: icicle graph);
        other keywords are :class:`ctprof.render.SvgOptions` fields
        (``width``, ``minwidth``, ``countname`` ...).  Returns ``path``."""
        from .render import SvgOptions, write_svg
        fields = set(SvgOptions.__dataclass_fields__)  # type: ignore[attr-defined]
        unknown = sorted(set(options) - fields)
        if unknown:
            raise UsageError(f"write_svg: unknown option {unknown[0]!r} (known: {', '.join(sorted(fields))})")
        self._check_metric(metric)
        write_svg(self.profile, path, inverted=inverted, title=title, metric=metric, **options)
        return path

    def write(self, path: str, format: Optional[str] = None, metric: Optional[str] = None) -> str:
        """Write the profile as ``format`` (``ctprof``, ``folded``,
        ``speedscope``, ``pprof`` or ``svg``; default: from the file
        extension, else ``ctprof``).  Returns ``path``."""
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"write: path must be a file name, not {type(path).__name__}")
        path = os.fspath(path)
        if format is None:
            format = next((f for ext, f in _EXTENSIONS if path.endswith(ext)), "ctprof")
        if format not in FORMATS:
            raise UsageError(f"unknown format {format!r} (choose from {', '.join(FORMATS)})")
        self._check_metric(metric)
        if format == "ctprof":
            from .session import save
            save(path, self.profile, self.session)
        else:
            from .render import export
            export(self.profile, path, format, metric)
        return path

    def save(self, path: str) -> str:
        """Save as a ``.ctprof`` profile (``ctprof report/svg`` read it back)."""
        return self.write(path, "ctprof")

    def _check_metric(self, metric: Optional[str]) -> None:
        if metric is not None:
            self.profile.column(metric)

    # -- memory ------------------------------------------------------------------
    def leaks(self, n: int = 10) -> List[Dict[str, object]]:
        """Memory profiles: the ``n`` functions that leaked most (definitely
        plus indirectly lost bytes at exit), as :meth:`top` rows."""
        return self._memory_top("leaked_bytes", n)

    def peak(self, n: int = 10) -> List[Dict[str, object]]:
        """Memory profiles: the ``n`` functions holding most bytes at the
        heap's high-water mark, as :meth:`top` rows."""
        return self._memory_top("peak_bytes", n)

    def _memory_top(self, metric: str, n: int) -> List[Dict[str, object]]:
        if metric not in self.profile.values:
            raise UsageError(f"this is not a memory profile with {metric} (it has: "
                             f"{', '.join(self.profile.values) or 'nothing'}); use ctprof.run(..., memory=True)")
        return self.top(n, metric, by="self")

    def select_threads(self, spec: str) -> "Result":
        """A new result with only the threads in ``spec`` (ids, name globs,
        ``main``, comma-separated), as ``ctprof run --threads``."""
        from .capture.stats import select_threads
        return Result(select_threads(self.profile, spec), self.session, self.exit_status)

    def __repr__(self) -> str:
        metric = self.profile.default_metric() if self.profile.values else "samples"
        total = self.profile.total(metric) if self.profile.values else 0
        return (f"<ctprof.Result {self.metadata.get('kind', 'profile')}: {total} {metric}, "
                f"{len(self.frames)} frames, {len(self.stacks)} stacks"
                + (f", exit status {self.exit_status}" if self.exit_status is not None else "") + ">")


# -- argument checks ---------------------------------------------------------------

def _check_hz(hz: object) -> float:
    if isinstance(hz, bool) or not isinstance(hz, (int, float)):
        raise UsageError(f"hz must be a number of samples per second, not {hz!r}")
    value = float(hz)
    if value != value or not 10 <= value <= 100000:
        raise UsageError(f"hz={hz} is out of range (10 to 100000 samples per second)")
    return value


def _check_depth(max_depth: object) -> int:
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 1 <= max_depth <= 65536:
        raise UsageError(f"max_depth must be an integer from 1 to 65536, not {max_depth!r}")
    return max_depth


def _check_unwind(unwind: object) -> str:
    if unwind not in ("auto", "fp", "dwarf"):
        raise UsageError(f"unwind must be 'auto', 'fp' or 'dwarf', not {unwind!r}")
    return unwind  # type: ignore[return-value]


def _finish(session: Session, demangle: bool, lines: bool, threads: Optional[str],
            output: Optional[str]) -> Result:
    from .build import build_profile
    from .capture.stats import select_threads
    profile = build_profile(session, demangle=demangle, lines=lines, progress=False)
    if threads:
        profile = select_threads(profile, threads)
    result = Result(profile, session, session.exit_status)
    if output:
        result.write(output)
    return result


# -- entry points ------------------------------------------------------------------

def run(argv: Sequence[str], *, hz: float = 99.0, memory: bool = False, unwind: str = "auto",
        max_depth: int = 128, threads: Optional[str] = None, demangle: bool = True, lines: bool = False,
        output: Optional[str] = None, sampler: str = "auto") -> Result:
    """Run the command ``argv`` (a list: program and arguments) under the
    sampling profiler until it exits, and return its profile.

    The program shares this process's stdin/stdout/stderr.  ``hz``: samples
    per CPU-second per thread (10 to 100000).  ``memory``: also profile heap
    allocations: sites, peak, leaks (``leaks()``, ``peak()``).  ``unwind``:
    ``auto``, ``fp`` or ``dwarf``.  ``max_depth``: frames kept per sample.
    ``threads``: keep only these threads (ids, name globs, ``main``).
    ``demangle``/``lines``: symbol options as on the command line.
    ``output``: also save the profile there (format from the extension).
    ``sampler``: ``auto`` (default), ``kernel`` (the kernel samples, ctprof
    unwinds outside the program) or ``signal`` (in-process, any depth).
    ``result.exit_status`` is the program's exit status.
    """
    from .capture.launch import CaptureOptions, run_program
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence) or not argv:
        raise UsageError("argv must be a non-empty list of strings: the program and its arguments, "
                         "e.g. ['./app', '--flag']")
    if not all(isinstance(a, (str, os.PathLike)) for a in argv):
        raise UsageError("argv must contain only strings")
    options: Dict[str, Any] = dict(hz=_check_hz(hz), unwind=_check_unwind(unwind), max_depth=_check_depth(max_depth))
    options["memory"] = bool(memory)
    if sampler not in ("auto", "kernel", "signal"):
        raise UsageError(f"sampler must be 'auto', 'kernel' or 'signal', not {sampler!r}")
    options["sampler"] = sampler
    check_outputs({"output": output})  # before the run, not after it
    session = run_program([os.fspath(a) for a in argv], CaptureOptions(**options))
    return _finish(session, demangle, lines, threads, output)


def attach(pid: int, *, duration: Optional[float] = None, hz: float = 99.0, max_depth: int = 128,
           threads: Optional[str] = None, demangle: bool = True, lines: bool = False,
           output: Optional[str] = None, stack_kb: int = 32) -> Result:
    """Sample the running process ``pid`` (every thread, also threads it
    starts meanwhile) for ``duration`` seconds, or until it exits or
    KeyboardInterrupt when ``duration`` is None; then detach, leaving the
    process as it was, and return its profile.  Raises
    :class:`~ctprof.errors.AttachError` for a missing process or missing
    permission.  ``stack_kb``: user stack copied per sample for unwinding."""
    from .capture.attach import AttachOptions, attach_process
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise UsageError(f"pid must be a positive integer, not {pid!r}")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not duration > 0:
            raise UsageError(f"duration must be a positive number of seconds, not {duration!r}")
    opts = AttachOptions(hz=_check_hz(hz), duration=None if duration is None else float(duration),
                         max_depth=_check_depth(max_depth), stack_kb=stack_kb)
    check_outputs({"output": output})  # before sampling, not after it
    session = attach_process(pid, opts)
    return _finish(session, demangle, lines, threads, output)


def load(path: str) -> Result:
    """Read a saved ``.ctprof`` profile or a folded-stacks file
    (flamegraph.pl format).  Raises :class:`~ctprof.errors.FormatError` for
    a malformed file, :class:`~ctprof.errors.UsageError` for a missing one."""
    from . import session as _session
    from .render import load_any
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"load: path must be a file name, not {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isfile(path) and _session.is_profile_file(path):
        profile, sess = _session.load(path)
        return Result(profile, sess, profile.metadata.get("exit_status") if isinstance(
            profile.metadata.get("exit_status"), int) else None)
    return Result(load_any(path))


class Profiler:
    """Self-profiling of this Python process: a context manager and a
    decorator (see :func:`profile`).  After the block, :attr:`result` holds
    the :class:`Result` (``results``: one per use)."""

    def __init__(self, hz: float = 99.0, threads: Union[None, ThreadSpec, Iterable[ThreadSpec]] = None,
                 max_depth: int = 128, python: bool = True, unwind: str = "auto",
                 output: Optional[str] = None) -> None:
        self.hz = _check_hz(hz)
        self.threads = threads
        self.max_depth = _check_depth(max_depth)
        self.python = bool(python)
        self.unwind = _check_unwind(unwind)
        self.output = output
        self.result: Optional[Result] = None
        self.results: List[Result] = []
        self._sampler = None
        # Validate the selection now, where the mistake is.
        from .capture.selfprof import ThreadSelection
        ThreadSelection(threads)

    def start(self) -> "Profiler":
        """Start sampling (what entering the ``with`` block does)."""
        from .capture.selfprof import SelfSampler
        if self._sampler is not None:
            raise CtprofError("this profiler is already running")
        sampler = SelfSampler(self.hz, self.threads, self.max_depth, self.python, self.unwind)
        sampler.start()
        self._sampler = sampler
        return self

    def stop(self) -> Result:
        """Stop sampling and return the :class:`Result`."""
        sampler = self._sampler
        if sampler is None:
            raise CtprofError("this profiler is not running")
        self._sampler = None
        session, prof = sampler.stop()
        from .build import finish_profile
        finish_profile(prof, session)
        prof.metadata["python_frames"] = sampler.python_frames
        result = Result(prof, session)
        self.result = result
        self.results.append(result)
        if self.output:
            result.write(self.output)
        return result

    def __enter__(self) -> "Profiler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)
        wrapper.profiler = self  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    # Convenience: the last result's views.
    def top(self, n: int = 10, metric: Optional[str] = None, by: str = "self") -> List[Dict[str, object]]:
        return self._last().top(n, metric, by)

    def folded(self, metric: Optional[str] = None) -> str:
        return self._last().folded(metric)

    def write_svg(self, path: str, inverted: bool = False, **options: Any) -> str:
        return self._last().write_svg(path, inverted=inverted, **options)

    def write(self, path: str, format: Optional[str] = None, metric: Optional[str] = None) -> str:
        return self._last().write(path, format, metric)

    def _last(self) -> Result:
        if self.result is None:
            raise CtprofError("no profile yet: use the profiler in a with block or as a decorator first")
        return self.result


def profile(hz: float = 99.0, threads: Union[None, ThreadSpec, Iterable[ThreadSpec]] = None, *,
            max_depth: int = 128, python: bool = True, unwind: str = "auto",
            output: Optional[str] = None) -> Profiler:
    """Profile this Python process::

        with ctprof.profile(hz=999) as p:
            work()
        p.result.write_svg("work.svg")

        @ctprof.profile(threads="worker-*", output="job.ctprof")
        def job(): ...

    Samples native frames (C extensions, libraries) and, on CPython
    3.11/3.12, the Python frames too (``module.function (file:line)``) in
    their place in each stack.  ``threads``: None samples every thread
    (also threads started meanwhile); else a ``threading.Thread``, a thread
    ident or native id, a name glob, or a list of them: other threads are
    not sampled.  ``python=False`` records native frames only.  ``output``:
    save each result there (format from the extension).
    """
    return Profiler(hz, threads, max_depth=max_depth, python=python, unwind=unwind, output=output)
