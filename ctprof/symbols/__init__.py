"""Symbol resolution: raw addresses of a session -> the frames of a profile.

Entry point for capture: :func:`resolve_session`.  Lower-level and reusable
(heap profiling, attach): :class:`Resolver`.  Modules:

- :mod:`.maps`      parse ``/proc/PID/maps`` snapshots, find an address's mapping
- :mod:`.elf`       ELF headers, PT_LOAD, build-id, debug links, bulk symbol tables
- :mod:`.symcache`  on-disk cache of symbol tables (``cache_dir("symbols")``)
- :mod:`.demangle`  ``__cxa_demangle`` through ctypes, Rust legacy hashes
- :mod:`.perfmap`   ``/tmp/perf-PID.map`` for JIT code
- :mod:`.lines`     DWARF file/line and inlined frames (pyelftools, lazy per CU)
- :mod:`.resolve`   the :class:`Resolver` tying them together
- :mod:`.python`    Python frames (code objects read from a CPython process) merged in
- :mod:`.pylines`   CPython line tables, 3.9 to 3.13
"""
from __future__ import annotations

from array import array
from itertools import accumulate, chain, compress, repeat
from operator import attrgetter, eq, not_
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..nogc import paused_collector
from ..profile import Profile
from ..session import FlatStacks, HeapStacks, Session
from . import offcpu, stackmap
from .python import PythonFrames
from .resolve import TRUNCATED, Resolver, _Progress

if TYPE_CHECKING:
    from .live import LiveHeapFrames

#: A heap stack's row when the live work left it to the end (:mod:`.live`).
NO_ROW = 0xFFFFFFFF

__all__ = ["resolve_session", "Resolver", "TRUNCATED"]


def resolve_session(session: Session, *, demangle: bool = True, lines: bool = False,
                    progress: Optional[bool] = None, group_functions: bool = True,
                    consume: bool = False, live: "Optional[LiveHeapFrames]" = None) -> Profile:
    """Resolve every stack of ``session`` into a :class:`Profile`.

    Frames are root first; a truncated stack gets a ``[truncated]`` root.
    Stacks that resolve identically for the same (pid, tid) are merged and
    their values summed.  ``demangle=False`` keeps raw symbol names;
    ``lines=True`` adds file/line and inlined frames from DWARF;
    ``group_functions=False`` names stripped code per address instead of per
    function (see :class:`Resolver`); ``progress`` None shows progress on stderr only if it is a terminal and
    resolution takes over a second (True/False force it on/off).
    Per-module problems go to ``metadata["symbol_warnings"]`` (one line per
    module), counts to ``metadata["symbol_stats"]``.  ``consume=True``
    empties ``session.stacks``, letting each raw stack go once resolved (for
    a caller that saved or encoded them already: ``ctprof run``), so the
    raw stacks and the profile never both live whole.  ``live``: the heap
    stacks' frames made while the program ran (:mod:`.live`), taken over
    where they were made with the same options.
    """
    if live is not None and live.take_over(session, demangle=demangle, lines=lines,
                                           group_functions=group_functions):
        resolver, profile, ids = live.resolver, live.profile, live.ids
        resolver.progress = _Progress(progress)
        profile.metadata.update({"kind": session.kind, "command": list(session.command)})
    else:
        live = None
        resolver = Resolver(session, demangle=demangle, lines=lines, progress=progress,
                            group_functions=group_functions)
        profile = Profile(metadata={"kind": session.kind, "command": list(session.command)})
        ids = _FrameIds(resolver, profile)
    rows: dict = {}
    stacks, pids, tids = profile.stacks, [], []
    raw = session.stacks
    total = len(raw)
    # every metric, in the order it first appears (before any is let go of)
    heap = session.heap_stacks
    columns = _Columns(profile.values, dict.fromkeys(chain(chain.from_iterable(map(attrgetter("values"), raw)),
                                                           *(block.values for block in heap))))
    if consume:
        session.stacks, session.heap_stacks = [], []
        raw, heap = _consumed(raw), _consumed(heap)
    python = PythonFrames(session)

    # No reference cycles are created here; without the collector walking
    # the growing tables over and over, resolution is about 30% faster.
    try:
        with paused_collector():
            markers = offcpu.MARKERS
            tables_key = pcs = returns = multi = None
            for n, s in enumerate(raw):
                pid, gen, ips = s.pid, s.gen, s.ips
                root = ids.truncated() if s.truncated else None
                if s.py or (ips and ips[0] in markers):
                    frames = ids.special(s, python)
                else:
                    # ids.stack inlined for the common case: every address seen
                    if (pid, gen) != tables_key:
                        tables_key = (pid, gen)
                        pcs, returns, multi = ids.tables_of(pid, gen)
                    if multi[0]:                       # inlined frames (--lines): expanded there
                        frames = ids.stack(pid, gen, ips)
                    else:
                        try:
                            frames = (*map(returns.__getitem__, ips[:0:-1]), pcs[ips[0]])
                        except (KeyError, IndexError):  # a new address, or no address at all
                            frames = ids.stack(pid, gen, ips)
                if root is not None:
                    frames = (root,) + frames
                rkey = (frames, pid, s.tid)
                row = rows.get(rkey)
                if row is None:
                    rows[rkey] = len(stacks)
                    stacks.append(frames)
                    pids.append(pid)
                    tids.append(s.tid)
                    columns.add(s.values)
                else:
                    columns.add_to(row, s.values)
                if n & 1023 == 0:
                    resolver.progress.update(lambda: f"resolving symbols: {n}/{total} stacks, "
                                                     f"{resolver.stats['modules']} modules, "
                                                     f"{resolver.stats['addresses']} addresses")
            columns.flush()
            for block in heap:
                if live is None or not _add_live_rows(block, live, ids, python, (stacks, pids, tids), columns,
                                                      consume):
                    _add_heap_block(block, ids, python, (stacks, pids, tids), columns, consume)
    finally:
        resolver.close()
    resolver.progress.done(f"resolved {resolver.stats['addresses']} addresses in "
                           f"{resolver.stats['modules']} modules")
    profile.pids, profile.tids = pids, tids
    if session.kind == "cpu" and "samples" in profile.values:
        profile.metadata.setdefault("default_metric", "samples")
    profile.metadata["symbol_warnings"] = list(resolver.warnings)
    profile.metadata["symbol_stats"] = dict(resolver.stats)
    return profile


