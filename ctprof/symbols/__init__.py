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

import gc
from typing import Optional

from ..profile import Profile
from ..session import Session
from . import offcpu
from .python import PythonFrames
from .resolve import TRUNCATED, Resolver

__all__ = ["resolve_session", "Resolver", "TRUNCATED"]


def resolve_session(session: Session, *, demangle: bool = True, lines: bool = False,
                    progress: Optional[bool] = None, group_functions: bool = True) -> Profile:
    """Resolve every stack of ``session`` into a :class:`Profile`.

    Frames are root first; a truncated stack gets a ``[truncated]`` root.
    Stacks that resolve identically for the same (pid, tid) are merged and
    their values summed.  ``demangle=False`` keeps raw symbol names;
    ``lines=True`` adds file/line and inlined frames from DWARF;
    ``group_functions=False`` names stripped code per address instead of per
    function (see :class:`Resolver`); ``progress`` None shows progress on stderr only if it is a terminal and
    resolution takes over a second (True/False force it on/off).
    Per-module problems go to ``metadata["symbol_warnings"]`` (one line per
    module), counts to ``metadata["symbol_stats"]``.
    """
    resolver = Resolver(session, demangle=demangle, lines=lines, progress=progress,
                        group_functions=group_functions)
    profile = Profile(metadata={"kind": session.kind, "command": list(session.command)})
    # Built here rather than with Profile.add + merge_identical: frames are
    # interned once per unique address (frame indexes memoised per address),
    # so a stack costs a few dict lookups, not a Frame hash per entry.
    intern = profile.intern
    addr_ids: dict = {}
    rows: dict = {}
    stacks, pids, tids = profile.stacks, [], []
    values = profile.values
    total = len(session.stacks)
    truncated_id = None
    resolve = resolver.resolve
    python = PythonFrames(session)

    # No reference cycles are created here; without the collector walking
    # the growing tables over and over, resolution is about 30% faster.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for n, s in enumerate(session.stacks):
            pid, gen, ips = s.pid, s.gen, s.ips
            parts: list = []
            if s.truncated:
                if truncated_id is None:
                    truncated_id = intern(TRUNCATED)
                parts.append(truncated_id)
            marker = ips[0] if ips and ips[0] in offcpu.MARKERS else None
            if marker is not None:             # an off-CPU stack: its reason is the leaf
                ips = ips[1:]
            # Frame ids per address of this (pid, generation): return
            # addresses and interrupted pcs apart (a pc is looked up as is,
            # a return address as the call before it).  Plain int keys: a
            # million frames cost a million dict lookups, no tuple each.
            tables = addr_ids.get((pid, gen))
            if tables is None:
                tables = addr_ids[(pid, gen)] = ({}, {})
            exact, returns = tables
            native = list(map(returns.get, ips[:0:-1]))
            if ips:
                native.append(exact.get(ips[0]))
            if None in native:
                last = len(ips) - 1
                for k, ids in enumerate(native):
                    if ids is None:
                        i = last - k                   # native runs root first, ips leaf first
                        table = returns if i > 0 else exact
                        ids = native[k] = table[ips[i]] = tuple(
                            intern(f) for f in resolve(pid, gen, ips[i], i > 0))
            if s.py:
                parts.extend(python.merge(pid, native, s.py, profile.frames.__getitem__, intern))
            else:
                for ids in native:
                    parts.extend(ids)
            if marker is not None:
                leaf = profile.frames[parts[-1]] if parts else None
                parts.append(intern(offcpu.off_cpu_frame(marker, leaf)))
            rkey = (tuple(parts), pid, s.tid)
            row = rows.get(rkey)
            if row is None:
                row = rows[rkey] = len(stacks)
                stacks.append(rkey[0])
                pids.append(pid)
                tids.append(s.tid)
                for column in values.values():
                    column.append(0)
            for metric, value in s.values.items():
                column = values.get(metric)
                if column is None:
                    column = values[metric] = [0] * len(stacks)
                column[row] += value
            if n & 255 == 0:
                resolver.progress.update(lambda: f"resolving symbols: {n}/{total} stacks, "
                                                 f"{resolver.stats['modules']} modules, "
                                                 f"{resolver.stats['addresses']} addresses")
    finally:
        if gc_was_enabled:
            gc.enable()
        resolver.close()
    resolver.progress.done(f"resolved {resolver.stats['addresses']} addresses in "
                           f"{resolver.stats['modules']} modules")
    profile.pids, profile.tids = pids, tids
    if session.kind == "cpu" and "samples" in values:
        profile.metadata.setdefault("default_metric", "samples")
    profile.metadata["symbol_warnings"] = list(resolver.warnings)
    profile.metadata["symbol_stats"] = dict(resolver.stats)
    return profile
