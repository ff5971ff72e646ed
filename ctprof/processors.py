"""Pure transforms on a :class:`~ctprof.profile.Profile`.

Every function here is ``profile = f(profile, option)``: it returns a new
profile and never changes its argument.  Frames keep their table (new root
frames are appended); stacks, values, pids/tids and metadata are copied.
:func:`apply` runs the ones selected by a :class:`ProcessOptions`, in the
order source lines, drop, collapse, max-depth, invert, group (so group roots
stay roots).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Pattern, Tuple, Union

from .errors import UsageError
from .profile import Frame, Profile


@dataclass(frozen=True)
class ProcessOptions:
    """Which transforms to apply (all off by default).

    ``group_by``: ``"thread"`` or ``"process"``: add a root frame per thread
    or process (stacks without a pid/tid go under one ``"thread ?"`` /
    ``"process ?"`` root).
    ``drop``: regex; frames whose name matches are removed from every stack,
    their callees attach to their caller.  ``collapse``: regex; everything a
    matching frame calls is folded into it (the first match on a stack ends
    that stack).  ``max_depth``: keep at most this many frames from the root;
    deeper time is charged to the last frame kept.  ``invert``: reverse every
    stack (leaf first), for icicle graphs and callee-focused views.
    ``lines``: ``"file"`` or ``"line"``: frames named with their source
    position (:func:`source_positions`), one frame per function or one per
    line; applied first, so ``--drop``/``--collapse`` patterns can name files.
    """

    group_by: Optional[str] = None
    lines: Optional[str] = None
    drop: Optional[str] = None
    collapse: Optional[str] = None
    max_depth: Optional[int] = None
    invert: bool = False


def _compile(pattern: Union[str, Pattern[str]], option: str) -> Pattern[str]:
    if not isinstance(pattern, str):
        return pattern
    try:
        return re.compile(pattern)
    except re.error as err:
        raise UsageError(f"{option} {pattern!r}: invalid regular expression ({err})") from None


def _copy(profile: Profile, stacks: List[Tuple[int, ...]], frames: Optional[List[Frame]] = None,
          **metadata) -> Profile:
    out = Profile(frames=list(frames if frames is not None else profile.frames),
                  stacks=stacks,
                  values={m: list(v) for m, v in profile.values.items()},
                  pids=list(profile.pids) if profile.pids is not None else None,
                  tids=list(profile.tids) if profile.tids is not None else None,
                  metadata=dict(profile.metadata))
    out._frame_index = {f: i for i, f in enumerate(out.frames)}
    out.metadata.update(metadata)
    return out


def _matching(profile: Profile, regex: Pattern[str]) -> List[bool]:
    return [bool(regex.search(f.name)) for f in profile.frames]


def drop_frames(profile: Profile, pattern: Union[str, Pattern[str]]) -> Profile:
    """Remove frames whose name matches ``pattern`` (``re.search``) from
    every stack; what they called attaches to their caller.  A stack made
    only of matching frames becomes empty (its value stays in the total)."""
    hit = _matching(profile, _compile(pattern, "--drop"))
    if not any(hit):
        return _copy(profile, list(profile.stacks))
    stacks = [tuple(i for i in s if not hit[i]) for s in profile.stacks]
    return _copy(profile, stacks)


def collapse_frames(profile: Profile, pattern: Union[str, Pattern[str]]) -> Profile:
    """Fold everything below a frame matching ``pattern`` into it: each stack
    ends at its first (rootmost) matching frame, which then owns the time as
    self time.  Useful to hide library internals (``--collapse '^std::'``)."""
    hit = _matching(profile, _compile(pattern, "--collapse"))
    stacks = []
    for s in profile.stacks:
        for d, i in enumerate(s):
            if hit[i]:
                s = s[:d + 1]
                break
        stacks.append(s)
    return _copy(profile, stacks)


def limit_depth(profile: Profile, max_depth: int) -> Profile:
    """Cut stacks to their first ``max_depth`` frames (from the root)."""
    if max_depth < 1:
        raise UsageError(f"--max-depth {max_depth}: must be at least 1")
    return _copy(profile, [s[:max_depth] for s in profile.stacks])


def invert(profile: Profile) -> Profile:
    """Reverse every stack (leaf first).  Marks ``metadata["inverted"]``;
    inverting twice gives the original order back."""
    return _copy(profile, [s[::-1] for s in profile.stacks],
                 inverted=not profile.metadata.get("inverted", False))


def group_by(profile: Profile, what: str) -> Profile:
    """Add a root frame per ``"thread"`` or ``"process"``.

    Root names are ``process PID (COMMAND)`` / ``thread TID (NAME)`` when
    ``metadata["processes"]`` (pid -> command) or ``metadata["threads"]``
    (tid -> name) give them, else ``process PID`` / ``thread TID``.
    Stacks without a pid/tid go under ``process ?`` / ``thread ?``.
    """
    if what not in ("thread", "process"):
        raise UsageError(f"--group-by {what!r}: expected 'thread' or 'process'")
    ids = profile.tids if what == "thread" else profile.pids
    labels = profile.metadata.get("threads" if what == "thread" else "processes") or {}
    frames = list(profile.frames)
    index = {f: i for i, f in enumerate(frames)}
    roots: Dict[object, int] = {}
    stacks = []
    for n, s in enumerate(profile.stacks):
        key = ids[n] if ids is not None and n < len(ids) else None
        root = roots.get(key)
        if root is None:
            label = labels.get(str(key), labels.get(key)) if isinstance(labels, dict) and key is not None else None
            name = f"{what} {'?' if key is None else key}" + (f" ({label})" if label else "")
            frame = Frame(name, "", "unknown")
            root = index.get(frame)
            if root is None:
                root = index[frame] = len(frames)
                frames.append(frame)
            roots[key] = root
        stacks.append((root,) + tuple(s))
    return _copy(profile, stacks, frames=frames)


def prune(profile: Profile, min_share: float, metric: Optional[str] = None) -> Profile:
    """Cut every stack at its first frame whose inclusive value (summed over
    all stacks sharing the path from the root) is below ``min_share`` of the
    total (a fraction, 0.001 = 0.1%).  The cut-off value is charged to the
    last frame kept, so totals are unchanged."""
    column = profile.column(metric)
    total = sum(column)
    threshold = min_share * total
    node_of: Dict[Tuple[int, int], int] = {}
    node_value: List[int] = []
    paths: List[List[int]] = []
    for s, v in zip(profile.stacks, column):
        parent = -1
        path = []
        for f in s:
            key = (parent, f)
            node = node_of.get(key)
            if node is None:
                node = node_of[key] = len(node_value)
                node_value.append(0)
            node_value[node] += v
            path.append(node)
            parent = node
        paths.append(path)
    stacks = []
    for s, path in zip(profile.stacks, paths):
        keep = len(s)
        for d, node in enumerate(path):
            if node_value[node] < threshold:
                keep = d
                break
        stacks.append(s[:keep])
    return _copy(profile, stacks)


def source_positions(profile: Profile, by_line: bool = False) -> Profile:
    """Show where each native frame is in the source (what ``--lines``
    asks for): ``name (file.c)``, or with ``by_line`` ``name (file.c:LINE)``.

    Resolved with lines, one function owns a frame per source line it was
    seen at; drawn as they are, ``main`` would be several sibling boxes
    with the same label.  Here the frames of one function in one file merge
    into one (file kept, line dropped) unless ``by_line`` asks to keep each
    line apart.  Frames without a file (no DWARF) and Python frames (whose
    names already carry ``file.py:LINE``) are left as they are.  Stacks
    that become identical are not summed here: every renderer merges them.
    """
    frames: List[Frame] = []
    index: Dict[tuple, int] = {}
    remap: List[int] = []
    for f in profile.frames:
        if f.file and f.category != "python":
            where = os.path.basename(f.file) + (f":{f.line}" if by_line and f.line else "")
            if f.inlined:   # an inlined copy is not a call: say so, apart from the real calls
                where += ", inlined"
            f = Frame(f"{f.name} ({where})", f.module, f.category, f.file, f.line if by_line else None, f.inlined)
        # Keyed by what is shown, not by the file's spelling: DWARF 5 names
        # one source file twice (as the compilation directory's entry and
        # with its own directory), and both must be one box.
        key = (f.name, f.module, f.category, f.line, f.inlined)
        i = index.get(key)
        if i is None:
            i = index[key] = len(frames)
            frames.append(f)
        remap.append(i)
    stacks = [tuple(remap[i] for i in s) for s in profile.stacks]
    return _copy(profile, stacks, frames=frames, source_positions="line" if by_line else "file")


def apply(profile: Profile, options: ProcessOptions) -> Profile:
    """Run the transforms ``options`` selects (source lines, drop, collapse,
    max-depth, invert, group, in that order)."""
    if options.lines:
        profile = source_positions(profile, by_line=options.lines == "line")
    if options.drop:
        profile = drop_frames(profile, options.drop)
    if options.collapse:
        profile = collapse_frames(profile, options.collapse)
    if options.max_depth is not None:
        profile = limit_depth(profile, options.max_depth)
    if options.invert:
        profile = invert(profile)
    if options.group_by:
        profile = group_by(profile, options.group_by)
    return profile