class _FrameIds:
    """Frame ids (indexes into the profile's frame table) of raw stacks.

    Every distinct address of a (pid, maps generation) is resolved once and
    its frame ids kept in two int-keyed tables, interrupted pcs and return
    addresses apart (a pc is looked up as is, a return address as the call
    before it).  A whole stack is then one ``map`` of a dict lookup over its
    addresses (a C loop): 100,000 heap stacks of 32 frames cost about 0.3 s,
    not a Python step per frame.  An address that resolves to one frame (all
    of them unless ``--lines`` adds inlined frames) is stored as that id;
    one with several as their tuple, expanded when a table holds any."""

    def __init__(self, resolver: Resolver, profile: Profile) -> None:
        self.resolver = resolver
        self.profile = profile
        self.intern = profile.intern
        self.tables: Dict[Tuple[int, int], tuple] = {}
        self._truncated: Optional[int] = None

    def truncated(self) -> int:
        if self._truncated is None:
            self._truncated = self.intern(TRUNCATED)
        return self._truncated

    def tables_of(self, pid: int, gen: int) -> tuple:
        """(pcs, return addresses, [holds a multi-frame entry]) of a generation."""
        tables = self.tables.get((pid, gen))
        if tables is None:
            tables = self.tables[(pid, gen)] = ({}, {}, [False])
        return tables

    def _lookup(self, pid: int, gen: int, ip: int, is_return: bool, tables: tuple):
        table = tables[1] if is_return else tables[0]
        found = table.get(ip)
        if found is None:
            found = tuple(map(self.intern, self.resolver.resolve(pid, gen, ip, is_return)))
            if len(found) == 1:
                found = found[0]
            else:
                tables[2][0] = True
            table[ip] = found
        return found

    def stack(self, pid: int, gen: int, ips: Sequence[int]) -> Tuple[int, ...]:
        """Frame ids root first of ``ips`` (leaf first; ``ips[0]`` the
        interrupted instruction, the rest return addresses)."""
        if not ips:
            return ()
        tables = self.tables_of(pid, gen)
        pcs, returns, multi = tables
        try:
            frames = (*map(returns.__getitem__, ips[:0:-1]), pcs[ips[0]])
        except KeyError:               # new addresses: resolved root first
            lookup = self._lookup
            for i in range(len(ips) - 1, 0, -1):
                if ips[i] not in returns:
                    lookup(pid, gen, ips[i], True, tables)
            lookup(pid, gen, ips[0], False, tables)
            frames = (*map(returns.__getitem__, ips[:0:-1]), pcs[ips[0]])
        if multi[0]:
            frames = tuple(chain.from_iterable(f if type(f) is tuple else (f,) for f in frames))
        return frames

    def per_address(self, pid: int, gen: int, ips: Sequence[int]) -> List[Tuple[int, ...]]:
        """The frame ids of each address of ``ips``, root first."""
        tables = self.tables_of(pid, gen)
        last = len(ips) - 1
        out = []
        for i in range(last, -1, -1):
            f = self._lookup(pid, gen, ips[i], i > 0, tables)
            out.append(f if type(f) is tuple else (f,))
        return out

    def with_python(self, pid: int, gen: int, ips: Sequence[int], py: Sequence[int],
                    python: PythonFrames) -> List[int]:
        """Frame ids root first of native addresses ``ips`` (leaf first)
        with the Python frames ``py`` in place of the eval loop's frames."""
        return python.merge(pid, self.per_address(pid, gen, ips), py, self.profile.frames.__getitem__, self.intern)

    def special(self, s, python) -> Tuple[int, ...]:
        """A stack with Python frames, or an off-CPU stack (whose reason is
        the leaf, in place of an address)."""
        ips = s.ips
        marker = ips[0] if ips and ips[0] in offcpu.MARKERS else None
        if marker is not None:
            ips = ips[1:]
        if s.py:
            parts = list(self.with_python(s.pid, s.gen, ips, s.py, python))
        else:
            parts = list(self.stack(s.pid, s.gen, ips))
        if marker is not None:
            leaf = self.profile.frames[parts[-1]] if parts else None
            parts.append(self.intern(offcpu.off_cpu_frame(marker, leaf)))
        return tuple(parts)


