"""Heap stacks resolved while the program still runs.

``ctprof run --mem`` takes each process's new allocation stacks every 50
ms while the program runs (their addresses never change once taken); only
their figures wait for the end.  Turning a g++ compile's 100,000 stacks
into frames took a third of a second after the program had exited, on a
controller that is otherwise idle while it runs.  So :class:`LiveHeapFrames`
does it meanwhile, a bounded batch at each of the controller's polls, and
:func:`~ctprof.symbols.resolve_session` starts from what it made: the same
frame table and resolver, and the rows the stacks make.

What is resolved here is what the end would resolve alike.  Each stack's
addresses are resolved under the process's maps snapshot of the moment,
which at the end is one of the session's own snapshots.  An address
outside the file mappings of its own snapshot could still resolve
otherwise, and its stack is left to the end (which looks for it in the
nearest other snapshot, of those there are by then; JIT code is named by a
perf map read at the end).  A stack's Python frames are named from the
code objects the collector has read from the process (it reads each one
once, while the process lives): a stack naming one not read yet waits for
the next poll, or for the end of the run, when the table is the one the
end itself uses.
"""
from __future__ import annotations

import time
from array import array
from typing import Dict, List, Optional, Sequence, Set, Tuple

from ..capture.pystacks import PYFRAMES_MARK, CodeTable, PythonCodes, split_python
from ..profile import Profile
from ..session import FlatStacks, ProcessInfo, Session
from . import NO_ROW, _FrameIds
from .python import PythonFrames
from .resolve import Resolver


class _NotReadYet(Exception):
    """A stack names a code object the collector has not read yet."""


#: Stacks of a process still unresolved at the end that are resolved
#: here all the same (more, and a quarter of its stacks, go to the end's
#: whole-block path: a Python step per stack is slower there).
LEFT_AT_END = 5000

#: The controller's time given to resolving stacks at one of its polls
#: (they come every 20 ms; a g++ compile interns some 25,000 stacks a
#: second, about 5 us each to resolve), in batches of BATCH_STACKS.
STEP_SECONDS = 0.010
BATCH_STACKS = 250


class _Process:
    """One process's stacks resolved so far, and the profile rows they make:
    the stacks that resolve alike share a row, numbered in the order of
    their first stack (as the end numbers them)."""

    def __init__(self, stacks: FlatStacks) -> None:
        self.stacks = stacks            # the FlatStacks they are read from
        self.row_of = array("I")        # per stack: its row (NO_ROW: left to the end)
        self.is_new = bytearray()       # per stack: it is its row's first
        self.rows: Dict[Tuple[int, ...], int] = {}          # frames -> row
        self.row_frames: List[Tuple[int, ...]] = []         # row -> frames
        self.word = 0                   # where the next stack starts in stacks.words
        self.off = False                # all its stacks left to the end
        self.maps: Dict[int, str] = {}  # the snapshots they were resolved under, by generation
        self.exe = ""                   # ... and the executable (a process may exec another)
        self.current = False            # its snapshot was its maps of the moment at the last poll
        self.python: Optional[PythonCodes] = None   # its code objects read so far (a CPython)
        self.codes: Optional[CodeTable] = None      # ... numbered for the frames made here


