"""Text reports of a memory profile: the sites that allocate most, the
sites holding memory at the peak, the leaks (classified like valgrind's
memcheck), and what the tracking cost."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ..profile import Profile
from ..render.top import human

SITE_FRAMES = 4


def site_label(profile: Profile, stack: Tuple[int, ...]) -> str:
    """The allocating call chain, innermost first: ``f <- caller <- ...``."""
    names = [profile.frames[i].name for i in reversed(stack) if profile.frames[i].name != "[truncated]"]
    label = " <- ".join(names[:SITE_FRAMES])
    return label + (" <- ..." if len(names) > SITE_FRAMES else "")


def sites(profile: Profile, metric: str, count_metric: Optional[str] = None) -> List[Tuple[str, int, int]]:
    """(site, value, count) summed over stacks with the same call chain,
    largest first; only stacks with a non-zero value."""
    if metric not in profile.values:
        return []
    values = profile.values[metric]
    counts = profile.values.get(count_metric) if count_metric else None
    merged: Dict[str, List[int]] = {}
    for i, stack in enumerate(profile.stacks):
        if not values[i]:
            continue
        row = merged.setdefault(site_label(profile, stack), [0, 0])
        row[0] += values[i]
        row[1] += counts[i] if counts else 0
    return sorted(((k, v[0], v[1]) for k, v in merged.items()), key=lambda r: (-r[1], r[0]))


def _site_table(profile: Profile, title: str, metric: str, count_metric: str, count_word: str,
                top: int) -> List[str]:
    """A titled table of the top sites by ``metric``, or nothing."""
    rows = sites(profile, metric, count_metric)[:top]
    if not rows:
        return []
    whole = profile.total(metric)
    lines = ["", title, f"{'bytes':>12} {'share':>6} {count_word:>10}  site (innermost first)"]
    for label, value, count in rows:
        lines.append(f"{human(value, 'bytes'):>12} {_pct(value, whole)} {count:>10,}  {label}")
    return lines


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
    out.append(f"Heap{estimate}: {int(total('alloc_count')):,} allocations, {human(int(total('alloc_bytes')), 'bytes')} "
                f"allocated, {int(total('free_count')):,} frees; "
                f"peak {human(int(total('peak_bytes')), 'bytes')} live in {int(total('peak_count')):,} blocks"
                + (f" at {per_pid[next(iter(per_pid))].get('peak_time', 0):.3f} s" if len(per_pid) == 1 else "")
                + f"; {human(int(total('live_bytes')), 'bytes')} in {int(total('live_count')):,} blocks still allocated at the end")

    out.extend(_site_table(profile, "Top allocation sites by bytes allocated:", "alloc_bytes", "alloc_count",
                           "allocs", top))
    out.extend(_site_table(profile, f"Sites holding memory at the peak ({human(int(total('peak_bytes')), 'bytes')} live):",
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
        out.append(f"Leaks at exit: definitely lost {human(d, 'bytes')} in {dn:,} blocks, "
                   f"indirectly lost {human(i, 'bytes')} in {inn:,} blocks, "
                   f"still reachable {human(r, 'bytes')} in {rn:,} blocks")
        for title, metric, count in (("definitely lost", "definite_bytes", "definite_count"),
                                     ("indirectly lost", "indirect_bytes", "indirect_count")):
            for label, value, n in sites(profile, metric, count)[:top]:
                out.append(f"{human(value, 'bytes'):>12} in {n:,} block{'s' if n != 1 else ''} {title} at: {label}")
    else:
        live = profile.total("leaked_bytes") if "leaked_bytes" in profile.values else 0
        out.append(f"Still allocated when the program ended without an exit scan (crash, signal or _exit): "
                   f"{human(live, 'bytes')} live at death")
        for label, value, n in sites(profile, "leaked_bytes", "leaked_count")[:top]:
            out.append(f"{human(value, 'bytes'):>12} in {n:,} block{'s' if n != 1 else ''} live at death at: {label}")

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