def _add_heap_block(block: HeapStacks, ids: _FrameIds, python: PythonFrames,
                    lists: Tuple[list, list, list], columns: "_Columns", consume: bool) -> None:
    """Resolve one process's heap stacks (column by column) into rows of
    the profile: a stack that resolves like an earlier one of the process
    adds to that one's row.  ``consume``: let each stack's addresses go
    once resolved."""
    if block.py is None and isinstance(block.ips, FlatStacks) and \
            _add_flat_heap_block(block, ids, lists, columns, consume):
        return
    pid, gen, py, truncated, all_ips = block.pid, block.gen, block.py, block.truncated, block.ips
    pcs, returns, multi = ids.tables_of(pid, gen)
    return_frame = returns.__getitem__
    root = ids.truncated() if any(truncated) else None

    def frames_of_stacks() -> Iterator[Tuple[int, ...]]:
        for i, ips in enumerate(all_ips):
            frames = None
            if not (py and py[i]) and not multi[0]:
                try:                   # _heap_frames' ids.stack inlined: every address seen
                    frames = (*map(return_frame, ips[:0:-1]), pcs[ips[0]])
                    if truncated[i]:
                        frames = (root,) + frames
                except KeyError:       # a new address
                    pass
            if frames is None:
                frames = _heap_frames(block, i, ids, python, root)
            if consume and type(all_ips) is list:
                all_ips[i] = ()
            yield frames
    frames, row_of, is_new = _number_rows(frames_of_stacks())
    base = _add_rows(lists, frames, pid)
    if consume:
        block.ips = FlatStacks()
    columns.add_block(array("l", map(base.__add__, row_of)), is_new, block.values)


def _heap_frames(block: HeapStacks, i: int, ids: _FrameIds, python: PythonFrames,
                 root: Optional[int]) -> Tuple[int, ...]:
    """Frame ids root first of a heap block's stack ``i`` as the end
    resolves it (``root``: the ``[truncated]`` frame of a stack cut at the
    depth limit)."""
    if block.py and block.py[i]:
        frames = ids.special(block.raw_stack(i), python)
    else:
        frames = ids.stack(block.pid, block.gen, block.ips[i])
    return (root,) + frames if block.truncated[i] else frames


def _number_rows(frames_of_stacks: Iterable[Tuple[int, ...]]) -> \
        Tuple[List[Tuple[int, ...]], "array[int]", bytearray]:
    """One process's heap rows: a stack that resolves like an earlier one
    adds to that one's row (a process's heap rows are keyed by their
    frames alone: they are the only rows without a thread, and a process
    has one block).  The rows' frames in order of their first stack, each
    stack's row, and whether it is its row's first."""
    rows: dict = {}
    frames_of_rows: List[Tuple[int, ...]] = []
    row_of = array("l")
    is_new = bytearray()
    for frames in frames_of_stacks:
        row = rows.setdefault(frames, len(frames_of_rows))
        if row == len(frames_of_rows):
            frames_of_rows.append(frames)
            is_new.append(1)
        else:
            is_new.append(0)
        row_of.append(row)
    return frames_of_rows, row_of, is_new


