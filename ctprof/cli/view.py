"""Subcommands that read a saved profile (or folded stacks) and render it:
``svg``, ``folded``, ``report``, ``export``, ``diff``."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UsageError, printable
from . import Command, register


def _add_metric(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", metavar="M",
                        help="value to show: samples (CPU); alloc_bytes, alloc_count, leaked_bytes, "
                             "reachable_bytes, peak_bytes (memory). Default: the profile's own")


def _add_processors(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("transforms")
    g.add_argument("--group-by", choices=("thread", "process"), help="a root frame per thread or process")
    g.add_argument("--drop", metavar="REGEX", help="remove frames whose name matches (callees move up)")
    g.add_argument("--collapse", metavar="REGEX",
                   help="fold everything a matching frame calls into it (e.g. '^std::')")
    g.add_argument("--max-depth", type=int, metavar="N", help="keep at most N frames from the root")
    g.add_argument("--lines", action="store_true",
                   help="name frames with their source file, 'f (x.c)' (from DWARF; a profile saved without "
                        "lines is re-resolved from its raw addresses)")
    g.add_argument("--by-line", action="store_true",
                   help="with --lines: one frame per source line, 'f (x.c:12)', instead of one per function")
    g.add_argument("--no-group", action="store_true",
                   help="stripped code as one frame per address (lib.so+0xADDR) instead of one per function "
                        "(re-resolved from the saved raw addresses)")


def _lines_mode(args: argparse.Namespace):
    """ProcessOptions.lines for --lines / --by-line."""
    if getattr(args, "by_line", False):
        return "line"
    return "file" if getattr(args, "lines", False) else None


def _load(args: argparse.Namespace, path: str):
    """The profile at ``path``.  With --lines, one saved without source
    lines, and with --no-group any, is resolved again from the raw addresses
    and maps it keeps."""
    from ..render import load_any
    lines, ungrouped = bool(_lines_mode(args)), getattr(args, "no_group", False)
    if not (lines or ungrouped) or path == "-" or not os.path.isfile(path):
        return load_any(path)
    from .. import session as saved
    if not saved.is_profile_file(path):
        return load_any(path)
    profile, session = saved.load(path)
    has_lines = any(f.file for f in profile.frames)
    if (session is None or not session.stacks or (has_lines or not lines) and not ungrouped
            or any(f.category == "python" for f in profile.frames)):   # Python frames exist only resolved
        return profile
    from ..build import finish_profile
    from ..symbols import resolve_session
    return finish_profile(resolve_session(session, lines=lines or has_lines, group_functions=not ungrouped),
                          session)


def _processed(args: argparse.Namespace, path: str, invert: bool = False, positions: bool = True):
    """The profile at ``path`` through the transforms the options ask for
    (``positions=False``: frames keep their plain names and file/line)."""
    from ..processors import ProcessOptions, apply
    profile = _load(args, path)
    options = ProcessOptions(group_by=getattr(args, "group_by", None), drop=getattr(args, "drop", None),
                             collapse=getattr(args, "collapse", None), max_depth=getattr(args, "max_depth", None),
                             invert=invert, lines=_lines_mode(args) if positions else None)
    return apply(profile, options)


def _add_svg_look(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--title", metavar="T", help="heading (default: Flame Graph)")
    parser.add_argument("--width", type=int, default=1200, metavar="PX", help="image width (default 1200)")
    parser.add_argument("--minwidth", default="0.1", metavar="PX|PCT%",
                        help="leave out frames narrower than this many px, or this share of the total "
                             "with a %% sign (default 0.1)")
    parser.add_argument("--height", type=int, default=16, metavar="PX", help="frame height (default 16)")
    parser.add_argument("--countname", metavar="WORD", help="unit word in tooltips (default: samples/bytes)")


def _add_graph_arguments(parser: argparse.ArgumentParser, default_name: str) -> None:
    """What ``svg`` and ``diff`` share after their inputs: -o (``default_name``
    when stdout is a terminal), metric, --inverted, the look of the graph and
    the transforms."""
    parser.add_argument("-o", "--output", metavar="FILE.svg",
                        help=f"output file ('-' = stdout; default: stdout when redirected, else {default_name})")
    _add_metric(parser)
    parser.add_argument("--inverted", action="store_true", help="icicle graph: leaves merged at the top")
    _add_svg_look(parser)
    _add_processors(parser)


def _svg_options(args: argparse.Namespace, inverted: bool = False):
    from ..render import SvgOptions
    minwidth = args.minwidth
    if not str(minwidth).strip().endswith("%"):
        try:
            minwidth = float(minwidth)
        except ValueError:
            raise UsageError(f"--minwidth {args.minwidth!r}: expected pixels (0.1) or a percentage (0.5%)") from None
    if args.width < 100:
        raise UsageError(f"--width {args.width}: must be at least 100")
    if args.height < 4:
        raise UsageError(f"--height {args.height}: must be at least 4")
    return SvgOptions(title=args.title, width=args.width, minwidth=minwidth, frame_height=args.height,
                      countname=args.countname, inverted=inverted, metric=args.metric)


def _default_output(input_path: str, suffix: str) -> str:
    """Where to write when -o is not given and stdout is a terminal."""
    base = "stdin" if input_path == "-" else os.path.basename(input_path)
    for ext in (".gz", ".ctprof", ".folded", ".txt", ".prof"):
        if base.endswith(ext) and len(base) > len(ext):
            base = base[:-len(ext)]
    return base + suffix


def _output(args: argparse.Namespace, input_path: str, suffix: str, default: str = "") -> str:
    """-o if given, else stdout when redirected, else ``default`` or a name
    made from the input's."""
    if args.output:
        return args.output
    if not sys.stdout.isatty():
        return "-"
    return default or _default_output(input_path, suffix)


