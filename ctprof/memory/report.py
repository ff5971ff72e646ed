"""Text reports of a memory profile: the sites that allocate most, the
sites holding memory at the peak, the leaks (classified like valgrind's
memcheck), and what the tracking cost."""
from __future__ import annotations

import os
from itertools import repeat
from typing import Dict, List, Optional, Tuple

from ..profile import Frame, Profile
from ..render.top import amount, human

SITE_FRAMES = 4
#: The innermost frames that decide a site's label: SITE_FRAMES, one more
#: to tell whether the chain goes on, one for a ``[truncated]`` root (a
#: stack's only marker, at its root).
SITE_KEY_FRAMES = SITE_FRAMES + 2


def frame_label(frame: Frame) -> str:
    """A frame as a site names it: ``leak_big (leaks.c:33)`` when the
    profile was resolved with source lines (as valgrind and heaptrack print
    them), else the function name."""
    if frame.file and frame.line and frame.category != "python":
        return f"{frame.name} ({os.path.basename(frame.file)}:{frame.line})"
    return frame.name


def site_label(profile: Profile, stack: Tuple[int, ...]) -> str:
    """The allocating call chain, innermost first: ``f <- caller <- ...``."""
    names = [frame_label(profile.frames[i]) for i in reversed(stack[-SITE_KEY_FRAMES:])
             if profile.frames[i].name != "[truncated]"]
    label = " <- ".join(names[:SITE_FRAMES])
    return label + (" <- ..." if len(names) > SITE_FRAMES else "")


def sized(value: int) -> str:
    """Exact bytes, and the rounded figure beside them when it differs:
    ``15,000 bytes (14.6 KiB)``, ``100 bytes``."""
    text = f"{value:,} byte{'s' if value != 1 else ''}"
    return text if abs(value) < 1024 else f"{text} ({human(value, 'bytes')})"


def sites(profile: Profile, metric: str, count_metric: Optional[str] = None) -> List[Tuple[str, int, int]]:
    """(site, value, count) summed over stacks with the same call chain,
    largest first; only stacks with a non-zero value."""
    if metric not in profile.values:
        return []
    values = profile.values[metric]
    counts = profile.values.get(count_metric) if count_metric else None
    # Sum by the frames that decide the label first (a large program has
    # 100,000 stacks and far fewer such chains), then name each chain once.
    by_chain: Dict[Tuple[int, ...], List[int]] = {}
    for stack, value, count in zip(profile.stacks, values, counts if counts else repeat(0)):
        if not value:
            continue
        key = stack[-SITE_KEY_FRAMES:]
        row = by_chain.get(key)
        if row is None:
            by_chain[key] = [value, count]
        else:
            row[0] += value
            row[1] += count
    merged: Dict[str, List[int]] = {}
    for key, (value, count) in by_chain.items():
        row = merged.setdefault(site_label(profile, key), [0, 0])
        row[0] += value
        row[1] += count
    return sorted(((k, v[0], v[1]) for k, v in merged.items()), key=lambda r: (-r[1], r[0]))


def _site_table(profile: Profile, title: str, metric: str, count_metric: str, count_word: str,
                top: int) -> List[str]:
    """A titled table of the top sites by ``metric``, or nothing."""
    rows = sites(profile, metric, count_metric)[:top]
    if not rows:
        return []
    whole = profile.total(metric)
    cells = [(f"{value:,}", human(value, "bytes") if abs(value) >= 1024 else "", _pct(value, whole), f"{count:,}", label)
             for label, value, count in rows]
    head = ("bytes", "", "share", count_word)
    widths = [max([len(head[i])] + [len(c[i]) for c in cells]) for i in range(4)]
    lines = ["", title, "  ".join(h.rjust(w) for h, w in zip(head, widths)) + "  site (innermost first)"]
    for c in cells:
        lines.append("  ".join(v.rjust(w) for v, w in zip(c[:4], widths)) + "  " + c[4])
    return lines


def _leak_lines(profile: Profile, kinds, top: int) -> List[str]:
    """One line per leaking site and kind, like valgrind's loss records:
    ``15,000 bytes (14.6 KiB) in 3 blocks definitely lost at: f (x.c:9) <- main``."""
    rows = []
    for title, metric, count in kinds:
        for label, value, n in sites(profile, metric, count)[:top]:
            rounded = f"({human(value, 'bytes')})" if abs(value) >= 1024 else ""
            rows.append((f"{value:,}", rounded, f"{n:,}", "block " if n == 1 else "blocks", title, label))
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    out = []
    for exact, rounded, n, blocks, title, label in rows:
        size = f"{exact.rjust(widths[0])} bytes" + (f" {rounded.ljust(widths[1])}" if widths[1] else "")
        out.append(f"{size} in {n.rjust(widths[2])} {blocks} {title} at: {label}")
    return out


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:5.1f}%" if whole else "   -  "


