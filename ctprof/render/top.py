"""Top-N text: the hottest functions by self and by total (inclusive) value.

Functions are keyed by (name, module).  Self value is what a function had
as the leaf of a stack; total value counts each stack once per function on
it, so recursion is not double counted.  Works for any metric: samples,
allocated bytes, allocation counts.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ..profile import Profile

#: Longest function name printed before truncating with "..".
NAME_WIDTH = 90


def human(value: int, unit: str) -> str:
    """``value`` for people: bytes in KiB/MiB/GiB, anything else with
    thousands separators."""
    if unit == "bytes":
        size = float(value)
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(size) < 1024 or suffix == "TiB":
                return f"{int(size)} B" if suffix == "B" else f"{size:.1f} {suffix}"
            size /= 1024
    return f"{value:,}"


def function_totals(profile: Profile, metric: Optional[str] = None) -> Tuple[Dict[Tuple[str, str], int], Dict[Tuple[str, str], int], int]:
    """(self by function, total by function, grand total)."""
    column = profile.column(metric)
    keys = [(f.name, f.module) for f in profile.frames]
    self_v: Dict[Tuple[str, str], int] = {}
    total_v: Dict[Tuple[str, str], int] = {}
    grand = 0
    for stack, value in zip(profile.stacks, column):
        if not value:
            continue
        grand += value
        if not stack:
            continue
        leaf = keys[stack[-1]]
        self_v[leaf] = self_v.get(leaf, 0) + value
        seen = set()
        for i in stack:
            k = keys[i]
            if k not in seen:
                seen.add(k)
                total_v[k] = total_v.get(k, 0) + value
    return self_v, total_v, grand


def _label(key: Tuple[str, str]) -> str:
    name, module = key
    if len(name) > NAME_WIDTH:
        name = name[:NAME_WIDTH - 2] + ".."
    return f"{name}  [{module}]" if module else name


def top_rows(profile: Profile, metric: Optional[str] = None, n: int = 10, by: str = "self") -> List[Tuple[str, int, int]]:
    """The ``n`` hottest functions as (label, self, total), sorted by
    ``by`` ("self" or "total"), ties by the other value then name."""
    self_v, total_v, _ = function_totals(profile, metric)
    return _ranked(self_v, total_v, n, by)


def _ranked(self_v: Dict[Tuple[str, str], int], total_v: Dict[Tuple[str, str], int], n: int,
            by: str) -> List[Tuple[str, int, int]]:
    """:func:`top_rows` on totals already computed by :func:`function_totals`."""
    if by == "self":
        keys = sorted(self_v, key=lambda k: (-self_v[k], -total_v.get(k, 0), k))
    else:
        keys = sorted(total_v, key=lambda k: (-total_v[k], -self_v.get(k, 0), k))
    return [(_label(k), self_v.get(k, 0), total_v.get(k, 0)) for k in keys[:n]]


def top_text(profile: Profile, metric: Optional[str] = None, n: int = 10) -> str:
    """A two-part table of the ``n`` hottest functions, by self and by total,
    with values and percentages of the whole.  Ends with a newline."""
    if not profile.values:
        return "No samples.\n"
    metric = metric or profile.default_metric()
    unit = profile.unit(metric)
    self_v, total_v, grand = function_totals(profile, metric)
    if grand <= 0:
        return f"No {unit} recorded ({metric}).\n"
    what = unit if metric in (unit, "samples") else f"{unit}, {metric}"
    lines = []
    for by in ("self", "total"):
        rows = _ranked(self_v, total_v, n, by)
        lines.append(f"Top {len(rows)} functions by {by} ({human(grand, unit)} {what} in all):")
        cells = [(human(s, unit), f"{100.0 * s / grand:.2f}%", human(t, unit), f"{100.0 * t / grand:.2f}%", label)
                 for label, s, t in rows]
        head = ("self", "self%", "total", "total%", "function")
        widths = [max([len(head[i])] + [len(c[i]) for c in cells]) for i in range(4)]
        lines.append("  ".join(h.rjust(w) for h, w in zip(head[:4], widths)) + "  " + head[4])
        for c in cells:
            lines.append("  ".join(v.rjust(w) for v, w in zip(c[:4], widths)) + "  " + c[4])
        lines.append("")
    return "\n".join(lines)
