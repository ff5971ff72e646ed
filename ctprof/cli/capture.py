"""``ctprof run``: profile a program from start to end."""
from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
import time
from typing import TYPE_CHECKING, Callable, List, Optional

from . import Command, register
from ..capture.launch import CaptureOptions, preloads_shim, run_program
from ..capture.target import check_program
from ..errors import OutputError, UsageError, printable
from ..files import check_outputs, directory_unwritable, fallback_directories, reserve_new_file

# What only runs once the program has ended (resolving, building, saving
# and printing the profile) is imported there, not here: ``ctprof run``
# starts the program as early as it can, and imports these while the
# program runs (finish_imports).
if TYPE_CHECKING:
    from ..fileformat import EncodedSession
    from ..profile import Profile
    from ..session import Session

MIN_HZ, MAX_HZ, WARN_HZ = 10.0, 100000.0, 1000.0


def parse_hz(text: str) -> float:
    try:
        hz = float(text)
    except ValueError:
        raise UsageError(f"--hz must be a number of samples per second, not {text!r}") from None
    if hz != hz or hz < MIN_HZ or hz > MAX_HZ:
        raise UsageError(f"--hz {text} is out of range ({MIN_HZ:g} to {MAX_HZ:g} Hz)")
    return hz


def check_metric(metric, memory: bool, off_cpu: bool = False) -> None:
    """Refuse an unknown --metric before the program runs, not after."""
    if metric is None:
        return
    from ..build import OFF_CPU_UNITS
    from ..memory.model import DETAIL_METRICS, MEMORY_METRICS
    known = ["samples"] + (list(MEMORY_METRICS) + list(DETAIL_METRICS) if memory else []) \
        + (list(OFF_CPU_UNITS) if off_cpu else [])
    if metric not in known:
        hint = ("" if memory or metric not in MEMORY_METRICS else " (memory metrics need --mem)") \
            + (" (wall and offcpu need --off-cpu)" if metric in OFF_CPU_UNITS and not off_cpu else "")
        raise UsageError(f"--metric {metric}: not one of {', '.join(known)}{hint}")


def say(message: str) -> None:
    """One ``ctprof: ...`` line on stderr, control characters escaped."""
    print(f"ctprof: {printable(message)}", file=sys.stderr)


def default_output_name(argv: List[str]) -> str:
    """``ctprof-PROGRAM-YYYYmmdd-HHMMSS.ctprof`` in the current directory,
    created empty here (``-2``, ``-3``... if taken) so that two runs started
    in the same second never pick the same name; saving replaces it."""
    stem = os.path.basename(argv[0]) if argv else "profile"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return reserve_new_file(".", f"ctprof-{stem or 'profile'}-{stamp}", ".ctprof")


def check_run_options(args: argparse.Namespace, program: Optional[str] = None) -> None:
    """Everything about the outputs and the summary that could only fail
    after the run, refused before it starts: ``--top``, ``--threads``, and
    every output path (see :func:`ctprof.files.check_outputs`)."""
    if args.top < 1:
        raise UsageError(f"--top {args.top}: must be at least 1")
    if args.threads is not None and not [s for s in args.threads.split(",") if s.strip()]:
        raise UsageError("--threads needs a thread id, a name pattern or 'main'")
    check_outputs({"-o": args.output, "--svg": args.svg, "--folded": args.folded,
                   "--timeline": getattr(args, "timeline", None)}, program)
    why = None if args.output else directory_unwritable(".")
    if why:
        raise OutputError(f"the profile cannot be saved in the current directory: {why} (use -o)")


def save_profile(output: str, profile: Profile, session: "Session | EncodedSession") -> str:
    """Save the profile at ``output``; if that fails after all (the disk
    filled, the directory vanished), save it in a fallback directory and
    say where: a profile is never lost.  Returns where it went."""
    from ..session import save
    try:
        save(output, profile, session)
        return output
    except OutputError as err:
        failure = str(err)
    base = os.path.basename(output) or "profile.ctprof"
    stem, suffix = (base[:-7], ".ctprof") if base.endswith(".ctprof") and len(base) > 7 else (base, "")
    for directory in fallback_directories(output):
        try:
            path = reserve_new_file(directory, stem, suffix)
        except OutputError:
            continue
        try:
            save(path, profile, session)
        except OutputError:
            _remove_quietly(path)
            continue
        say(f"error: {failure}")
        say(f"the profile was saved to {path} instead")
        return path
    raise OutputError(f"{failure} (no fallback directory was writable either: the profile is lost)")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="PROFILE",
                        help="where to save the profile (default: ctprof-PROGRAM-DATE.ctprof here)")
    parser.add_argument("--svg", metavar="FILE", help="also write a flame graph")
    parser.add_argument("--folded", metavar="FILE", help="also write folded stacks")
    parser.add_argument("--metric", metavar="M",
                        help="value drawn in --svg/--folded: samples (CPU), or with --mem alloc_bytes (default), "
                             "alloc_count, leaked_bytes, reachable_bytes, peak_bytes")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="functions in the summary (default 10)")
    parser.add_argument("--threads", metavar="SPEC",
                        help="keep only these threads: ids, name globs or 'main', comma-separated")
    parser.add_argument("--group-by", choices=("thread", "process"),
                        help="a root frame per thread or process in the flame graph and folded output")
    parser.add_argument("--no-demangle", action="store_true", help="keep raw C++/Rust symbol names")
    parser.add_argument("--lines", action="store_true", help="resolve source files and lines (DWARF), slower")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only where the files went")