def _add_flat_heap_block(block: HeapStacks, ids: _FrameIds, lists: Tuple[list, list, list],
                         columns: "_Columns", consume: bool) -> bool:
    """:func:`_add_heap_block` for stacks as captured (one array of
    addresses, no Python frames), its lookups done in C (:mod:`.stackmap`):
    each distinct address resolved here once, then every address looked up
    and the stacks that resolve alike found there.  False (nothing added)
    where that cannot be done: the Python loop does it instead."""
    flat: FlatStacks = block.ips           # type: ignore[assignment]
    pid, gen, truncated = block.pid, block.gen, block.truncated
    tables = ids.tables_of(pid, gen)
    found = stackmap.frame_ids(flat.words, flat.lengths, tables,
                               lambda ip, is_return: ids._lookup(pid, gen, ip, is_return, tables))
    first = None if found is None else stackmap.first_alike(found, flat.lengths, truncated)
    if found is None or first is None:
        return False
    starts, n = flat.starts(), len(flat)
    if consume:                            # the addresses' last use
        block.ips = FlatStacks()
        words = len(flat.words)
        del flat
        stackmap.give_back_memory(words)
    root = ids.truncated() if any(truncated) else None
    is_new = bytearray(map(eq, first, range(n)))
    new_rows = array("I", compress(range(n), is_new))
    # The new rows' frames, root first, a few thousand rows at a time: their
    # ids made Python ints, each frame id one int object shared by every
    # stack (as the tables' are: 3 million of their own would cost 80
    # MiB), then each row a slice of those.  Last rows first, the ids
    # let go of as they are used, so they and the frames made of them do
    # not both live whole.
    shared = list(range(len(ids.profile.frames))).__getitem__
    made: List[Tuple[int, ...]] = []
    for part in range(len(new_rows) - len(new_rows) % _TRANSPOSE_ROWS, -1, -_TRANSPOSE_ROWS):
        rows = new_rows[part:part + _TRANSPOSE_ROWS]
        if not rows:
            continue
        first_word = starts[rows[0]]
        frame_ids = list(map(shared, found[first_word:starts[rows[-1] + 1]]))
        del found[first_word:]
        for i in reversed(rows):
            start, end = starts[i] - first_word, starts[i + 1] - first_word
            frames = tuple(frame_ids[end - 1:start - 1 if start else None:-1]) if end > start else ()
            made.append((root,) + frames if truncated[i] else frames)
    made.reverse()
    base = _add_rows(lists, made, pid)
    del made
    # a stack's row: that of the first stack alike, the rows numbered in order
    row_of_new = list(accumulate(is_new, initial=base))
    columns.add_block(array("l", map(row_of_new.__getitem__, first)), is_new, block.values)
    return True


def _add_live_rows(block: HeapStacks, live: "LiveHeapFrames", ids: _FrameIds, python: PythonFrames,
                   lists: Tuple[list, list, list], columns: "_Columns", consume: bool) -> bool:
    """:func:`_add_heap_block` when the stacks of the block got their rows
    while the program ran (and no stack was left out of the block): those
    rows, as they are.  Stacks left to the end (an address outside its
    snapshot's file mappings, as allocations a fork child made before it
    exec'd have) are resolved here, as :func:`_add_heap_block` resolves
    them.  False (nothing added) where the rows cannot be used (a
    snapshot the session holds otherwise, say): :func:`_add_heap_block`
    then resolves them all."""
    if block.left_out:
        return False
    rows = live.rows_of(block.pid, len(block))
    if rows is None:
        return False
    frames, row_of, is_new = rows
    stats = ids.resolver.stats
    left = row_of.count(NO_ROW)
    if left:
        frames, row_of, is_new = _rows_with_the_rest(block, ids, python, frames, row_of)
        stats["heap_stacks_at_end"] = stats.get("heap_stacks_at_end", 0) + left
    base = _add_rows(lists, frames, block.pid)
    stats["heap_stacks_live"] = stats.get("heap_stacks_live", 0) + len(block) - left
    if consume:
        block.ips = FlatStacks()
    columns.add_block(array("l", map(base.__add__, row_of)), is_new, block.values)
    return True


def _rows_with_the_rest(block: HeapStacks, ids: _FrameIds, python: PythonFrames,
                        made: List[Tuple[int, ...]], made_row_of: "array[int]"):
    """Every stack's row when some were left to the end (NO_ROW): those
    resolved now, and the rows numbered anew in the order of their first
    stack, as :func:`_add_heap_block` numbers them."""
    root = ids.truncated() if any(block.truncated) else None
    return _number_rows(made[row] if row != NO_ROW else _heap_frames(block, i, ids, python, root)
                        for i, row in enumerate(made_row_of))