def memory_report(profile: Profile, top: int = 10) -> str:
    """The whole memory report as text (ends with a newline)."""
    md = profile.metadata
    per_pid: Dict[str, dict] = md.get("memory") or {}
    if not per_pid:
        return ""
    out: List[str] = []
    total = lambda key: sum(p.get("totals", {}).get(key, 0) for p in per_pid.values())
    sampled = md.get("mem_sample") or 0
    estimate = f" (estimated from samples about every {human(int(sampled), 'bytes')})" if sampled else ""
    out.append(f"Heap{estimate}: {int(total('alloc_count')):,} allocations, {sized(int(total('alloc_bytes')))} "
                f"allocated, {int(total('free_count')):,} frees; "
                f"peak {sized(int(total('peak_bytes')))} live in {int(total('peak_count')):,} blocks"
                + (f" at {per_pid[next(iter(per_pid))].get('peak_time', 0):.3f} s" if len(per_pid) == 1 else "")
                + f"; {sized(int(total('live_bytes')))} in {int(total('live_count')):,} blocks still allocated at the end")

    out.extend(_site_table(profile, "Top allocation sites by bytes allocated:", "alloc_bytes", "alloc_count",
                           "allocs", top))
    out.extend(_site_table(profile, f"Sites holding memory at the peak ({amount(int(total('peak_bytes')), 'bytes')} live):",
                           "peak_bytes", "peak_count", "blocks", top))

    scanned = all(p.get("scanned") for p in per_pid.values())
    out.append("")
    for pid, p in sorted(per_pid.items()):
        if p.get("scan_error"):
            out.append(f"pid {pid}: {p['scan_error']}")
    if scanned:
        d, dn = profile.total("definite_bytes"), profile.total("definite_count")
        i, inn = profile.total("indirect_bytes"), profile.total("indirect_count")
        r, rn = profile.total("reachable_bytes"), profile.total("reachable_count")
        possible = "possibly_lost_bytes" in profile.values
        p_, pn = (profile.total("possibly_lost_bytes"), profile.total("possibly_lost_count")) if possible else (0, 0)
        out.append(f"Leaks at exit: definitely lost {sized(d)} in {dn:,} blocks, "
                   f"indirectly lost {sized(i)} in {inn:,} blocks, "
                   + (f"possibly lost {sized(p_)} in {pn:,} blocks, " if possible else "")
                   + f"still reachable {sized(r)} in {rn:,} blocks")
        # Every kind listed by site, as valgrind's --show-leak-kinds=all does:
        # a still-reachable site is not a leak, but it is where memory went.
        kinds = [("definitely lost", "definite_bytes", "definite_count"),
                 ("indirectly lost", "indirect_bytes", "indirect_count")]
        if possible:   # reached only through a pointer into the block's middle
            kinds.append(("possibly lost", "possibly_lost_bytes", "possibly_lost_count"))
        kinds.append(("still reachable", "reachable_bytes", "reachable_count"))
        out.extend(_leak_lines(profile, tuple(kinds), top))
    else:
        live = profile.total("leaked_bytes") if "leaked_bytes" in profile.values else 0
        out.append(f"Still allocated when the program ended without an exit scan (crash, signal or _exit): "
                   f"{sized(live)} live at death")
        out.extend(_leak_lines(profile, (("live at death", "leaked_bytes", "leaked_count"),), top))

    out.append("")
    out.extend(overhead_lines(per_pid))
    return "\n".join(out) + "\n"


def overhead_lines(per_pid: Dict[str, dict]) -> List[str]:
    lines = []
    for pid, p in sorted(per_pid.items()):
        rss = p.get("peak_rss", 0)
        meta = p.get("ring_bytes", 0) + p.get("unwind_cache_bytes", 0)
        share = f" = {100.0 * meta / rss:.1f}% of its peak RSS {human(rss, 'bytes')}" if rss else ""
        lost = p.get("lost_events", 0)
        lines.append(f"heap tracking in pid {pid}: metadata in the program {human(meta, 'bytes')}{share} "
                     f"(event ring and unwind cache; the tables live in ctprof); about {p.get('hook_ns_per_call', 0) / 1000:.2f} us "
                     f"in the hook per allocation; waited {p.get('wait_ns', 0) / 1e6:.1f} ms for ctprof to drain"
                     + (f"; {lost} events LOST" if lost else ""))
    return lines
