"""Top-N text: the hottest functions by self and by total (inclusive) value,
and the callers or callees of chosen functions.

Functions are keyed by (name, module).  Self value is what a function had
as the leaf of a stack; total value counts each stack once per function on
it, so recursion is not double counted.  Works for any metric: samples,
allocated bytes, allocation counts.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ..errors import printable
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
    if unit == "microseconds":                 # wall and off-CPU time
        return f"{value / 1e6:.3f} s"
    return f"{value:,}"


def amount(value: int, unit: str) -> str:
    """``value`` with its unit word: ``8,192 bytes = 8.0 KiB`` (exact, then
    rounded when that differs), ``1,033 allocations``, ``10 samples``."""
    if unit == "bytes":
        return f"{value:,} bytes" + (f" = {human(value, unit)}" if abs(value) >= 1024 else "")
    if unit == "microseconds":
        return human(value, unit)
    return f"{value:,} {unit}"


def _in_all(grand: int, unit: str, metric: str) -> str:
    """The grand-total phrase of a table heading."""
    if metric in (unit, "samples"):
        return f"{human(grand, unit)} {unit} in all"
    return f"{metric}: {amount(grand, unit)} in all"


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
    name, module = printable(key[0]), printable(key[1])
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
    lines = []
    for by in ("self", "total"):
        rows = _ranked(self_v, total_v, n, by)
        lines.append(f"Top {len(rows)} functions by {by} ({_in_all(grand, unit, metric)}):")
        cells = [(human(s, unit), f"{100.0 * s / grand:.2f}%", human(t, unit), f"{100.0 * t / grand:.2f}%", label)
                 for label, s, t in rows]
        head = ("self", "self%", "total", "total%", "function")
        widths = [max([len(head[i])] + [len(c[i]) for c in cells]) for i in range(4)]
        lines.append("  ".join(h.rjust(w) for h, w in zip(head[:4], widths)) + "  " + head[4])
        for c in cells:
            lines.append("  ".join(v.rjust(w) for v, w in zip(c[:4], widths)) + "  " + c[4])
        lines.append("")
    return "\n".join(lines)


#: Neighbour rows for a stack's outermost frame (no caller) and for time a
#: function spent in itself (no callee).
NO_CALLER = ("(root: no caller)", "")
SELF = ("(self)", "")


def neighbours(profile: Profile, pattern: str, callers: bool, metric: Optional[str] = None):
    """For each function whose name matches ``pattern`` (a regex, searched):
    its total (each stack counted once), its self value, and the value of
    each caller (``callers=True``) or callee on the stacks through it.

    Returns ``{function: (total, self, {neighbour: value})}``, keys
    (name, module).  A neighbour counts once per stack even when the function
    appears several times (recursion), as totals do; callees include
    :data:`SELF` for the function's own time, callers :data:`NO_CALLER` when
    it is the root of a stack.
    """
    import re
    from ..errors import UsageError
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise UsageError(f"{'--callers' if callers else '--callees'} {pattern!r}: "
                         f"invalid regular expression ({err})") from None
    column = profile.column(metric)
    keys = [(f.name, f.module) for f in profile.frames]
    hit = [bool(regex.search(f.name)) for f in profile.frames]
    out: Dict[Tuple[str, str], list] = {}
    for stack, value in zip(profile.stacks, column):
        if not value or not any(hit[i] for i in stack):
            continue
        seen = set()
        last = len(stack) - 1
        for d, i in enumerate(stack):
            if not hit[i]:
                continue
            key = keys[i]
            row = out.get(key)
            if row is None:
                row = out[key] = [0, 0, {}]
            if key not in seen:
                seen.add(key)
                row[0] += value
                if keys[stack[last]] == key:
                    row[1] += value
            if callers:
                other = keys[stack[d - 1]] if d > 0 else NO_CALLER
            else:
                other = keys[stack[d + 1]] if d < last else SELF
            if (key, other) not in seen:
                seen.add((key, other))
                row[2][other] = row[2].get(other, 0) + value
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def neighbours_text(profile: Profile, pattern: str, callers: bool, metric: Optional[str] = None,
                    n: int = 10) -> str:
    """Who calls (``callers=True``) or what is called by the functions
    matching ``pattern``, as pprof's ``-peek`` and perf's call-graph report
    show it: for each matching function (the ``n`` largest by total), its
    share of the whole, then its ``n`` largest callers or callees with their
    share of the function's total.  Ends with a newline."""
    metric = metric or profile.default_metric()
    unit = profile.unit(metric)
    found = neighbours(profile, pattern, callers, metric)
    grand = profile.total(metric)
    word = "caller" if callers else "callee"
    if not found:
        return f"No function matching {pattern!r} has {metric} in this profile.\n"
    lines = []
    for key in sorted(found, key=lambda k: (-found[k][0], k))[:n]:
        total, self_value, rows = found[key]
        lines.append(f"{'Callers of' if callers else 'Callees of'} {_label(key)}: {amount(total, unit)} "
                     f"({100.0 * total / grand:.2f}% of all {metric}), self {amount(self_value, unit)}")
        ranked = sorted(rows.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        cells = [(human(v, unit), f"{100.0 * v / total:.2f}%" if total else "-", _label(k)) for k, v in ranked]
        head = (metric, "share", word)
        widths = [max([len(head[i])] + [len(c[i]) for c in cells]) for i in range(2)]
        lines.append("  ".join(h.rjust(w) for h, w in zip(head[:2], widths)) + "  " + head[2])
        for c in cells:
            lines.append("  ".join(v.rjust(w) for v, w in zip(c[:2], widths)) + "  " + c[2])
        if len(rows) > len(ranked):
            lines.append(f"  ... {len(rows) - len(ranked)} more {word}s (--top N shows more)")
        lines.append("")
    if len(found) > n:
        lines.append(f"{len(found) - n} more functions match {pattern!r} (--top N shows more)")
        lines.append("")
    return "\n".join(lines) + "\n"


def off_cpu_text(profile: Profile, n: int = 5) -> str:
    """For a profile with off-CPU time (``--off-cpu``): each thread's
    on-CPU and off-CPU seconds, then the ``n`` stacks that waited longest
    (the frames nearest the wait, and why).  Empty for other profiles."""
    if "offcpu" not in profile.values or "wall" not in profile.values or profile.tids is None:
        return ""
    wall, off = profile.values["wall"], profile.values["offcpu"]
    if not sum(off):
        return ""
    names = profile.metadata.get("threads") or {}
    per_thread: Dict[Tuple[int, int], List[int]] = {}
    for pid, tid, w, o in zip(profile.pids or [0] * len(wall), profile.tids, wall, off):
        cell = per_thread.setdefault((pid, tid), [0, 0])
        cell[0] += w - o
        cell[1] += o
    lines = ["Time per thread (on CPU: samples x period; off CPU: measured waits):",
             f"{'thread':<24} {'on-CPU':>10} {'off-CPU':>10}"]
    for (pid, tid), (on, wait) in sorted(per_thread.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        label = f"{tid}/{names.get(str(tid), '')}".rstrip("/")
        lines.append(f"{label:<24} {on / 1e6:>9.3f}s {wait / 1e6:>9.3f}s")
    waits = sorted((v, i) for i, v in enumerate(off) if v)[::-1][:n]
    lines.append("")
    lines.append(f"Top {len(waits)} waits (off-CPU time by stack, the wait first, then its callers):")
    for value, i in waits:
        frames = [profile.frames[f].name for f in profile.stacks[i]]
        shown = " <- ".join(reversed(frames[-5:]))
        lines.append(f"{value / 1e6:>9.3f}s  {shown}")
    return "\n".join(lines) + "\n\n"
