"""Differential flame graph: the AFTER profile's shape, coloured by change.

Both profiles are normalised by their totals, so runs of different length
compare.  Each box is drawn as wide as its share of AFTER; its colour is the
change of its inclusive share (AFTER share minus BEFORE share): red grew,
blue shrank, white unchanged, the strongest colour for the largest change in
the graph.  Stacks are matched by frame names.  Code that ran only in BEFORE
has no box in AFTER's shape; its share is given in the subtitle.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Optional, Tuple

from ..profile import Profile
from . import palette
from .layout import Box, layout
from .svg import SvgOptions, _percent, min_value_for, open_output, render, subtitle_for


def _named(profile: Profile, metric: Optional[str]) -> Dict[Tuple[str, ...], int]:
    out: Dict[Tuple[str, ...], int] = {}
    for names, value in profile.named_stacks(metric):
        out[names] = out.get(names, 0) + value
    return out


def diff_svg_text(before: Profile, after: Profile, options: Optional[SvgOptions] = None,
                  write=None) -> str:
    """Markup of the differential graph (streamed to ``write`` if given)."""
    options = options or SvgOptions()
    if not options.title:
        options = replace(options, title="Differential Flame Graph")
    metric = options.metric or after.default_metric()
    before_metric = metric if metric in before.values else before.default_metric()
    before_named = _named(before, before_metric) if before.values else {}
    after_total = after.total(metric) if after.values else 0
    before_total = sum(before_named.values())
    # map BEFORE's stacks onto AFTER's frame indexes
    by_names: Dict[Tuple[str, ...], Tuple[int, ...]] = {}
    for stack in after.stacks:
        by_names.setdefault(tuple(after.frames[i].name for i in stack), stack)
    other: Dict[Tuple[int, ...], int] = {}
    vanished = 0
    for names, value in before_named.items():
        stack = by_names.get(names)
        if stack is None:
            vanished += value
        else:
            other[stack] = other.get(stack, 0) + value
    lay = layout(after, metric, min_value_for(options, after_total), other) if after_total > 0 else None
    unit = options.countname or after.unit(metric)

    def delta(box: Box) -> float:
        a = box.value / after_total if after_total else 0.0
        b = box.other / before_total if before_total else 0.0
        return a - b

    biggest = 0.0
    if lay:
        for box in lay.boxes:
            if box.frame >= 0:
                biggest = max(biggest, abs(delta(box)))

    def colour(box: Box) -> str:
        if box.frame < 0 or biggest == 0:
            return palette.diff_colour(0.0)
        return palette.diff_colour(delta(box) / biggest)

    def describe(box: Box, name: str) -> str:
        d = 100.0 * delta(box)
        return (f"{name} ({box.value:,} {unit}, {_percent(box.value, after_total)}; "
                f"before {box.other:,}, {_percent(box.other, before_total)}; {d:+.2f} points)")

    extra = (f"red grew, blue shrank (share of total; before {before_total:,}, after {after_total:,} {unit})")
    if vanished and before_total:
        extra += f"; {_percent(vanished, before_total)} of before is in stacks absent after"
    from .layout import Layout
    return render(after, lay or Layout(), options, unit,
                  subtitle_for(after_total, unit, metric, options, extra), colour, describe, write)


def write_diff_svg(before: Profile, after: Profile, path, options: Optional[SvgOptions] = None, **kwargs) -> None:
    """Write the differential flame graph of BEFORE -> AFTER to ``path``."""
    options = replace(options or SvgOptions(), **kwargs)
    with open_output(path) as write:
        diff_svg_text(before, after, options, write)
