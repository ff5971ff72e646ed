"""Heap results -> raw stacks with memory metrics, and the figures the
reports need (totals, peak, leaks, overhead), kept in ``Session.memory``."""
from __future__ import annotations

from typing import Dict

from ..session import RawStack, Session
from .collect import DETACH_REASONS, HeapProcess

#: The metrics of a memory profile (DESIGN.md), with their units.
MEMORY_METRICS = {
    "alloc_bytes": "bytes",
    "alloc_count": "allocations",
    "leaked_bytes": "bytes",
    "reachable_bytes": "bytes",
    "peak_bytes": "bytes",
    "possibly_lost_bytes": "bytes",
}
#: Extra columns kept for the reports.
DETAIL_METRICS = {
    "leaked_count": "blocks",
    "definite_bytes": "bytes",
    "definite_count": "blocks",
    "indirect_bytes": "bytes",
    "indirect_count": "blocks",
    "reachable_count": "blocks",
    "peak_count": "blocks",
    "live_bytes": "bytes",
    "live_count": "blocks",
    "possibly_lost_count": "blocks",
}


def stack_values(stats: Dict[str, float], scanned: bool) -> Dict[str, int]:
    """The profile columns of one allocation stack.  Without an exit scan
    (the program crashed, was killed or called _exit) everything still
    allocated counts as leaked: "live at death"."""
    r = lambda k: int(round(stats.get(k, 0.0)))
    if scanned:
        definite, indirect = r("definite_bytes"), r("indirect_bytes")
        leaked, leaked_n = definite + indirect, r("definite_count") + r("indirect_count")
        reachable, reachable_n = r("reachable_bytes"), r("reachable_count")
        possible, possible_n = r("possible_bytes"), r("possible_count")
    else:
        definite = indirect = possible = possible_n = 0
        leaked, leaked_n = r("live_bytes"), r("live_count")
        reachable = reachable_n = 0
    return {
        "alloc_bytes": r("alloc_bytes"), "alloc_count": r("alloc_count"),
        "leaked_bytes": leaked, "reachable_bytes": reachable, "peak_bytes": r("peak_bytes"),
        "leaked_count": leaked_n, "definite_bytes": definite, "definite_count": r("definite_count") if scanned else 0,
        "indirect_bytes": indirect, "indirect_count": r("indirect_count") if scanned else 0,
        "reachable_count": reachable_n, "peak_count": r("peak_count"),
        "live_bytes": r("live_bytes"), "live_count": r("live_count"),
        "possibly_lost_bytes": possible, "possibly_lost_count": possible_n,
    }


def add_heap_to_session(session: Session, heap: Dict[int, HeapProcess]) -> None:
    for pid, info in heap.items():
        proc = session.processes.get(pid)
        gen = max(0, len(proc.maps) - 1) if proc else 0
        for ips, stats in info.stacks:
            if not ips:
                continue
            # Every address is a return address; the resolver treats the
            # first one as exact, so hand it the call instruction itself.
            adjusted = (ips[0] - 1,) + tuple(ips[1:])
            values = stack_values(stats, info.scanned)
            if not any(values.values()):
                continue
            session.stacks.append(RawStack(pid, 0, gen, adjusted, bool(stats.get("truncated")), values))
        h = info.header
        timed = h.get("timed_calls", 0)
        session.memory[str(pid)] = {
            "totals": {k: round(v, 1) for k, v in info.totals.items()},
            "scanned": info.scanned,
            "scan_error": info.scan_error,
            "timeline": [[t, v] for t, v in info.timeline],
            "peak_time": info.peak_time,
            "peak_rss": info.peak_rss,
            "ring_bytes": info.ring_bytes_used,
            "unwind_cache_bytes": h.get("unwind_cache_bytes", 0),
            "lost_events": h.get("lost", 0),
            "wait_ns": h.get("wait_ns", 0),
            "hook_ns_per_call": (h.get("timed_ns", 0) / timed) if timed else 0.0,
            "sample_bytes": h.get("sample_bytes", 0),
            "depth": h.get("depth", 0),
            "detached": DETACH_REASONS.get(h.get("detached", 0), ""),
            "skipped_records": int(info.totals.get("skipped_records", 0)),
            "bad_records": int(info.totals.get("bad_records", 0)),
        }
        detached = h.get("detached", 0)
        if detached and not info.scanned and detached in DETACH_REASONS:
            # a process that outlived the run is detached at its end: what it
            # still held is "live at the end", not a leak
            session.notes.append(f"pid {pid}: heap tracking stopped: {DETACH_REASONS[detached]}; "
                                 f"its blocks still allocated then are shown as live, not as leaks")
        if info.totals.get("skipped_records"):
            session.notes.append(f"pid {pid}: {int(info.totals['skipped_records'])} heap records skipped: "
                                 f"their writer died or left the hook before finishing them")
