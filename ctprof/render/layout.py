"""Flame graph layout: where each box goes, in value units, no SVG here.

The stacks are merged, sorted so that frames come out alphabetically within
each level, and walked once in order (the "flow" of flamegraph.pl): a frame
opens where a stack first differs from the previous one and closes where a
later stack stops sharing it.  Memory is the open path plus the boxes kept,
so huge profiles lay out without building a tree, and boxes narrower than
``min_value`` are dropped as they close (their children are narrower still).
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..profile import Profile


@dataclass(slots=True)
class Box:
    """One frame drawn in one place.

    ``frame`` indexes ``Profile.frames`` (``-1`` for the synthetic root),
    ``depth`` counts from the root (0), ``start``/``value`` are in value units
    (samples, bytes) along x, ``other`` is the second column summed over the
    same stacks (the "before" of a differential graph) or 0.
    """

    frame: int
    depth: int
    start: int
    value: int
    other: int = 0


@dataclass
class Layout:
    boxes: List[Box] = field(default_factory=list)
    total: int = 0
    other_total: int = 0
    max_depth: int = 0
    pruned: int = 0


def frame_order(profile: Profile) -> List[int]:
    """rank[i] of each frame so that sorting by rank sorts frames by name
    (then module, file, line: same-named frames from different places stay
    apart but next to each other)."""
    frames = profile.frames
    order = sorted(range(len(frames)), key=lambda i: (frames[i].name, frames[i].module, frames[i].category,
                                                     frames[i].file or "", frames[i].line or 0,
                                                     frames[i].inlined))
    rank = [0] * len(frames)
    for r, i in enumerate(order):
        rank[i] = r
    return rank


def layout(profile: Profile, metric: Optional[str] = None, min_value: float = 0,
           other: Optional[Dict[Tuple[int, ...], int]] = None) -> Layout:
    """Lay out ``profile`` as a flame graph, root at depth 0.

    ``min_value``: boxes whose value is below it are dropped (the caller turns
    its minimum width in pixels into value units).  ``other``: optional map of
    stack (frame indexes, root first) -> a second value, summed per box into
    :attr:`Box.other` (used by the differential graph).  Stacks with value 0
    are left out.
    """
    column = profile.column(metric)
    rank = frame_order(profile)
    unrank = [0] * len(rank)
    for i, r in enumerate(rank):
        unrank[r] = i
    merged: Dict[Tuple[int, ...], List[int]] = {}
    total = 0
    for stack, value in zip(profile.stacks, column):
        if not value:
            continue
        key = tuple([rank[i] for i in stack])
        row = merged.get(key)
        if row is None:
            merged[key] = [value, 0]
        else:
            row[0] += value
        total += value
    other_total = 0
    if other:
        for stack, value in other.items():
            other_total += value
            key = tuple([rank[i] for i in stack])
            row = merged.get(key)
            if row is not None:
                row[1] += value
    out = Layout(total=total, other_total=other_total)
    if total <= 0:
        return out
    boxes = out.boxes
    boxes.append(Box(-1, 0, 0, total, other_total))
    # open_ranks[d] / open_start[d] / open_other[d]: the frame open at depth
    # d + 1 (depth 0 is the root box), where it started, its "other" so far.
    open_ranks: List[int] = []
    open_start: List[int] = []
    open_other: List[int] = []
    pruned = 0
    x = 0
    append = boxes.append
    threshold = min_value
    for key in sorted(merged):
        value, oth = merged[key]
        n = len(key)
        m = len(open_ranks)
        common = 0
        limit = n if n < m else m
        while common < limit and key[common] == open_ranks[common]:
            common += 1
        if common < m:
            # Close frames deeper than the common prefix.  They all end at x
            # and open_start rises with depth, so the wide enough ones are
            # the shallowest: bisect instead of testing each.
            keep = bisect_right(open_start, x - threshold, common, m) if threshold > 0 else m
            for d in range(common, keep):
                append(Box(unrank[open_ranks[d]], d + 1, open_start[d], x - open_start[d], open_other[d]))
            pruned += m - keep
            del open_ranks[common:], open_start[common:], open_other[common:]
        if common < n:
            open_ranks.extend(key[common:])
            open_start.extend([x] * (n - common))
            open_other.extend([0] * (n - common))
        if oth:
            for d in range(n):
                open_other[d] += oth
        x += value
    m = len(open_ranks)
    keep = bisect_right(open_start, x - threshold, 0, m) if threshold > 0 else m
    for d in range(keep):
        append(Box(unrank[open_ranks[d]], d + 1, open_start[d], x - open_start[d], open_other[d]))
    pruned += m - keep
    out.pruned = pruned
    out.max_depth = max(b.depth for b in boxes)
    return out
