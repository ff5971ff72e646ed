"""Heap results -> raw stacks with memory metrics, and the figures the
reports need (totals, peak, leaks, overhead), kept in ``Session.memory``."""
from __future__ import annotations

from array import array
from itertools import compress
from operator import add, and_, or_
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..nogc import paused_collector
from ..session import FlatStacks, HeapStacks, ProcessInfo, Session, StackList
from ..capture.pystacks import CodeTable, split_python
from .collect import DETACH_REASONS, NSTAT, STAT_NAMES, HeapProcess

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


#: Heap statistic -> profile column, when the exit scan ran and when it did
#: not (then what was still allocated is "live at death": leaked).
_SCANNED_COLUMNS = {
    "alloc_bytes": "alloc_bytes", "alloc_count": "alloc_count", "peak_bytes": "peak_bytes",
    "peak_count": "peak_count", "live_bytes": "live_bytes", "live_count": "live_count",
    "definite_bytes": "definite_bytes", "definite_count": "definite_count",
    "indirect_bytes": "indirect_bytes", "indirect_count": "indirect_count",
    "reachable_bytes": "reachable_bytes", "reachable_count": "reachable_count",
    "possible_bytes": "possibly_lost_bytes", "possible_count": "possibly_lost_count",
}
_UNSCANNED_COLUMNS = {k: v for k, v in _SCANNED_COLUMNS.items()
                      if k.startswith(("alloc_", "peak_", "live_"))}


#: For each of the above: the profile columns (the two "leaked" ones last),
#: the statistic each of the others comes from, and which of those columns
#: each "leaked" one adds up.
def _plan(table: Dict[str, str], leaked_bytes: Sequence[str], leaked_counts: Sequence[str]):
    columns = tuple(table.values())
    stats = tuple(_STAT_INDEX[k] for k in table)
    sums = tuple(tuple(columns.index(c) for c in group) for group in (leaked_bytes, leaked_counts))
    return columns + ("leaked_bytes", "leaked_count"), stats, sums


_STAT_INDEX = {name: i for i, name in enumerate(STAT_NAMES)}
_SCANNED_PLAN = _plan(_SCANNED_COLUMNS, ("definite_bytes", "indirect_bytes"), ("definite_count", "indirect_count"))
_UNSCANNED_PLAN = _plan(_UNSCANNED_COLUMNS, ("live_bytes",), ("live_count",))
TRUNCATED_STAT = _STAT_INDEX["truncated"]


def stack_columns(table: "array[int]", scanned: bool) -> Dict[str, "array[int]"]:
    """Every profile column of the allocation stacks, from their packed
    statistics (NSTAT whole numbers per stack, STAT_NAMES order).  Without
    an exit scan (the program crashed, was killed or called _exit)
    everything still allocated counts as leaked: "live at death"."""
    # A column at a time, by slicing: a large program leaves 100,000
    # stacks and 15 columns, and a machine integer array holds them
    # without an int object per value.
    names, stats, sums = _SCANNED_PLAN if scanned else _UNSCANNED_PLAN
    columns = [table[i::NSTAT] for i in stats]
    for group in sums:                 # (one column or two)
        columns.append(array("q", map(add, *(columns[i] for i in group))) if len(group) == 2
                       else columns[group[0]])
    return dict(zip(names, columns))


def _code_ids(proc: Optional[ProcessInfo], info: HeapProcess) -> Callable[[Tuple[int, int]], int]:
    """Code object (address, fingerprint) -> index in the process's Python
    code table (:attr:`ProcessInfo.python`, shared with its CPU samples'
    frames), appending the heap's code objects to it."""
    if proc is None or info.python_version is None:
        return lambda key: 0
    version = list(info.python_version)
    table = CodeTable(info.python_version, proc.python.get("codes", []) if proc.python.get("version") == version else [])
    proc.python = table.doc()
    return lambda key: table.id_of(key, info.python_codes.get(key))


def _heap_stacks(session: Session, info: HeapProcess) -> HeapStacks:
    """One process's allocation stacks (see :func:`add_heap_to_session`)."""
    proc = session.processes.get(info.pid)
    gen = max(0, len(proc.maps) - 1) if proc else 0
    ips: StackList = info.stacks
    info.stacks = FlatStacks()
    table, info.stats = info.stats, array("q")
    values = stack_columns(table, info.scanned)
    truncated = array("B", table[TRUNCATED_STAT::NSTAT])
    del table
    py: Optional[List[Tuple[int, ...]]] = None
    if info.totals.get("python_stacks", 0) > 0:
        code_id = _code_ids(proc, info)      # (a Python program's stacks become tuples, split)
        ips, py = map(list, zip(*(split_python(words, code_id) for words in ips))) if ips else ([], [])
    # Only rows with an address and a non-zero value (a stack interned
    # but whose figures are all zero adds nothing to the profile).  Every
    # figure of a stack is at most what it allocated: one with neither an
    # allocation nor a byte counted has none.
    allocated = map(bool, map(or_, values["alloc_count"], values["alloc_bytes"]))
    keep = list(map(and_, map(bool, ips.lengths if isinstance(ips, FlatStacks) else map(len, ips)), allocated))
    left_out = not all(keep)
    if left_out:
        ips = ips.select(keep) if isinstance(ips, FlatStacks) else list(compress(ips, keep))
        truncated = array("B", compress(truncated, keep))
        values = {m: array("q", compress(column, keep)) for m, column in values.items()}
        if py is not None:
            py = list(compress(py, keep))
    return HeapStacks(info.pid, gen, ips, truncated, values, py, left_out)


def add_heap_to_session(session: Session, heap: Dict[int, HeapProcess]) -> None:
    """Add the heap's stacks (one :class:`HeapStacks` per process, in
    ``session.heap_stacks``) and figures to ``session``.

    Each process's ``stacks`` and ``stats`` are consumed (emptied) as they
    are converted: a large program leaves 100,000 stacks, and its packed
    statistics need not stay in memory beside the columns made from them.
    Every address is one shared int object (a few thousand distinct
    addresses fill millions of frames)."""
    with paused_collector():           # 100,000 new objects, no cycles
        session.heap_stacks.extend(_heap_stacks(session, info) for info in heap.values())
    for pid, info in heap.items():
        h = info.header
        timed = h.get("timed_calls", 0)
        session.memory[str(pid)] = {
            "totals": {k: round(v, 1) for k, v in info.totals.items()},
            "scanned": info.scanned,
            "scan_error": info.scan_error,
            # float sums of sampled weights can end a hair below zero
            "timeline": [[t, max(0, round(v))] for t, v in info.timeline],
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
