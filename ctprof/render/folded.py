"""Folded stacks: ``root;...;leaf COUNT``, one stack per line.

The plain-text face of the profile model, compatible with flamegraph.pl in
both directions: :func:`write_folded` produces what its stackcollapse scripts
produce (merged identical stacks, lines sorted bytewise, ``;`` between frames,
one space, the count), and :func:`parse_folded` reads their output,
``perf script | stackcollapse-perf.pl`` output (names with spaces, ``_[k]``
style annotations) and py-spy's raw output.

Names are kept whole: C++ names with spaces, ``<>``, ``()`` and ``,`` pass
through untouched.  Only a literal ``;`` (the separator) is replaced, by
``:``, and line breaks by spaces.
"""
from __future__ import annotations

import io
import re
import sys
from typing import IO, BinaryIO, Dict, Iterable, List, Optional, Tuple, Union

from ..errors import FormatError
from ..files import open_input
from ..profile import Frame, Profile
from .svg import open_output

#: Annotations stackcollapse-perf.pl appends to a frame name (``--all``,
#: ``--kernel``, ``--jit``, ``--inline``) and the category each implies.
ANNOTATIONS = {"_[k]": "kernel", "_[j]": "jit", "_[i]": "inline", "_[w]": "waker"}

_PYTHON_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*\.pyx?):(?P<line>\d+)\)$")
_ADDRESS = re.compile(r"^(0x)?[0-9a-fA-F]{6,}$")
_MODULE_OFFSET = re.compile(r"^(?P<module>\S+\.so(\.[0-9.]+)?)\+0x[0-9a-fA-F]+$|^\[(?P<module2>[^\]]+\.so[^\]]*)\]$")
_KERNEL_HINT = re.compile(r"^(\[kernel\.kallsyms\]|\[vdso\]|entry_SYSCALL|do_syscall_|__x64_sys_|asm_)")
_COUNT = re.compile(r"^[0-9]+(\.[0-9]*)?$")

#: How many malformed lines to tolerate before giving up on a file that is
#: probably not folded stacks at all.
_BINARY_PROBE = 8192


def frame_for_name(raw: str) -> Frame:
    """Guess a :class:`Frame` (category, file, line) from a folded frame name.

    Folded text carries only names, so the category is a heuristic used for
    colouring: stackcollapse annotations (``_[k]`` kernel, ``_[j]`` JIT,
    ``_[i]`` inlined) are stripped and honoured; ``[unknown]`` and bare
    addresses are unknown; ``libfoo.so+0x12`` / ``[libfoo.so]`` are library
    code; ``func (file.py:12)`` (py-spy) is Python with its file and line;
    anything else is taken to be the program's own code.
    """
    name = raw
    category = None
    inlined = False
    if len(name) > 4 and name[-4:] in ANNOTATIONS and name[-4] == "_":
        kind = ANNOTATIONS[name[-4:]]
        name = name[:-4]
        if kind == "kernel":
            category = "kernel"
        elif kind == "jit":
            category = "jit"
        elif kind == "inline":
            inlined = True
    if category is None:
        if name in ("[unknown]", "") or _ADDRESS.match(name):
            category = "unknown"
        elif _KERNEL_HINT.match(name):
            category = "kernel"
        else:
            m = _MODULE_OFFSET.match(name)
            if m:
                return Frame(name, m.group("module") or m.group("module2") or "", "library", None, None, inlined)
            m = _PYTHON_FRAME.match(name)
            if m:
                return Frame(name, "", "python", m.group("file"), int(m.group("line")), inlined)
            category = "program"
    return Frame(name, "", category, None, None, inlined)


def _open_text(source: Union[str, BinaryIO], label: Optional[str] = None) -> Tuple[IO[str], str]:
    """Open a path (``-`` is stdin; see :func:`ctprof.files.open_input`), or
    take an open binary reader, as text, refusing binary files."""
    if isinstance(source, str):
        label = "<stdin>" if source == "-" else source
        buffered = open_input(source)
    else:
        label = label or "<folded>"
        buffered = source if hasattr(source, "peek") else io.BufferedReader(source)  # type: ignore[arg-type]
    head = buffered.peek(_BINARY_PROBE)[:_BINARY_PROBE]
    if b"\0" in head or head[:2] == b"\x1f\x8b" or _looks_binary(head):
        if buffered is not sys.stdin.buffer:
            buffered.close()
        raise FormatError(f"{label}: binary file, neither folded stacks nor a ctprof profile")
    return io.TextIOWrapper(buffered, encoding="utf-8", errors="replace", newline=None), label


