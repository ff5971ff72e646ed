"""The SVG flame graph, written by hand: one standalone SVG 1.1 file.

Layout (:mod:`.layout`) decides where boxes go; this module only turns boxes
into markup.  Each frame is ``<g><title>NAME (N unit, P%)</title><rect/>
[<text/>]</g>`` inside ``<g id="frames">``; the embedded script
(:mod:`.script`) reads those back for zoom, search and details, so names
appear in the file only as escaped XML text.  A label is written only when at
least three characters fit; the script adds labels as zooming widens boxes.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, replace
from typing import IO, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import UsageError
from ..profile import Frame, Profile
from . import palette
from .layout import Box, Layout, layout
from .script import SCRIPT
from .top import amount


@dataclass(frozen=True)
class SvgOptions:
    """How the graph looks.  Defaults follow flamegraph.pl.

    ``title``: heading (default: "Flame Graph: COMMAND (METRIC)" when the
    profile knows its command, else "Flame Graph"; "Icicle Graph" when inverted).
    ``width``: image width in px (1200).  ``minwidth``: boxes narrower than
    this many px are left out (0.1), or a share of the total as a string
    ending in ``%`` (``"0.5%"``).  ``frame_height``: px per level (16).
    ``font_size`` (12) and ``font_width`` (0.59, average glyph width as a
    fraction of the size, used to truncate names).  ``countname``: the word
    for the unit ("samples", "bytes"; default from the profile).
    ``inverted``: icicle, root at the top (stacks must already be reversed,
    see :func:`ctprof.processors.invert`).  ``metric``: value column
    (default: the profile's default).  ``memory``: use the memory palette
    (default: decided from the profile).  ``notes``: extra text for the
    subtitle line.
    """

    title: Optional[str] = None
    width: int = 1200
    minwidth: Union[float, str] = 0.1
    frame_height: int = 16
    font_size: int = 12
    font_width: float = 0.59
    font_family: str = "Verdana, sans-serif"
    countname: Optional[str] = None
    inverted: bool = False
    metric: Optional[str] = None
    memory: Optional[bool] = None
    notes: str = ""


PAD = 10
TOP = 74          # title and buttons, subtitle, legend
BOTTOM = 34       # details and "Matched:" line
LEGEND_Y = 62
MIN_WIDTH = 300   # the script never fits the graph narrower than this

#: Legend words for the frame categories (see :mod:`.palette`).
CATEGORY_WORDS = {"program": "program", "library": "libraries", "kernel": "kernel", "jit": "JIT",
                  "python": "Python", "offcpu": "off-CPU (waiting)", "unknown": "unknown"}

_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_escape(text: str) -> str:
    """Escape for XML text and attribute values; characters XML cannot hold
    at all (NUL, most control characters, lone surrogates) become U+FFFD."""
    if _INVALID_XML.search(text):
        text = _INVALID_XML.sub("\ufffd", text)
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


def script_json(value) -> str:
    """JSON safe to put inside a CDATA section or a script element."""
    return (json.dumps(value, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def is_memory(profile: Profile, metric: Optional[str] = None) -> bool:
    if profile.metadata.get("kind") == "memory":
        return True
    metric = metric or (profile.default_metric() if profile.values else "")
    return metric.endswith("bytes") or metric.endswith("count") or profile.unit(metric) in ("bytes", "allocations")


def min_value_for(options: SvgOptions, total: int) -> float:
    """The ``minwidth`` option in value units."""
    mw = options.minwidth
    try:
        if isinstance(mw, str) and mw.strip().endswith("%"):
            share = float(mw.strip()[:-1]) / 100.0
            return share * total
        px = float(mw)
    except ValueError:
        raise UsageError(f"--minwidth {mw!r}: expected pixels (0.1) or a percentage (0.5%)") from None
    if px < 0:
        raise UsageError("--minwidth must not be negative")
    return px * total / max(1, options.width - 2 * PAD)


def fit_label(name: str, width_px: float, options: SvgOptions) -> str:
    """``name`` truncated with ``..`` to fit ``width_px`` (empty if fewer
    than three characters fit).  The script uses the same rule."""
    chars = int((width_px - 6) // (options.font_size * options.font_width))
    if chars < 3:
        return ""
    if len(name) <= chars:
        return name
    return name[:chars - 2] + ".."


def _legend(options: SvgOptions, legend: List[Tuple[str, str]]) -> str:
    """Swatches and words explaining the colours, left to right on one line."""
    if not legend:
        return ""
    size = 11
    char = size * options.font_width
    parts = [f'<g id="legend"><text x="{PAD}" y="{LEGEND_Y}" font-size="{size}">colours:</text>']
    x = PAD + 9 * char + 6
    for fill, word in legend:
        parts.append(f'<rect x="{x:.1f}" y="{LEGEND_Y - 9}" width="10" height="10" fill="{xml_escape(fill)}"/>'
                     f'<text x="{x + 14:.1f}" y="{LEGEND_Y}" font-size="{size}">{xml_escape(word)}</text>')
        x += 14 + len(word) * char + 12
    parts.append("</g>")
    return "".join(parts)


def _header(out: "_Sink", options: SvgOptions, height: int, title: str, subtitle: str,
            legend: List[Tuple[str, str]], unit: str) -> None:
    """Everything before the frames: the viewer script (:data:`.script.SCRIPT`)
    and the controls come first in the file, so they show, and Search
    answers, while a large graph is still loading; once the document is
    complete the script moves the controls above the frames."""
    w = options.width
    out.append('<?xml version="1.0" standalone="no"?>\n'
               '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n')
    out.append(f'<svg version="1.1" width="{w}" height="{height}" viewBox="0 0 {w} {height}" '
               f'xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">\n')
    out.append('<defs><linearGradient id="background" x1="0" y1="0" x2="0" y2="1">'
               '<stop stop-color="#eeeeee" offset="5%"/><stop stop-color="#eeeeb0" offset="95%"/>'
               '</linearGradient></defs>\n')
    family = re.sub(r"[^A-Za-z0-9 ,_-]", "", options.font_family) or "sans-serif"
    out.append('<style type="text/css"><![CDATA[\n'
               f'text {{ font-family: {family}; font-size: {options.font_size}px; fill: #000000; }}\n'
               '#title { text-anchor: middle; font-size: 17px; }\n'
               '#subtitle { text-anchor: middle; fill: #444444; }\n'
               '#nosamples { text-anchor: middle; font-size: 15px; fill: #444444; }\n'
               '#search, #matched { text-anchor: end; }\n'
               '#search, #unzoom { cursor: pointer; }\n'
               '#frames > g { cursor: pointer; }\n'
               '#frames > g:hover > rect { stroke: #000000; stroke-width: 0.5; }\n'
               '.hide { display: none; }\n'
               '.parent { opacity: 0.5; }\n'
               ']]></style>\n')
    out.append(f'<rect class="background" x="0" y="0" width="{w}" height="{height}" fill="url(#background)"/>\n')
    config = {"width": options.width, "height": height, "minWidth": MIN_WIDTH, "pad": PAD,
              "frameHeight": options.frame_height,
              "fontSize": options.font_size, "fontWidth": options.font_width,
              "inverted": bool(options.inverted), "unit": unit, "highlight": palette.HIGHLIGHT}
    out.append('<script type="text/ecmascript"><![CDATA[\n')
    out.append(SCRIPT.replace("CTPROF_CONFIG", script_json(config)))
    out.append(']]></script>\n')
    # The controls: elements of the root, as flamegraph.pl writes them.
    out.append(f'<rect id="controls" class="background" x="0" y="0" width="{w}" height="{TOP - 4}" '
               f'fill="#eeeeee"/>\n')
    out.append(f'<text id="title" x="{w / 2:g}" y="24">{xml_escape(title)}</text>\n')
    out.append(f'<text id="subtitle" x="{w / 2:g}" y="44">{xml_escape(subtitle)}</text>\n')
    out.append(f'<text id="unzoom" class="hide" x="{PAD}" y="24">Reset Zoom</text>\n')
    out.append(f'<text id="search" x="{w - PAD}" y="24">Search</text>\n')
    legend_markup = _legend(options, legend)
    if legend_markup:
        out.append(legend_markup + "\n")
    out.append(f'<rect id="footer" class="background" x="0" y="{height - BOTTOM + 4}" width="{w}" '
               f'height="{BOTTOM - 4}" fill="#eeeeb0"/>\n')
    out.append(f'<text id="details" x="{PAD}" y="{height - 12}"> </text>\n')
    out.append(f'<text id="matched" x="{w - PAD}" y="{height - 12}"> </text>\n')


def _footer(out: "_Sink") -> None:
    out.append('</svg>\n')


class _Sink:
    """Collects markup and hands it to ``write`` in large chunks, so a huge
    graph is never held in memory as one string."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self.parts: List[str] = []
        self.write = write

    def append(self, text: str) -> None:
        self.parts.append(text)
        if len(self.parts) >= 8192:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.write("".join(self.parts))
            self.parts.clear()


def render(profile: Profile, lay: Layout, options: SvgOptions, unit: str, subtitle: str,
           colour: Callable[[Box], str], describe: Callable[[Box, str], str],
           write: Optional[Callable[[str], object]] = None,
           legend: Sequence[Tuple[str, str]] = ()) -> str:
    """Markup for a laid-out profile.  ``colour(box)`` gives the fill,
    ``describe(box, name)`` the title text (must be ``NAME (N ...)``),
    ``legend`` (fill, word) pairs explaining the colours.
    With ``write`` the markup goes there piece by piece and "" is returned."""
    chunks: List[str] = []
    out = _Sink(write or chunks.append)
    title = options.title or ("Icicle Graph" if options.inverted else "Flame Graph")
    fh = options.frame_height
    if lay.total <= 0 or not lay.boxes:
        height = TOP + BOTTOM + 3 * fh
        _header(out, options, height, title, subtitle, list(legend), unit)
        out.append(f'<text id="nosamples" x="{options.width / 2:g}" y="{TOP + 2 * fh}">no samples</text>\n')
        out.append('<g id="frames">\n</g>\n')
        _footer(out)
        out.flush()
        return "".join(chunks)
    levels = lay.max_depth + 1
    height = TOP + levels * fh + BOTTOM
    _header(out, options, height, title, subtitle, list(legend), unit)
    out.append('<g id="frames">\n')
    scale = (options.width - 2 * PAD) / lay.total
    frames = profile.frames
    inverted = options.inverted
    base = height - BOTTOM - fh
    append = out.append
    # root first, then by depth and position: a stable, readable order
    lay.boxes.sort(key=lambda b: (b.depth, b.start))
    for box in lay.boxes:
        name = "all" if box.frame < 0 else frames[box.frame].name
        x = PAD + box.start * scale
        w = box.value * scale
        y = TOP + box.depth * fh if inverted else base - box.depth * fh
        esc_title = xml_escape(describe(box, name))
        label = fit_label(name, w, options)
        text = f'<text x="{x + 3:.2f}" y="{y + fh - 4}">{xml_escape(label)}</text>' if label else ""
        append(f'<g><title>{esc_title}</title><rect x="{x:.3f}" y="{y}" width="{w:.3f}" '
               f'height="{fh - 1}" fill="{colour(box)}"/>{text}</g>\n')
    out.append('</g>\n')
    _footer(out)
    out.flush()
    return "".join(chunks)


def _percent(value: int, total: int) -> str:
    return f"{100.0 * value / total:.2f}%" if total else "0%"


def subtitle_for(total: int, unit: str, metric: str, options: SvgOptions, extra: str = "") -> str:
    what = (amount(total, unit) if unit == "microseconds" else f"{total:,} {unit}") \
        + (f" of {metric}" if metric not in (unit, "samples") else "")
    text = f"Width is each frame's share of {what}, not time; frames sorted by name within each level"
    if options.inverted:
        text += "; inverted: leaf functions at the top, callers below"
    if extra:
        text += "; " + extra
    if options.notes:
        text += "; " + options.notes
    return text


def svg_text(profile: Profile, options: SvgOptions = SvgOptions(),
             write: Optional[Callable[[str], object]] = None) -> str:
    """The flame graph of ``profile`` as SVG markup (or, with ``write``,
    streamed to it and "" returned)."""
    metric = options.metric or profile.default_metric()
    if profile.values:
        profile.column(metric)  # raises UsageError for an unknown metric
        total = profile.total(metric)
    else:
        total = 0
    unit = options.countname or profile.unit(metric)
    lay = layout(profile, metric, min_value_for(options, total)) if total > 0 else Layout()
    memory = is_memory(profile, metric) if options.memory is None else options.memory
    frames = profile.frames
    colours: Dict[int, str] = {}

    def colour(box: Box) -> str:
        c = colours.get(box.frame)
        if c is None:
            if box.frame < 0:
                c = palette.frame_colour(Frame("all"), memory, root=True)
            else:
                c = palette.frame_colour(frames[box.frame], memory)
            colours[box.frame] = c
        return c

    def describe(box: Box, name: str) -> str:
        value = amount(box.value, unit) if unit == "microseconds" else f"{box.value:,} {unit}"
        return f"{name} ({value}, {_percent(box.value, lay.total)})"

    extra = ""
    if lay.pruned:
        extra = f"{lay.pruned:,} frames narrower than {options.minwidth}{'' if str(options.minwidth).endswith('%') else ' px'} not drawn"
    drawn = {frames[b.frame].category for b in lay.boxes if b.frame >= 0}
    legend = [(palette.frame_colour(Frame("legend", "", c), memory), CATEGORY_WORDS[c])
              for c in CATEGORY_WORDS if c in drawn]
    if not options.title:
        options = replace(options, title=default_title(profile, metric, options.inverted))
    return render(profile, lay, options, unit, subtitle_for(total, unit, metric, options, extra), colour, describe,
                  write, legend)


def default_title(profile: Profile, metric: str, inverted: bool = False) -> str:
    """``Flame Graph: ./app --fast (samples)``: what was run and what the
    widths measure; just ``Flame Graph`` when the command is not known
    (folded input)."""
    kind = "Icicle Graph" if inverted else "Flame Graph"
    command = profile.metadata.get("command")
    if not command or not isinstance(command, list):
        return kind
    import shlex
    text = " ".join(shlex.quote(str(a)) for a in command)
    if len(text) > 80:
        text = text[:78] + ".."
    return f"{kind}: {text} ({metric})"


def write_svg(profile: Profile, path: Union[str, IO[str]], options: Optional[SvgOptions] = None, **kwargs) -> None:
    """Write the flame graph of ``profile`` to ``path`` (``-`` is stdout, or
    an open text file).  Keyword arguments override fields of
    :class:`SvgOptions` (``title=``, ``inverted=``, ``minwidth=`` ...).
    ``inverted=True`` also reverses the stacks."""
    options = replace(options or SvgOptions(), **kwargs)
    if options.inverted and not profile.metadata.get("inverted"):
        from ..processors import invert
        profile = invert(profile)
    with open_output(path) as write:
        svg_text(profile, options, write)


@contextlib.contextmanager
def open_output(path: Union[str, IO[str]]):
    """A ``write(str)`` callable for a path (``-`` is stdout) or an open
    text file.  A path is written through :func:`ctprof.files.atomic_output`,
    so a failed render never leaves half a file and a planted link is
    replaced, not followed."""
    import io
    import sys
    from ..files import atomic_output
    if not isinstance(path, str):
        yield path.write
    elif path == "-":
        yield sys.stdout.write
        sys.stdout.flush()
    else:
        with atomic_output(path) as out:
            text = io.TextIOWrapper(out, encoding="utf-8", newline="\n")
            yield text.write
            text.flush()
            text.detach()