def add_off_cpu_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--off-cpu", action="store_true",
                        help="also record where threads wait (blocked or preempted), with the reason: "
                             "metrics wall (on- and off-CPU time) and offcpu; needs perf_event_paranoid <= 1 or root")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hz", default="99", help="samples per CPU-second per thread (default 99)")
    parser.add_argument("--unwind", choices=("auto", "fp", "dwarf"), default="auto",
                        help="stack unwinding: auto (DWARF, frame pointers as fallback), fp, dwarf")
    parser.add_argument("--max-depth", type=int, default=128, metavar="N",
                        help="frames kept per sample, leaf end first (default 128)")
    parser.add_argument("--sampler", choices=("auto", "kernel", "signal"), default="auto",
                        help="kernel: the kernel samples, ctprof unwinds outside the program; signal: a timer "
                             "signal in the program unwinds (any depth); auto (default): kernel, unless perf "
                             "events are refused or --max-depth is above 1024")
    parser.add_argument("--stack-kb", type=int, default=32, metavar="KB",
                        help="kernel sampler: KiB of user stack copied per sample (default 32, at most 63)")
    add_off_cpu_option(parser)
    parser.add_argument("--timer", choices=("perf", "posix", "itimer"), help=argparse.SUPPRESS)
    parser.add_argument("--ring-mb", type=int, default=16, help=argparse.SUPPRESS)


def add_memory_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mem", action="store_true",
                        help="also track every heap allocation: sites, peak, leaks (CPU sampling continues)")
    parser.add_argument("--mem-sample", type=int, default=0, metavar="BYTES",
                        help="sample about one allocation per BYTES allocated instead of tracking all (estimates)")
    parser.add_argument("--mem-depth", type=int, default=32, metavar="N",
                        help="frames kept per allocation stack (default 32)")
    parser.add_argument("--timeline", metavar="FILE", help="with --mem: write a chart of the live heap over time (SVG)")


def finish_capture(session: Session, args: argparse.Namespace, output: Optional[str] = None,
                   live: "Optional[LiveHeap]" = None) -> Profile:
    """Resolve, save and summarise a captured session (shared by run/attach).

    The raw session is encoded for the file first (checked and compressed),
    so its raw stacks can go as they are resolved (``session.stacks`` is
    empty afterwards): a large memory profile's raw stacks and the profile
    built from them never both live whole."""
    # The profile, the raw session and what is written from them are a few
    # million objects without a reference cycle among them: every full pass
    # of the cyclic collector over them is wasted (four of them, 0.31 s
    # after a g++ compile's --mem run).
    from ..fileformat import EncodedSession
    from ..nogc import paused_collector
    with paused_collector():
        encoded = EncodedSession(session)
        try:
            return _finish_capture(session, encoded, args, output, live)
        finally:
            encoded.close()


def finish_imports(args: argparse.Namespace) -> List[Callable[[], object]]:
    """What :func:`finish_capture` will import, and the demangler it will
    load, as steps for ``run_program(while_running=...)``: done while the
    program runs, on the controller's otherwise idle CPU, instead of after
    it ends.  (Each module compiles from source where no bytecode is cached,
    the demangler's lookup runs ``ldconfig``.)"""
    names = ["ctprof.session", "ctprof.symbols", "ctprof.capture.ring", "ctprof.fileformat", "ctprof.build",
             "ctprof.capture.stats", "ctprof.render", "ctprof.memory.timeline"]
    if args.lines or args.group_by:
        names.append("ctprof.processors")
    if getattr(args, "mem", False):
        names += ["ctprof.memory.model", "ctprof.memory.report"]
    steps: List[Callable[[], object]] = [functools.partial(importlib.import_module, name) for name in names]
    if not args.no_demangle:
        steps.append(_load_demangler)
    return steps