class LiveHeapFrames:
    """Frames (root first, as indexes into :attr:`profile`'s frame table;
    a ``[truncated]`` root on a stack cut at the depth limit) of each
    process's heap stacks, made while the program runs.

    :meth:`step` is called at the controller's polls with what capture has
    so far; :func:`~ctprof.symbols.resolve_session` takes :attr:`profile`,
    :attr:`resolver` and :meth:`rows_of` over at the end."""

    def __init__(self, *, demangle: bool = True, group_functions: bool = True) -> None:
        self.session = Session(kind="memory")     # the processes as seen so far
        self.resolver = Resolver(self.session, demangle=demangle, progress=False,
                                 group_functions=group_functions)
        self.profile = Profile()
        self.ids = _LiveFrameIds(self.resolver, self.profile)
        self.python = PythonFrames(self.session)
        self.options = (demangle, group_functions)
        self.failed = False
        self._processes: Dict[int, _Process] = {}

    def step(self, processes: Dict[int, ProcessInfo],
             stacks: Sequence[Tuple[int, FlatStacks, int, Optional[PythonCodes]]]) -> None:
        """Resolve stacks not yet resolved, for about STEP_SECONDS.
        ``processes``: each process's maps snapshots so far, the last the
        newest (others may be ""); ``stacks``: (pid, its stacks, how many
        of them are complete, its code objects read so far if it is a
        CPython).  Never raises: the run goes on, and the end resolves
        everything itself (:attr:`failed`)."""
        if self.failed:
            return
        try:
            self._step(processes, stacks)
        except Exception:              # (a defect here must not cost the run)
            self.failed = True

    def _step(self, processes: Dict[int, ProcessInfo],
              stacks: Sequence[Tuple[int, FlatStacks, int, Optional[PythonCodes]]]) -> None:
        deadline = time.monotonic() + STEP_SECONDS
        for state in self._processes.values():
            state.current = False
        for pid, flat, ready, python in stacks:
            proc = processes.get(pid)
            if proc is None or not proc.maps:
                continue                       # (its maps changed since the last snapshot: later)
            self.session.processes[pid] = proc
            state = self._processes.get(pid)
            if state is None:
                state = self._processes[pid] = _Process(flat)
            elif state.stacks is not flat:
                # Capture hands a process's stacks over once, at its end, and
                # starts a new empty list meanwhile; any other list is not
                # the one these frames were made from.
                if len(flat.lengths):
                    state.off = True
                continue
            state.current = True
            state.python = python
            while self._resolve_some(pid, proc, state, min(ready, len(flat.lengths)), BATCH_STACKS):
                if time.monotonic() >= deadline:
                    return

    def _resolve_some(self, pid: int, proc: ProcessInfo, state: _Process, ready: int, budget: int,
                      final: bool = False) -> int:
        """Resolve the next stacks of a process, up to ``budget``, under its
        newest maps snapshot; returns how many.  ``final``: the process's
        code objects are all read (a code object not read is then unnamed,
        as the end names it)."""
        first = len(state.row_of)
        last = min(ready, first + budget)
        if state.off or last <= first:
            return 0
        gen = len(proc.maps) - 1
        if state.exe and state.exe != proc.exe:
            state.off = True
            return 0
        state.maps[gen], state.exe = proc.maps[gen], proc.exe
        lengths = state.stacks.lengths[first:last]
        end = state.word + sum(lengths)
        words = state.stacks.words[state.word:end]
        has_python = PYFRAMES_MARK in words
        if has_python and state.python is None:
            if final:
                state.off = True               # (no code table: the end names them)
            return 0
        ids = self.ids
        deferred = ids.deferred.setdefault((pid, gen), set())
        rows, row_frames, row_of, is_new = state.rows, state.row_frames, state.row_of, state.is_new
        cut = state.stacks.truncated[first:last]
        if len(cut) < last - first:            # (not said: left to the end)
            state.off = True
            return 0
        root = ids.truncated() if any(cut) else None
        pos = done = 0
        for n, truncated in zip(lengths, cut):
            stack = tuple(words[pos:pos + n])
            if has_python and PYFRAMES_MARK in stack:
                frames = self._python_stack(pid, gen, stack, state, final)
                if frames is None:
                    break                      # (a code object not read yet: from here at the next poll)
            else:
                frames = ids.stack(pid, gen, stack)
            pos += n
            done += 1
            if deferred and not deferred.isdisjoint(stack):
                row_of.append(NO_ROW)
                is_new.append(0)
                continue
            if truncated:
                frames = (root,) + frames
            row = rows.get(frames)
            if row is None:
                row = rows[frames] = len(row_frames)
                row_frames.append(frames)
                is_new.append(1)
            else:
                is_new.append(0)
            row_of.append(row)
        state.word += pos
        # (each address is resolved once: the tables above are the cache)
        self.resolver.forget_addresses()
        return done

    def _python_stack(self, pid: int, gen: int, words: Tuple[int, ...], state: _Process,
                      final: bool) -> Optional[Tuple[int, ...]]:
        """Frames of a stack the program recorded with its Python frames,
        as the end makes them (``_FrameIds.special``); None if it names a
        code object not read yet."""
        version, entries = state.python
        if state.codes is None:
            state.codes = CodeTable(version)
            self.python.use_codes(pid, version, state.codes.entries)
        elif state.codes.version != version:
            state.off = True                   # (another interpreter: the frames made are the end's to judge)
            return None
        codes = state.codes

        def code_id(key: Tuple[int, int]) -> int:
            entry = entries.get(key)
            if entry is None and not final:
                raise _NotReadYet
            return codes.id_of(key, entry)
        try:
            ips, py = split_python(words, code_id)
        except _NotReadYet:
            return None
        if not py:
            return self.ids.stack(pid, gen, ips)
        return tuple(self.ids.with_python(pid, gen, ips, py, self.python))

    def take_over(self, session: Session, *, demangle: bool, lines: bool, group_functions: bool) -> bool:
        """Hand the frame table and the resolver to the resolution of the
        finished ``session``; False if what was made cannot be used (other
        options, or this failed).  A process keeps its frames only where
        each snapshot they were resolved under, and its executable, are the
        session's own, and it names no JIT code by a perf map (read only at
        the end)."""
        if self.failed or lines or (demangle, group_functions) != self.options:
            return False
        try:
            self._finish()
        except Exception:              # (as in step)
            self.failed = True
            return False
        self.resolver.use_session(session)
        self.ids.tables.clear()       # (per maps generation: the end's are its own)
        for pid, state in self._processes.items():
            proc = session.processes.get(pid)
            if proc is None or proc.perf_map or proc.exe != state.exe or \
                    any(gen >= len(proc.maps) or proc.maps[gen] != text for gen, text in state.maps.items()):
                state.off = True
        return True

    def _finish(self) -> None:
        """Resolve the stacks taken since the last poll: each process's
        stacks are all there now (handed over, complete).  Then let go of
        them (the session holds them; its raw addresses, 22 MB for a
        compile, are freed as soon as it lets go too)."""
        for pid, state in self._processes.items():
            proc = self.session.processes.get(pid)
            left = len(state.stacks.lengths) - len(state.row_of)
            if left > max(LEFT_AT_END, len(state.row_of) // 4):
                state.off = True               # (the whole-block path at the end is faster)
            if left and not state.current:
                state.off = True               # (no snapshot of its maps at the end of its run)
            if proc is not None and not state.off:
                done = self._resolve_some(pid, proc, state, len(state.stacks.lengths), left, final=True)
                # (the rest were resolved while the program ran; those given
                # no row are counted where the end resolves them)
                made = done - state.row_of[len(state.row_of) - done:].count(NO_ROW) if done else 0
                stats = self.resolver.stats
                stats["heap_stacks_at_end"] = stats.get("heap_stacks_at_end", 0) + made
            state.stacks = FlatStacks()

    def rows_of(self, pid: int, n: int) -> "Optional[Tuple[List[Tuple[int, ...]], array[int], bytearray]]":
        """The rows of ``pid``'s first ``n`` stacks, if all of them were
        resolved: the rows' frames in order, each stack's row (NO_ROW for
        a stack left to the end), whether it is its row's first.  None
        otherwise.  Either way the process's rows are handed over: asked
        again, None."""
        state = self._processes.pop(pid, None)
        if state is None or state.off or len(state.row_of) < n:
            return None
        is_new = state.is_new[:n]
        return state.row_frames[:sum(is_new)], state.row_of[:n], is_new


class _LiveFrameIds(_FrameIds):
    """:class:`~ctprof.symbols._FrameIds` noting, per process and maps
    generation, the addresses outside the file mappings of their own
    snapshot (``deferred``): stacks holding one are left to the end."""

    def __init__(self, resolver: Resolver, profile: Profile) -> None:
        super().__init__(resolver, profile)
        self.deferred: Dict[Tuple[int, int], Set[int]] = {}

    def _lookup(self, pid: int, gen: int, ip: int, is_return: bool, tables: tuple):
        known = ip in (tables[1] if is_return else tables[0])
        found = super()._lookup(pid, gen, ip, is_return, tables)
        if not known and not self.resolver.in_own_file_mapping(pid, gen, ip, is_return):
            self.deferred.setdefault((pid, gen), set()).add(ip)
        return found