def _looks_binary(head: bytes) -> bool:
    if not head:
        return False
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 13))
    return control > len(head) // 100 + 1


def parse_folded(source: Union[str, Iterable[str]], label: Optional[str] = None,
                 metric: str = "samples") -> Profile:
    """Read folded stacks into a :class:`Profile`.

    ``source`` is a path (``-`` for stdin), an open binary reader (read
    once, as a stream) or an iterable of lines.  Blank
    lines and ``#`` comments are skipped.  The count is the last
    whitespace-separated field (a non-negative integer; a decimal is rounded);
    everything before it, trailing blanks removed, is the stack.  A malformed
    line raises :class:`FormatError` naming ``file:line``.  Identical stacks
    are summed.
    """
    close = None
    if isinstance(source, str) or hasattr(source, "peek"):
        lines, label = _open_text(source, label)  # type: ignore[arg-type]
        close = lines
    else:
        lines = source
        label = label or "<folded>"
    frames: List[Frame] = []
    frame_index: Dict[Frame, int] = {}
    by_raw: Dict[str, int] = {}
    rows: Dict[Tuple[int, ...], int] = {}
    try:
        for lineno, line in enumerate(lines, 1):
            line = line.rstrip("\r\n")
            stripped = line.strip()
            if not stripped or stripped[0] == "#":
                continue
            parts = line.rstrip().rsplit(None, 1)
            if len(parts) != 2 or not _COUNT.match(parts[1]):
                raise FormatError(f"{label}:{lineno}: malformed folded line (expected 'frame;frame;... COUNT'): "
                                  f"{_preview(line)}")
            stack_text, count_text = parts
            count = int(count_text) if count_text.isdigit() else int(round(float(count_text)))
            if count == 0:
                continue
            names = stack_text.rstrip().split(";")
            get = by_raw.get
            key = [get(n) for n in names]
            if None in key:
                for i, idx in enumerate(key):
                    if idx is None:
                        raw = names[i]
                        frame = frame_for_name(raw)
                        idx = frame_index.get(frame)
                        if idx is None:
                            idx = frame_index[frame] = len(frames)
                            frames.append(frame)
                        by_raw[raw] = key[i] = idx
            k = tuple(key)
            rows[k] = rows.get(k, 0) + count
    except UnicodeDecodeError:  # pragma: no cover - errors="replace" prevents it
        raise FormatError(f"{label}: not UTF-8 text") from None
    finally:
        if close is not None:  # stdin is left open for whoever reads it next
            close.detach() if close.buffer is sys.stdin.buffer else close.close()
    profile = Profile(frames=frames, stacks=list(rows), values={metric: list(rows.values())},
                      metadata={"kind": "cpu", "default_metric": metric, "units": {metric: metric},
                                "source": label, "format": "folded"})
    profile._frame_index = frame_index
    return profile


def _preview(line: str, limit: int = 80) -> str:
    text = line if len(line) <= limit else line[:limit] + "..."
    return repr(text)


def folded_name(name: str) -> str:
    """A frame name as it may appear in folded text (``;`` and line breaks
    replaced, everything else kept)."""
    if ";" in name or "\n" in name or "\r" in name:
        name = name.replace(";", ":").replace("\r", " ").replace("\n", " ")
    return name


def folded_lines(profile: Profile, metric: Optional[str] = None) -> List[str]:
    """The folded lines of ``profile`` (without newlines): identical stacks
    merged, zero-valued stacks left out, sorted bytewise like
    stackcollapse's output."""
    column = profile.column(metric)
    names = [folded_name(f.name) for f in profile.frames]
    merged: Dict[str, int] = {}
    for stack, value in zip(profile.stacks, column):
        if value:
            text = ";".join([names[i] for i in stack]) if stack else ""
            merged[text] = merged.get(text, 0) + value
    # Python orders str by code point, which is the bytewise order of UTF-8.
    return [f"{text} {value}" for text, value in sorted(merged.items()) if value > 0]


def folded_text(profile: Profile, metric: Optional[str] = None) -> str:
    """:func:`folded_lines` as one text, each line ending in a newline."""
    return "".join(line + "\n" for line in folded_lines(profile, metric))


def write_folded(profile: Profile, path_or_file: Union[str, IO[str]], metric: Optional[str] = None) -> None:
    """Write ``profile`` as folded stacks to a path (``-`` is stdout) or an
    open text file."""
    text = folded_text(profile, metric)
    with open_output(path_or_file) as write:
        write(text)
