"""The profile stage: a captured :class:`~ctprof.session.Session` becomes the
:class:`~ctprof.profile.Profile` every renderer reads.

The pipeline runs one way (capture -> session -> symbols -> profile ->
render): capture produces a session and knows nothing of symbols or
profiles; this module asks :mod:`ctprof.symbols` for the frames, then adds
the run's metadata and every value column the session's kind promises.
Callers (``ctprof run``/``attach``, the Python API) call
:func:`build_profile`; self-profiling, whose Python frames are resolved as
it samples, calls :func:`finish_profile` on the profile it already has.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Optional

from .profile import Profile
from .session import Session, achieved_hz, cpu_seconds, session_notes


#: The columns of an off-CPU profile (``--off-cpu``) beside ``samples``.
OFF_CPU_UNITS = {"wall": "microseconds", "offcpu": "microseconds"}


def memory_columns() -> Dict[str, str]:
    """Every column of a memory profile with its unit (``samples`` too:
    CPU sampling continues under ``--mem``)."""
    from .memory.model import DETAIL_METRICS, MEMORY_METRICS
    return {"samples": "samples", **MEMORY_METRICS, **DETAIL_METRICS}


def run_metadata(session: Session, columns: Iterable[str]) -> Dict[str, object]:
    """What a profile says about the run that produced it (``columns``: the
    profile's value columns; its raw stacks may be gone by then,
    ``resolve_session(consume=True)``)."""
    procs = session.processes.values()
    threads = {str(tid): name for p in procs for tid, name in p.threads.items()}
    meta: Dict[str, object] = {
        "kind": session.kind,
        "command": list(session.command),
        "default_metric": "samples",
        "units": {"samples": "samples"},
        "hz": session.hz,
        "hz_requested": session.hz,
        "hz_achieved": round(achieved_hz(session), 1),
        "timer": sorted({p.timer for p in procs}),
        "unwind": session.unwind,
        "samples": sum(p.samples for p in procs),
        "dropped": sum(p.dropped for p in procs),
        "wall_s": round(session.wall_s, 6),
        "cpu_s": round(cpu_seconds(session), 6),
        "exit_status": session.exit_status,
        "processes": {str(p.pid): os.path.basename(p.exe) for p in procs},
        "threads": threads,
        "notes": session_notes(session),
    }
    if "wall" in columns:
        # --off-cpu: wall and off-CPU time, in microseconds
        meta["units"] = {**meta["units"], **OFF_CPU_UNITS}
    if session.kind == "memory":
        meta["default_metric"] = "alloc_bytes"
        meta["units"] = {**memory_columns(), **{k: v for k, v in meta["units"].items() if k in OFF_CPU_UNITS}}
        meta["memory"] = session.memory
        meta["mem_sample"] = session.mem_sample
    return meta


def build_profile(session: Session, *, demangle: bool = True, lines: bool = False,
                  progress: Optional[bool] = None) -> Profile:
    """The resolved profile of a session, with its run metadata and every
    column its kind promises (even when nothing was sampled or allocated).
    ``demangle``, ``lines`` and ``progress`` are
    :func:`ctprof.symbols.resolve_session`'s."""
    from .symbols import resolve_session
    profile = resolve_session(session, demangle=demangle, lines=lines, progress=progress)
    return finish_profile(profile, session)


def finish_profile(profile: Profile, session: Session) -> Profile:
    """Add the run metadata and every column the session's kind promises."""
    profile.metadata.update(run_metadata(session, profile.values))
    columns = list(memory_columns()) if session.kind == "memory" else ["samples"]
    # Promised columns in their documented order (raw stacks carry only
    # their non-zero values, so first appearance is no order), then others.
    values = profile.values
    empty = [0] * len(profile.stacks)
    profile.values = {m: values[m] if m in values else list(empty) for m in columns}
    profile.values.update((m, v) for m, v in values.items() if m not in profile.values)
    return profile
