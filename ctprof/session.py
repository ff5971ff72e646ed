"""The raw session: what capture produced, before symbols.

Raw addresses and the memory maps they were taken under are kept so a saved
profile can be re-resolved and re-rendered without re-running the program.
How a session and its resolved :class:`~ctprof.profile.Profile` are stored
on disk is :mod:`ctprof.fileformat`'s (``save``/``load`` here call it).
"""
from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass, field
from itertools import accumulate, compress
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .profile import Profile


#: A large memory profile holds 100,000 raw stacks: without a ``__dict__``
#: each costs about 100 bytes less (``slots`` needs Python 3.10).
_COMPACT = {"slots": True} if sys.version_info >= (3, 10) else {}


class FlatStacks(Sequence[Tuple[int, ...]]):
    """Many stacks' addresses one after the other in one machine array
    (``words``), ``lengths[i]`` of them for stack ``i``: the form heap
    stacks come over in.  A large program leaves 100,000 of them with 3
    million addresses; as tuples they cost an object per stack and a Python
    step per address to build, and again to flatten for the file.  Indexing
    gives stack ``i`` as a tuple, leaf first like :attr:`RawStack.ips`.
    ``truncated[i]``: stack ``i`` was cut at the depth limit (known as it is
    taken; empty where no one said)."""

    __slots__ = ("words", "lengths", "truncated", "_starts")

    def __init__(self, words: Optional["array[int]"] = None, lengths: Optional["array[int]"] = None,
                 truncated: Optional[bytearray] = None) -> None:
        self.words = words if words is not None else array("Q")
        self.lengths = lengths if lengths is not None else array("I")
        self.truncated = truncated if truncated is not None else bytearray()
        self._starts: Optional["array[int]"] = None

    def __len__(self) -> int:
        return len(self.lengths)

    def starts(self) -> "array[int]":
        """Where each stack starts in ``words``, and the end (one more)."""
        if self._starts is None or len(self._starts) != len(self.lengths) + 1:
            self._starts = array("Q", accumulate(self.lengths, initial=0))
        return self._starts

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        starts = self.starts()
        if i < 0:
            i += len(self)
        return tuple(self.words[starts[i]:starts[i + 1]])

    def __iter__(self) -> Iterator[Tuple[int, ...]]:
        words, start = self.words, 0
        for n in self.lengths:
            yield tuple(words[start:start + n])
            start += n

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FlatStacks):
            return self.lengths == other.lengths and self.words == other.words
        return isinstance(other, (list, tuple)) and list(self) == list(other)

    def copy(self) -> "FlatStacks":
        return FlatStacks(array("Q", self.words), array("I", self.lengths), bytearray(self.truncated))

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` stacks."""
        if n < len(self.lengths):
            del self.words[self.starts()[n]:]
            del self.lengths[n:]
            del self.truncated[n:]

    def select(self, keep: Sequence[int]) -> "FlatStacks":
        """The stacks where ``keep`` is true, in order."""
        starts, words = self.starts(), self.words
        out = FlatStacks()
        for i in compress(range(len(self.lengths)), keep):
            out.words.extend(words[starts[i]:starts[i + 1]])
        out.lengths = array("I", compress(self.lengths, keep))
        out.truncated = bytearray(compress(self.truncated, keep))
        return out


#: Stack addresses as heap capture hands them over, or as tuples.
StackList = Union[FlatStacks, List[Tuple[int, ...]]]


@dataclass(**_COMPACT)
class RawStack:
    """One unique raw stack of one thread: instruction pointers leaf first.

    ``gen`` is the maps generation of the process when the stack was taken
    (index into :attr:`ProcessInfo.maps`); ``ips[0]`` is the interrupted
    instruction itself, every later entry a return address.  ``values`` maps
    metric name to value (``samples`` for CPU).  ``py`` holds the thread's
    Python frames at that moment, leaf first, two numbers each: an index
    into the process's :attr:`ProcessInfo.python` code table, and the
    instruction's code-unit index ORed with ``PYFRAME_ENTRY`` (1 << 32) on
    the first frame of each ``_PyEval_EvalFrameDefault`` call.
    """

    pid: int
    tid: int
    gen: int
    ips: Tuple[int, ...]
    truncated: bool
    values: Dict[str, int]
    py: Tuple[int, ...] = ()


@dataclass(**_COMPACT)
class HeapStacks:
    """One process's heap allocation stacks, column by column: the form
    ``--mem`` captures them in (a large program leaves 100,000 of them; no
    object per stack, no dict of values per stack).

    Row ``i`` is one stack: ``ips[i]`` its addresses leaf first as in
    :attr:`RawStack.ips` (the leaf the call into the allocator; ``ips`` a
    :class:`FlatStacks` as captured, or a list of tuples),
    ``truncated[i]``, ``py[i]`` its Python frames as in :attr:`RawStack.py`
    (``py`` is None when no stack of the process has any), and
    ``values[metric][i]`` for every metric.  Every row has a non-zero value."""

    pid: int
    gen: int
    ips: StackList
    truncated: Sequence[int]
    values: Dict[str, Sequence[int]]
    py: Optional[List[Tuple[int, ...]]] = None
    #: some of the process's stacks (those without a value) are left out:
    #: row i is then not the i-th stack it interned
    left_out: bool = False

    def __len__(self) -> int:
        return len(self.ips)

    def raw_stack(self, i: int) -> RawStack:
        """Row ``i`` as a raw stack, as a saved profile loads it (a value
        for every metric)."""
        values = {m: column[i] for m, column in self.values.items()}
        return RawStack(self.pid, 0, self.gen, self.ips[i], bool(self.truncated[i]), values,
                        self.py[i] if self.py else ())


@dataclass
class ProcessInfo:
    """What one profiled process left behind.

    ``maps`` holds the text of ``/proc/PID/maps`` at each generation (a new
    generation after every ``dlopen``/``dlclose``), ``threads`` tid -> name,
    ``perf_map`` the text of ``/tmp/perf-PID.map`` if the process wrote one.
    ``python`` is set for a CPython process whose Python frames were read:
    ``{"version": [3, 11], "codes": [[qualname, filename, firstlineno,
    line table as hex], ...]}``, the code objects its raw stacks refer to.
    """

    pid: int
    ppid: int = 0
    exe: str = ""
    maps: List[str] = field(default_factory=list)
    threads: Dict[int, str] = field(default_factory=dict)
    thread_cpu_ns: Dict[int, int] = field(default_factory=dict)
    thread_samples: Dict[int, int] = field(default_factory=dict)
    perf_map: Optional[str] = None
    samples: int = 0
    dropped: int = 0
    handler_ns: int = 0
    wall_ns: int = 0
    timer: str = ""
    notes: List[str] = field(default_factory=list)
    python: Dict[str, object] = field(default_factory=dict)


@dataclass
class Session:
    """Everything one ``ctprof run``/``attach`` captured."""

    kind: str = "cpu"
    command: List[str] = field(default_factory=list)
    hz: float = 0.0
    unwind: str = "auto"
    max_depth: int = 128
    start_time: float = 0.0
    wall_s: float = 0.0
    exit_status: Optional[int] = None
    processes: Dict[int, ProcessInfo] = field(default_factory=dict)
    stacks: List[RawStack] = field(default_factory=list)
    #: ``--mem``'s allocation stacks, one block per process (besides
    #: ``stacks``; a loaded session has them as raw stacks)
    heap_stacks: List[HeapStacks] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    #: Heap profiling (``run --mem``): per pid (as a string), the totals,
    #: live-heap timeline, peak time, scan state and overhead figures.
    memory: Dict[str, dict] = field(default_factory=dict)
    mem_sample: int = 0

    def maps_text(self, pid: int, gen: int) -> str:
        """The maps snapshot of ``pid`` current at generation ``gen`` (the
        nearest earlier one if that generation was not recorded)."""
        proc = self.processes.get(pid)
        if not proc or not proc.maps:
            return ""
        return proc.maps[min(max(gen, 0), len(proc.maps) - 1)]


# -- facts of a session (read by the run summary and the profile's metadata) --

def cpu_seconds(session: Session) -> float:
    """CPU time of every sampled thread, in seconds."""
    return sum(sum(p.thread_cpu_ns.values()) for p in session.processes.values()) / 1e9


def achieved_hz(session: Session) -> float:
    """Samples per CPU-second actually delivered (the timers count CPU time)."""
    samples = sum(p.samples for p in session.processes.values())
    cpu = cpu_seconds(session)
    return samples / cpu if cpu > 0 else 0.0


def session_notes(session: Session) -> List[str]:
    """The session's notes, then each distinct per-process note once."""
    return list(session.notes) + sorted({n for p in session.processes.values() for n in p.notes})


# -- persistence: the file format is ctprof.fileformat's -------------------------

def save(path: str, profile: Profile, session: Optional[Session] = None) -> None:
    """Write ``profile`` (and the raw ``session``) to ``path``, all or
    nothing (:func:`ctprof.fileformat.save`)."""
    from .fileformat import save as save_file
    save_file(path, profile, session)


def load(path: str) -> Tuple[Profile, Optional[Session]]:
    """Read and validate a saved profile (:func:`ctprof.fileformat.load`)."""
    from .fileformat import load as load_file
    return load_file(path)


def is_profile_file(path: str) -> bool:
    """True if ``path`` starts like a ctprof profile of any format version."""
    from .fileformat import is_profile_file as is_profile
    return is_profile(path)