class LiveHeap:
    """The heap stacks' frames made while the program runs
    (:class:`~ctprof.symbols.live.LiveHeapFrames`), created at the first
    poll: its imports are not paid before the program starts.  If the
    step raises, the run calls it no more and ``frames`` stays None: the
    end resolves everything itself."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.demangle = not args.no_demangle
        self.frames = None

    def step(self, processes, stacks) -> None:
        if self.frames is None:
            from ..symbols.live import LiveHeapFrames
            self.frames = LiveHeapFrames(demangle=self.demangle)
        self.frames.step(processes, stacks)


def _load_demangler() -> None:
    from ..symbols import demangle
    demangle.available()


def _finish_capture(session: Session, encoded: "EncodedSession", args: argparse.Namespace,
                    output: Optional[str], live: "Optional[LiveHeap]" = None) -> Profile:
    from ..build import finish_profile
    from ..capture.stats import overhead_lines, select_threads
    from ..render import top_text, write_folded, write_svg
    from ..symbols import resolve_session

    profile = finish_profile(resolve_session(session, demangle=not args.no_demangle, lines=args.lines,
                                             consume=True, live=live.frames if live else None), session)
    if args.threads:
        profile = select_threads(profile, args.threads)
    view = profile
    if args.lines:  # frames named 'f (x.c)', one per function (the saved profile keeps every line)
        from ..processors import source_positions
        view = source_positions(profile)
    if args.group_by:
        from ..processors import group_by
        view = group_by(view, args.group_by)

    output = output or args.output or default_output_name(session.command)
    output = save_profile(output, profile, encoded)
    written = [f"profile: {output}"]
    metric = getattr(args, "metric", None) or profile.default_metric()
    # run/attach refuse an unknown --metric before capturing (check_metric);
    # this catches the rest only after the profile itself is safely saved.
    profile.column(metric)
    from ..memory.timeline import write_timeline
    extras = [(args.svg, f"flame graph ({metric})", lambda path: write_svg(view, path, metric=metric)),
              (args.folded, f"folded stacks ({metric})", lambda path: write_folded(view, path, metric)),
              (getattr(args, "timeline", None), "live heap timeline", lambda path: write_timeline(profile, path))]
    for path, what, write in extras:
        if not path:
            continue
        try:
            write(path)
            written.append(f"{what}: {path}")
        except OutputError as err:  # checked before the run; the saved profile can redo it
            say(f"error: {err} (the profile has everything: ctprof svg/folded {output})")

    if not args.quiet:
        if session.kind == "memory":
            from ..memory.report import memory_report
            print(printable(memory_report(profile, args.top), keep_newlines=True), file=sys.stderr, end="")
        from ..render.top import off_cpu_text
        print(printable(off_cpu_text(view, min(args.top, 5)), keep_newlines=True), file=sys.stderr, end="")
        if profile.total("samples"):
            print(top_text(view, "samples", args.top), file=sys.stderr)
        elif session.kind != "memory":
            say(f"no samples: the program used {profile.metadata.get('cpu_s', 0):.3f} s of CPU "
                f"(at {session.hz:g} Hz a sample needs about {1 / session.hz:.3f} s); try a higher --hz")
        for line in overhead_lines(session):
            # A --mem run too short for a CPU sample: no "0 samples at 0 Hz" lines, only the notes.
            if session.kind != "memory" or profile.total("samples") or line.lstrip().startswith("note:"):
                say(line)
    for line in written:
        say(line)
    return profile


@register
class RunCommand(Command):
    name = "run"
    help = "run a program under the sampling profiler and save its profile"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_sampling_options(parser)
        add_memory_options(parser)
        add_output_options(parser)
        parser.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM ARGS...")

    def run(self, args: argparse.Namespace) -> int:
        argv = list(args.program)
        if argv and argv[0] == "--":
            argv = argv[1:]
        if not argv:
            raise UsageError("no program given (usage: ctprof run [options] -- PROGRAM ARGS...)")
        hz = parse_hz(args.hz)
        if hz > WARN_HZ:
            say(f"warning: {hz:g} Hz is above {WARN_HZ:g} Hz; expect the sampling itself to slow the program")
        if (args.mem_sample or args.timeline) and not args.mem:
            raise UsageError("--mem-sample and --timeline need --mem")
        check_metric(args.metric, args.mem, args.off_cpu)
        opts = CaptureOptions(hz=hz, unwind=args.unwind, max_depth=args.max_depth, timer=args.timer,
                              sampler=args.sampler, stack_kb=args.stack_kb, off_cpu=args.off_cpu,
                              ring_mb=args.ring_mb, memory=args.mem, mem_depth=args.mem_depth, mem_sample=args.mem_sample)
        opts.validate()
        check_run_options(args, check_program(argv[0], preload=preloads_shim(opts)))
        # Named before the run, so snapshots taken during it can be named after it.
        output = args.output or default_output_name(argv)
        snapshots = []

        def write_snapshot(partial: Session) -> None:
            from ..build import build_profile
            from ..session import save
            snap = build_profile(partial, demangle=not args.no_demangle, progress=False)
            path = f"{output}.snapshot{len(snapshots) + 1}"
            try:
                save(path, snap, partial)
            except OutputError as err:  # the run goes on
                say(f"error: snapshot not saved: {err}")
                return
            snapshots.append(path)
            say(f"snapshot: {path}")

        # Without --lines (inlined frames are expanded at the end), the
        # heap stacks' frames are made while the program runs.
        live = LiveHeap(args) if args.mem and not args.lines else None
        try:
            session = run_program(argv, opts, on_snapshot=write_snapshot, say=say,
                                  while_running=finish_imports(args), on_heap_stacks=live.step if live else None)
        except BaseException:
            if not args.output:  # the reserved default name, still empty
                _remove_quietly(output)
            raise
        finish_capture(session, args, output, live)
        return session.exit_status if session.exit_status is not None else 0
