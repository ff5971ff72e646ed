"""Run statistics: the lines printed after a run (achieved rate, overhead,
per-thread counts, notes), and the ``--threads`` selection.

The metadata stored with a profile is the profile stage's
(:func:`ctprof.build.run_metadata`); the facts both read about a session
(CPU time, achieved rate, notes) live with the session."""
from __future__ import annotations

import fnmatch
import os
from typing import List

from ..errors import UsageError
from ..profile import Profile
from ..session import Session, achieved_hz, session_notes


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
        # The handler runs on the sampled threads: its cost is a share of
        # their CPU time (a share of wall time passes 100% with many threads).
        cpu_ns = sum(p.thread_cpu_ns.values())
        share = 100.0 * p.handler_ns / cpu_ns if cpu_ns else 0.0
        threads = ", ".join(f"{tid}{'/' + p.threads[tid] if p.threads.get(tid) else ''}:{n}"
                            for tid, n in sorted(p.thread_samples.items()))
        if "kernel sampler" in p.timer:  # run and attach: no handler runs in the target
            cost = f"sampled by the kernel over {p.wall_ns / 1e9:.2f} s"
        else:
            cost = (f"handler {p.handler_ns / 1e6:.1f} ms = {share:.2f}% of its threads' {cpu_ns / 1e9:.2f} s CPU time"
                    f" ({p.wall_ns / 1e9:.2f} s wall)")
        lines.append(f"  pid {p.pid} {os.path.basename(p.exe)}: {p.samples} samples, {cost}"
                     + (f"; threads {threads}" if threads else ""))
    for note in session_notes(session):
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
