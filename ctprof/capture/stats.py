"""Run statistics: achieved rate, overhead, per-thread counts, notes.

Turns a :class:`~ctprof.session.Session` into the metadata stored with the
profile and into the lines printed after a run."""
from __future__ import annotations

import fnmatch
import os
from typing import Dict, List, Optional

from ..errors import UsageError
from ..profile import Profile
from ..session import Session


def cpu_seconds(session: Session) -> float:
    return sum(sum(p.thread_cpu_ns.values()) for p in session.processes.values()) / 1e9


def achieved_hz(session: Session) -> float:
    """Samples per CPU-second actually delivered (the timers count CPU time)."""
    samples = sum(p.samples for p in session.processes.values())
    cpu = cpu_seconds(session)
    return samples / cpu if cpu > 0 else 0.0


def run_metadata(session: Session) -> Dict[str, object]:
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
        "notes": list(session.notes) + sorted({n for p in procs for n in p.notes}),
    }
    if session.kind == "memory":
        from ..memory.model import DETAIL_METRICS, MEMORY_METRICS
        meta["default_metric"] = "alloc_bytes"
        meta["units"] = {"samples": "samples", **MEMORY_METRICS, **DETAIL_METRICS}
        meta["memory"] = session.memory
        meta["mem_sample"] = session.mem_sample
    return meta


def build_profile(session: Session, *, demangle: bool = True, lines: bool = False,
                  progress: Optional[bool] = None) -> Profile:
    """The resolved profile of a session, with its run metadata and every
    column its kind promises (even when nothing was sampled or allocated)."""
    from ..symbols import resolve_session
    profile = resolve_session(session, demangle=demangle, lines=lines, progress=progress)
    return finish_profile(profile, session)


def finish_profile(profile: Profile, session: Session) -> Profile:
    """Add the run metadata and every column the session's kind promises."""
    profile.metadata.update(run_metadata(session))
    columns = ["samples"]
    if session.kind == "memory":
        from ..memory.model import DETAIL_METRICS, MEMORY_METRICS
        columns += list(MEMORY_METRICS) + list(DETAIL_METRICS)
    for column in columns:
        profile.values.setdefault(column, [0] * len(profile.stacks))
    return profile


def overhead_lines(session: Session) -> List[str]:
    """The closing lines of a run: rate, samples, drops, handler time."""
    procs = sorted(session.processes.values(), key=lambda p: p.pid)
    samples = sum(p.samples for p in procs)
    dropped = sum(p.dropped for p in procs)
    timers = ", ".join(sorted({p.timer for p in procs})) or "none"
    lines = [f"{samples} samples at {achieved_hz(session):.0f} Hz per CPU-second "
             f"({session.hz:g} Hz requested, {timers}), {dropped} dropped, "
             f"{len(procs)} process{'es' if len(procs) != 1 else ''}, "
             f"{sum(len(p.thread_samples) for p in procs)} sampled threads"]
    for p in procs:
        share = 100.0 * p.handler_ns / p.wall_ns if p.wall_ns else 0.0
        threads = ", ".join(f"{tid}{'/' + p.threads[tid] if p.threads.get(tid) else ''}:{n}"
                            for tid, n in sorted(p.thread_samples.items()))
        if "(attach)" in p.timer:  # the kernel takes the samples: no handler runs in the target
            cost = f"sampled by the kernel over {p.wall_ns / 1e9:.2f} s"
        else:
            cost = f"handler {p.handler_ns / 1e6:.1f} ms = {share:.2f}% of its {p.wall_ns / 1e9:.2f} s wall time"
        lines.append(f"  pid {p.pid} {os.path.basename(p.exe)}: {p.samples} samples, {cost}"
                     + (f"; threads {threads}" if threads else ""))
    for note in run_metadata(session)["notes"]:
        lines.append(f"  note: {note}")
    return lines


def select_threads(profile: Profile, spec: str) -> Profile:
    """Keep the stacks of the threads named in ``spec``: a comma-separated
    list of thread ids, thread-name globs, or ``main`` (each process's main
    thread).  Names come from ``profile.metadata["threads"]`` (tid -> name)."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise UsageError("--threads needs a thread id, a name pattern or 'main'")
    if profile.tids is None:
        raise UsageError("--threads: this profile has no thread information")
    names = profile.metadata.get("threads") or {}

    def wanted(pid, tid) -> bool:
        name = names.get(str(tid), "")
        for item in items:
            if item.isdigit() and int(item) == tid:
                return True
            if item == "main" and tid == pid:
                return True
            if not item.isdigit() and fnmatch.fnmatchcase(name, item):
                return True
        return False

    keep = [i for i in range(len(profile.stacks)) if wanted(profile.pids[i], profile.tids[i])]
    out = Profile(frames=profile.frames, metadata=dict(profile.metadata))
    out.stacks = [profile.stacks[i] for i in keep]
    out.values = {m: [col[i] for i in keep] for m, col in profile.values.items()}
    out.pids = [profile.pids[i] for i in keep]
    out.tids = [profile.tids[i] for i in keep]
    out.metadata["threads_selected"] = spec
    return out
