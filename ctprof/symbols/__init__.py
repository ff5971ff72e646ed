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
"""
from __future__ import annotations

from typing import Optional

from ..profile import Profile, merge_identical
from ..session import Session
from .resolve import TRUNCATED, Resolver

__all__ = ["resolve_session", "Resolver", "TRUNCATED"]


def resolve_session(session: Session, *, demangle: bool = True, lines: bool = False,
                    progress: Optional[bool] = None) -> Profile:
    """Resolve every stack of ``session`` into a :class:`Profile`.

    Frames are root first; a truncated stack gets a ``[truncated]`` root.
    Stacks that resolve identically for the same (pid, tid) are merged and
    their values summed.  ``demangle=False`` keeps raw symbol names;
    ``lines=True`` adds file/line and inlined frames from DWARF;
    ``progress`` None shows progress on stderr only if it is a terminal and
    resolution takes over a second (True/False force it on/off).
    Per-module problems go to ``metadata["symbol_warnings"]`` (one line per
    module), counts to ``metadata["symbol_stats"]``.
    """
    resolver = Resolver(session, demangle=demangle, lines=lines, progress=progress)
    profile = Profile(metadata={"kind": session.kind, "command": list(session.command)})
    total = len(session.stacks)
    try:
        for n, s in enumerate(session.stacks):
            frames = resolver.frames(s.pid, s.gen, s.ips)
            if s.truncated:
                frames.insert(0, TRUNCATED)
            profile.add(frames, dict(s.values), pid=s.pid, tid=s.tid)
            if n & 255 == 0:
                resolver.progress.update(lambda: f"resolving symbols: {n}/{total} stacks, "
                                                 f"{resolver.stats['modules']} modules, "
                                                 f"{resolver.stats['addresses']} addresses")
    finally:
        resolver.close()
    resolver.progress.done(f"resolved {resolver.stats['addresses']} addresses in "
                           f"{resolver.stats['modules']} modules")
    if session.kind == "cpu" and "samples" in profile.values:
        profile.metadata.setdefault("default_metric", "samples")
    merged = merge_identical(profile)
    merged.metadata["symbol_warnings"] = list(resolver.warnings)
    merged.metadata["symbol_stats"] = dict(resolver.stats)
    return merged