def _add_rows(lists: Tuple[list, list, list], frames: Sequence[Tuple[int, ...]], pid: int) -> int:
    """Append heap rows (``frames`` of each, root first) of process
    ``pid`` to the profile's stacks, pids and tids (heap rows have no
    thread: 0); returns the first one's index."""
    stacks, pids, tids = lists
    base = len(stacks)
    stacks.extend(frames)
    pids.extend(repeat(pid, len(frames)))
    tids.extend(repeat(0, len(frames)))
    return base


def _consumed(stacks: list) -> Iterator:
    """``stacks`` in order, each dropped from the list as it is handed out."""
    stacks.reverse()
    while stacks:
        yield stacks.pop()


class _Columns:
    """The profile's value columns, filled row by row as raw stacks are
    resolved: a row's values are its first raw stack's, plus those of the
    raw stacks that resolve to the same row.

    Rows are transposed into the columns a few thousand at a time: each
    row's dict (raw stacks keep only their non-zero values) laid over a
    dict of zeros for every metric (``zeros | values``, in C), then ``zip``.
    A Python step per metric only for a repeated raw stack."""

    def __init__(self, columns: Dict[str, List[int]], metrics: Dict[str, None]) -> None:
        self.columns = columns
        self.zeros = dict.fromkeys(metrics, 0)
        self.lists = [columns.setdefault(m, []) for m in metrics]
        self.pending: List[Mapping[str, int]] = []   # rows not transposed yet
        self.late: List[Tuple[int, Mapping[str, int]]] = []  # repeats of those rows
        self.done = 0                                # rows transposed

    def add(self, values: Mapping[str, int]) -> None:
        """The values of a new row."""
        self.pending.append(values)
        if len(self.pending) >= _TRANSPOSE_ROWS:
            self.flush()

    def add_to(self, row: int, values: Mapping[str, int]) -> None:
        """More values for ``row``."""
        if row >= self.done:
            self.late.append((row, values))
            return
        columns = self.columns
        for metric, value in values.items():
            columns[metric][row] += value

    def add_block(self, row_of: Sequence[int], is_new: Sequence[int], values: Mapping[str, Sequence[int]]) -> None:
        """The values of a block of stacks, given column by column: stack
        ``i`` adds to row ``row_of[i]``, a new row (in order) where
        ``is_new[i]``.  A Python step per metric only for a repeated row."""
        self.flush()
        count = sum(is_new)
        if isinstance(row_of, array) and self._add_summed(row_of, count, values):
            return
        for metric, column in zip(self.zeros, self.lists):
            source = values.get(metric)
            column.extend(repeat(0, count) if source is None else compress(source, is_new))
        self.done += count
        columns = self.columns
        for i in compress(range(len(row_of)), map(not_, is_new)):
            row = row_of[i]
            for metric, source in values.items():
                columns[metric][row] += source[i]

    def _add_summed(self, row_of: "array[int]", count: int, values: Mapping[str, Sequence[int]]) -> bool:
        """add_block with each metric's rows summed in C (a block's rows
        are its own: rows ``done`` to ``done + count - 1``), a metric at a
        time; False (nothing added) where that cannot be done."""
        base = self.done
        if not all(stackmap.summable(source, row_of) for source in values.values()) or \
                (row_of and (min(row_of) < base or max(row_of) >= base + count)):
            return False
        for metric, column in zip(self.zeros, self.lists):
            source = values.get(metric)
            if source is None:
                column.extend(repeat(0, count))
                continue
            summed = stackmap.sum_rows(source, row_of, base, count)
            if summed is None:                 # (checked above)
                raise RuntimeError("ctprof_sum_rows refused rows checked in range")
            column.extend(summed)
        self.done += count
        return True

    def flush(self) -> None:
        """Transpose the pending rows into the columns."""
        pending, self.pending = self.pending, []
        if not all(type(values) is dict for values in pending):    # another Mapping
            pending = [dict(values) for values in pending]
        full = map(dict.values, map(self.zeros.__or__, pending))
        for column, part in zip(self.lists, zip(*full)):
            column.extend(part)
        self.done += len(pending)
        late, self.late = self.late, []
        for row, values in late:
            self.add_to(row, values)


#: Rows transposed into columns at a time.
_TRANSPOSE_ROWS = 4096
