"""Renderers: a profile in, a file out.

Library API (what ``ctprof run`` calls after a capture)::

    load_any(path) -> Profile                       # ctprof profile or folded text
    write_svg(profile, path, **options)             # options: SvgOptions fields
    write_folded(profile, path_or_file, metric=None)
    top_text(profile, metric=None, n=10) -> str
    export(profile, path, format, metric=None)      # folded | speedscope | pprof | svg
    write_diff_svg(before, after, path, **options)

Every export format is a :class:`Renderer` in :data:`RENDERERS` with its file
extension and whether its output is binary, so the command line needs no
if/elif chain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Callable, Dict, Optional, Union

from ..errors import FormatError, UsageError
from ..files import write_output
from ..profile import Profile
from .diff import diff_svg_text, write_diff_svg
from .folded import folded_text, parse_folded, write_folded
from .pprof import pprof_gzip
from .speedscope import speedscope_json
from .svg import SvgOptions, open_output, svg_text, write_svg
from .top import top_text

__all__ = ["load_any", "write_svg", "write_folded", "top_text", "export", "write_diff_svg",
           "SvgOptions", "RENDERERS", "Renderer", "parse_folded", "svg_text", "diff_svg_text"]


def load_any(path: str) -> Profile:
    """Load a ctprof profile file or a folded-stacks text file.  ``-``
    (stdin), a FIFO or ``<(...)`` is opened once and read as a stream.
    Raises :class:`~ctprof.errors.FormatError` for a malformed, binary or
    empty file, :class:`~ctprof.errors.UsageError` for a missing or
    unreadable one."""
    from ..fileformat import load_bytes, looks_like_profile
    from ..files import open_input
    label = "<stdin>" if path == "-" else path
    source = open_input(path)
    try:
        head = source.peek(8)[:8]
        if not head:
            raise FormatError(f"{label}: empty file, neither folded stacks nor a ctprof profile")
        if not looks_like_profile(head):
            return parse_folded(source, label)
        # Read from the input already opened, file or stream alike.
        # Renderers need no raw session: the file is validated whole, but
        # its raw stacks are not built.
        profile, _ = load_bytes(source.read(), label, with_session=False)
        return profile
    finally:
        if path != "-":
            source.close()


@dataclass(frozen=True)
class Renderer:
    """One output format: ``render(profile, metric) -> str | bytes``."""

    name: str
    extension: str
    binary: bool
    render: Callable[[Profile, Optional[str]], Union[str, bytes]]
    help: str


def _svg(profile: Profile, metric: Optional[str]) -> str:
    return svg_text(profile, SvgOptions(metric=metric))


RENDERERS: Dict[str, Renderer] = {r.name: r for r in (
    Renderer("folded", ".folded", False, folded_text, "folded stacks (flamegraph.pl, inferno, speedscope)"),
    Renderer("speedscope", ".speedscope.json", False,
             lambda p, m: speedscope_json(p, m) + "\n", "speedscope JSON, sampled profile"),
    Renderer("pprof", ".pb.gz", True, pprof_gzip, "gzipped profile.proto (go tool pprof, Pyroscope, Parca)"),
    Renderer("svg", ".svg", False, _svg, "interactive SVG flame graph"),
)}


def export(profile: Profile, path: Union[str, IO], format: str, metric: Optional[str] = None) -> None:
    """Write ``profile`` in ``format`` (a key of :data:`RENDERERS`) to
    ``path`` (``-`` is stdout, or an open file of the right mode)."""
    renderer = RENDERERS.get(format)
    if renderer is None:
        raise UsageError(f"unknown format {format!r} (choose from {', '.join(RENDERERS)})")
    data = renderer.render(profile, metric)
    if not renderer.binary:
        with open_output(path) as write:
            write(data)  # type: ignore[arg-type]
    elif not isinstance(path, str):
        path.write(data)
    else:
        write_output(path, lambda out: out.write(data))  # type: ignore[arg-type,misc]
