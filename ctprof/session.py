"""The raw session: what capture produced, before symbols.

Raw addresses and the memory maps they were taken under are kept so a saved
profile can be re-resolved and re-rendered without re-running the program.
The saved file is gzip-compressed JSON whose first keys name the format and
its version; the resolved :class:`~ctprof.profile.Profile` is stored beside
the raw session.
"""
from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from .errors import FormatError
from .files import write_atomic
from .profile import Frame, Profile

FORMAT_NAME = "ctprof-profile"
FORMAT_VERSION = 1


@dataclass
class RawStack:
    """One unique raw stack of one thread: instruction pointers leaf first.

    ``gen`` is the maps generation of the process when the stack was taken
    (index into :attr:`ProcessInfo.maps`); ``ips[0]`` is the interrupted
    instruction itself, every later entry a return address.  ``values`` maps
    metric name to value (``samples`` for CPU).
    """

    pid: int
    tid: int
    gen: int
    ips: Tuple[int, ...]
    truncated: bool
    values: Dict[str, int]


@dataclass
class ProcessInfo:
    """What one profiled process left behind.

    ``maps`` holds the text of ``/proc/PID/maps`` at each generation (a new
    generation after every ``dlopen``/``dlclose``), ``threads`` tid -> name,
    ``perf_map`` the text of ``/tmp/perf-PID.map`` if the process wrote one.
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


# -- persistence --------------------------------------------------------------

def _profile_to_json(profile: Profile) -> dict:
    return {
        "frames": [[f.name, f.module, f.category, f.file, f.line, f.inlined] for f in profile.frames],
        "stacks": [list(s) for s in profile.stacks],
        "values": profile.values,
        "pids": profile.pids,
        "tids": profile.tids,
        "metadata": profile.metadata,
    }


def _profile_from_json(data: dict) -> Profile:
    frames = [Frame(n, m, c, f, l, bool(i)) for n, m, c, f, l, i in data["frames"]]
    profile = Profile(frames=frames, stacks=[tuple(s) for s in data["stacks"]],
                      values={k: list(v) for k, v in data["values"].items()},
                      pids=data.get("pids"), tids=data.get("tids"),
                      metadata=dict(data.get("metadata") or {}))
    profile._frame_index = {f: i for i, f in enumerate(frames)}
    return profile


def _session_to_json(session: Session) -> dict:
    data = asdict(session)
    data["processes"] = {str(pid): asdict(p) for pid, p in session.processes.items()}
    for p in data["processes"].values():
        for key in ("threads", "thread_cpu_ns", "thread_samples"):
            p[key] = {str(k): v for k, v in p[key].items()}
    data["stacks"] = [[s.pid, s.tid, s.gen, list(s.ips), s.truncated, s.values] for s in session.stacks]
    return data


def _session_from_json(data: dict) -> Session:
    procs = {}
    for pid, p in data.pop("processes").items():
        for key in ("threads", "thread_cpu_ns", "thread_samples"):
            p[key] = {int(k): v for k, v in p.get(key, {}).items()}
        procs[int(pid)] = ProcessInfo(**p)
    stacks = [RawStack(pid, tid, gen, tuple(ips), bool(tr), dict(vals))
              for pid, tid, gen, ips, tr, vals in data.pop("stacks")]
    return Session(processes=procs, stacks=stacks, **data)


def save(path: str, profile: Profile, session: Optional[Session] = None) -> None:
    """Write ``profile`` (and the raw ``session``) to ``path`` atomically."""
    doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
           "profile": _profile_to_json(profile),
           "session": _session_to_json(session) if session else None}
    def produce(out) -> None:
        with gzip.open(out, "wt", encoding="utf-8", compresslevel=5) as text:
            json.dump(doc, text, separators=(",", ":"))
    write_atomic(path, produce)


def is_profile_file(path: str) -> bool:
    """True if ``path`` starts like a ctprof profile (gzip magic)."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def load(path: str) -> Tuple[Profile, Optional[Session]]:
    """Read a profile written by :func:`save`."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as err:
        raise FormatError(f"{path}: not a readable ctprof profile ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not a ctprof profile")
    if doc.get("version") != FORMAT_VERSION:
        raise FormatError(f"{path}: profile format version {doc.get('version')} is not supported "
                          f"(this ctprof reads version {FORMAT_VERSION})")
    try:
        profile = _profile_from_json(doc["profile"])
        session = _session_from_json(doc["session"]) if doc.get("session") else None
    except (KeyError, TypeError, ValueError) as err:
        raise FormatError(f"{path}: corrupt ctprof profile ({err})") from None
    return profile, session