def _said(path: str, what: str) -> None:
    if path != "-":
        print(f"ctprof: wrote {what} to {printable(path)}", file=sys.stderr)


@register
class SvgCommand(Command):
    name = "svg"
    help = "interactive SVG flame graph of a profile or folded stacks"

    def prepare_parser(self, parser):
        parser.add_argument("profile", metavar="PROFILE|FOLDED", help="ctprof profile or folded stacks ('-' = stdin)")
        _add_graph_arguments(parser, "NAME.svg")

    def run(self, args):
        from ..render import write_svg
        # Inverted here, before --group-by adds its roots; write_svg sees
        # metadata["inverted"] and does not invert again.
        profile = _processed(args, args.profile, invert=args.inverted)
        out = _output(args, args.profile, ".svg")
        write_svg(profile, out, _svg_options(args, inverted=args.inverted))
        _said(out, "flame graph")
        return 0


@register
class FoldedCommand(Command):
    name = "folded"
    help = "folded stacks (root;...;leaf COUNT), as flamegraph.pl reads them"

    def prepare_parser(self, parser):
        parser.add_argument("profile", metavar="PROFILE|FOLDED")
        parser.add_argument("-o", "--output", metavar="FILE", default="-", help="output file (default stdout)")
        _add_metric(parser)
        _add_processors(parser)

    def run(self, args):
        from ..render import write_folded
        profile = _processed(args, args.profile)
        write_folded(profile, args.output, args.metric)
        _said(args.output, "folded stacks")
        return 0


@register
class ReportCommand(Command):
    name = "report"
    help = "top-N functions by self and total"

    def prepare_parser(self, parser):
        parser.add_argument("profile", metavar="PROFILE|FOLDED")
        _add_metric(parser)
        parser.add_argument("--top", type=int, default=10, metavar="N", help="rows per table (default 10)")
        parser.add_argument("--callers", metavar="REGEX",
                            help="who calls the functions matching REGEX, with shares (as pprof -peek)")
        parser.add_argument("--callees", metavar="REGEX",
                            help="what the functions matching REGEX call, with shares")
        _add_processors(parser)

    def run(self, args):
        from ..processors import source_positions
        from ..render import top_text
        from ..render.top import neighbours_text, off_cpu_text
        if args.top < 1:
            raise UsageError(f"--top {args.top}: must be at least 1")
        # The leak and site tables name file:line themselves, from the frames'
        # own positions; the function tables get the --lines names.
        profile = _processed(args, args.profile, positions=False)
        view = source_positions(profile, _lines_mode(args) == "line") if _lines_mode(args) else profile
        if args.callers or args.callees:
            for pattern, callers in ((args.callers, True), (args.callees, False)):
                if pattern:
                    sys.stdout.write(printable(neighbours_text(view, pattern, callers, args.metric, args.top),
                                               keep_newlines=True))
            sys.stdout.flush()
            return 0
        if profile.metadata.get("memory"):
            from ..memory.report import memory_report
            sys.stdout.write(printable(memory_report(profile, args.top), keep_newlines=True) + "\n")
        sys.stdout.write(printable(off_cpu_text(view, args.top), keep_newlines=True))
        sys.stdout.write(top_text(view, args.metric, args.top))
        sys.stdout.flush()
        return 0


@register
class ExportCommand(Command):
    name = "export"
    help = "write a profile for other tools: folded, speedscope JSON or pprof"

    def prepare_parser(self, parser):
        from ..render import RENDERERS
        parser.add_argument("profile", metavar="PROFILE|FOLDED")
        parser.add_argument("--format", required=True, choices=[n for n in RENDERERS if n != "svg"],
                            help="folded (flamegraph.pl), speedscope (speedscope.app), pprof (go tool pprof)")
        parser.add_argument("-o", "--output", metavar="FILE",
                            help="output file ('-' = stdout; default: stdout when redirected, else NAME.EXT)")
        _add_metric(parser)
        _add_processors(parser)

    def run(self, args):
        from ..render import RENDERERS, export
        renderer = RENDERERS[args.format]
        # pprof has a line table of its own (go tool pprof -lines): its frames
        # keep plain names and their file and line rather than "f (x.c)".
        profile = _processed(args, args.profile, positions=args.format != "pprof")
        out = _output(args, args.profile, renderer.extension)
        export(profile, out, args.format, args.metric)
        _said(out, args.format)
        return 0


@register
class DiffCommand(Command):
    name = "diff"
    help = "differential flame graph: red grew, blue shrank (normalised by total)"

    def prepare_parser(self, parser):
        parser.add_argument("before", metavar="BEFORE", help="profile or folded stacks")
        parser.add_argument("after", metavar="AFTER", help="profile or folded stacks")
        _add_graph_arguments(parser, "diff.svg")

    def run(self, args):
        from ..render import write_diff_svg
        # write_diff_svg never inverts: both sides are inverted here.
        before = _processed(args, args.before, invert=args.inverted)
        after = _processed(args, args.after, invert=args.inverted)
        out = _output(args, args.after, ".svg", default="diff.svg")
        write_diff_svg(before, after, out, _svg_options(args, inverted=args.inverted))
        _said(out, "differential flame graph")
        return 0
