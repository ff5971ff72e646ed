"""The profile model: the one structure every renderer reads.

A profile is a table of frames, a list of stacks (root first, as indexes into
the frame table) and one or more value columns (``samples`` for CPU,
``alloc_bytes``/``alloc_count``/... for memory).  CPU samples, heap bytes and
folded files read back from disk all end up here, so every renderer serves
them alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

#: Frame categories, used for colouring and reports.
CATEGORIES = ("program", "library", "kernel", "jit", "python", "offcpu", "unknown")


@dataclass(frozen=True)
class Frame:
    """One function in a stack.

    ``name`` is what a person reads (demangled); ``module`` the file it lives
    in (basename, may be empty for folded input); ``category`` one of
    :data:`CATEGORIES`; ``file``/``line`` the source position when known;
    ``inlined`` marks a frame synthesised from DWARF inline info.
    """

    name: str
    module: str = ""
    category: str = "unknown"
    file: Optional[str] = None
    line: Optional[int] = None
    inlined: bool = False


@dataclass
class Profile:
    """Frames, stacks and values, plus free-form metadata.

    ``stacks[i]`` is a tuple of frame indexes, root first.  ``values[m][i]``
    is the value of metric ``m`` for stack ``i``.  ``pids``/``tids`` give the
    process and thread of each stack where known (``None`` for folded input).
    ``metadata`` holds ``command``, ``kind`` ("cpu" or "memory"),
    ``default_metric``, ``units`` (metric -> unit word) and run statistics.
    """

    frames: List[Frame] = field(default_factory=list)
    stacks: List[Tuple[int, ...]] = field(default_factory=list)
    values: Dict[str, List[int]] = field(default_factory=dict)
    pids: Optional[List[Optional[int]]] = None
    tids: Optional[List[Optional[int]]] = None
    metadata: Dict[str, object] = field(default_factory=dict)
    _frame_index: Dict[Frame, int] = field(default_factory=dict, repr=False, compare=False)

    # -- building ---------------------------------------------------------
    def intern(self, frame: Frame) -> int:
        """Index of ``frame`` in the frame table, adding it if new."""
        index = self._frame_index.get(frame)
        if index is None:
            index = len(self.frames)
            self.frames.append(frame)
            self._frame_index[frame] = index
        return index

    def add(self, frames: Sequence[Frame], values: Dict[str, int],
            pid: Optional[int] = None, tid: Optional[int] = None) -> None:
        """Append one stack (root first) with its values."""
        if not self._frame_index and self.frames:
            self._frame_index = {f: i for i, f in enumerate(self.frames)}
        self.stacks.append(tuple(self.intern(f) for f in frames))
        n = len(self.stacks)
        for metric, value in values.items():
            column = self.values.setdefault(metric, [0] * (n - 1))
            column.append(value)
        for column in self.values.values():
            if len(column) < n:
                column.append(0)
        if pid is not None or tid is not None or self.pids is not None:
            if self.pids is None:
                self.pids = [None] * (n - 1)
                self.tids = [None] * (n - 1)
            self.pids.append(pid)
            self.tids.append(tid)

    # -- reading ----------------------------------------------------------
    @property
    def metrics(self) -> List[str]:
        return list(self.values)

    def default_metric(self) -> str:
        metric = self.metadata.get("default_metric")
        if isinstance(metric, str) and metric in self.values:
            return metric
        return next(iter(self.values), "samples")

    def unit(self, metric: str) -> str:
        units = self.metadata.get("units") or {}
        return str(units.get(metric, "samples" if metric == "samples" else metric))

    def column(self, metric: Optional[str] = None) -> List[int]:
        metric = metric or self.default_metric()
        if metric not in self.values:
            from .errors import UsageError
            raise UsageError(f"metric {metric!r} not in this profile (has: {', '.join(self.values) or 'none'})")
        return self.values[metric]

    def total(self, metric: Optional[str] = None) -> int:
        return sum(self.column(metric))

    def named_stacks(self, metric: Optional[str] = None) -> Iterator[Tuple[Tuple[str, ...], int]]:
        """(names root first, value) for every stack with a non-zero value."""
        column = self.column(metric)
        for stack, value in zip(self.stacks, column):
            if value:
                yield tuple(self.frames[i].name for i in stack), value

    def __len__(self) -> int:
        return len(self.stacks)


def merge_identical(profile: Profile) -> Profile:
    """A copy with identical (stack, pid, tid) rows summed, order kept."""
    out = Profile(frames=list(profile.frames), metadata=dict(profile.metadata))
    out._frame_index = {f: i for i, f in enumerate(out.frames)}
    rows: Dict[tuple, int] = {}
    metrics = list(profile.values)
    for i, stack in enumerate(profile.stacks):
        pid = profile.pids[i] if profile.pids else None
        tid = profile.tids[i] if profile.tids else None
        key = (stack, pid, tid)
        j = rows.get(key)
        if j is None:
            rows[key] = len(out.stacks)
            out.stacks.append(stack)
            for m in metrics:
                out.values.setdefault(m, []).append(profile.values[m][i])
            if profile.pids is not None:
                out.pids = out.pids or []
                out.tids = out.tids or []
                out.pids.append(pid)
                out.tids.append(tid)
        else:
            for m in metrics:
                out.values[m][j] += profile.values[m][i]
    return out
