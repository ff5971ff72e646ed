"""speedscope's JSON file format, "sampled" profiles.

https://www.speedscope.app/file-format-schema.json: one shared frame table
(name, file, line), and per profile a list of stacks (indexes into the frame
table, root first) with one weight each.  Profiles with thread ids give one
speedscope profile per thread (speedscope's thread selector); others one
profile.  Samples are written with unit ``none``, bytes with ``bytes``.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional

from ..profile import Profile

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def speedscope_document(profile: Profile, metric: Optional[str] = None) -> dict:
    metric = metric or profile.default_metric()
    column = profile.column(metric) if profile.values else []
    unit = "bytes" if profile.unit(metric) == "bytes" else "none"
    used: Dict[int, int] = {}
    frames: List[dict] = []

    def frame_id(i: int) -> int:
        j = used.get(i)
        if j is None:
            f = profile.frames[i]
            entry = {"name": f.name}
            if f.file:
                entry["file"] = f.file
            elif f.module:
                entry["file"] = f.module
            if f.line:
                entry["line"] = int(f.line)
            j = used[i] = len(frames)
            frames.append(entry)
        return j

    groups: Dict[object, List[int]] = {}
    tids = profile.tids
    for n, value in enumerate(column):
        if value > 0:
            key = tids[n] if tids is not None and n < len(tids) else None
            groups.setdefault(key, []).append(n)
    if len(groups) <= 1:
        groups = {None: [n for rows in groups.values() for n in rows]}
    title = command_text(profile) or "ctprof profile"
    profiles = []
    for key, rows in sorted(groups.items(), key=lambda kv: (kv[0] is not None, str(kv[0]))):
        samples = [[frame_id(i) for i in profile.stacks[n]] for n in rows]
        weights = [column[n] for n in rows]
        profiles.append({
            "type": "sampled",
            "name": title if key is None else f"{title} thread {key}",
            "unit": unit,
            "startValue": 0,
            "endValue": sum(weights),
            "samples": samples,
            "weights": weights,
        })
    from .. import __version__
    return {"$schema": SCHEMA, "shared": {"frames": frames}, "profiles": profiles,
            "name": title, "activeProfileIndex": 0, "exporter": f"ctprof {__version__}"}


def command_text(profile: Profile) -> str:
    """The profiled command line as one string (``metadata["command"]``,
    else the source file's name, else "")."""
    command = profile.metadata.get("command")
    if isinstance(command, (list, tuple)):
        return " ".join(str(c) for c in command)
    return str(command) if command else str(profile.metadata.get("source") or "")


def speedscope_json(profile: Profile, metric: Optional[str] = None) -> str:
    return json.dumps(speedscope_document(profile, metric), separators=(",", ":"), ensure_ascii=False)
