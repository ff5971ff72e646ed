"""The ``.ctprof`` file: a profile and its raw session, saved and loaded in
time linear in their size, and validated on the way in.

Why this shape: a memory profile of a real compile holds about 100,000
unique stacks of 30 frames each.  Written as JSON (format version 1) that
was 46 MB of text through a pure-Python encoder after a deep copy of the
session: 21 s to save, 4.4 s to load.  Here every table is a packed array
(:mod:`array`) compressed with zlib, so saving and loading cost a few C
loops per table and a Python loop per unique stack, never per element.

Layout (integers little-endian)::

    header    8 bytes   magic b"\\x89CTPROF\\n" (not text, not gzip: never
                        mistaken for folded stacks or for format 1)
              4 bytes   u32 format version (FORMAT_VERSION)
    section*  1 byte    u8 length L of the name (1-64)
              L bytes   name, ASCII
              1 byte    kind: b"J" UTF-8 JSON, or an array type code:
                        b"B" u8, b"I" u32, b"q" i64, b"Q" u64, b"d" float64
              8 bytes   u64 count: bytes of JSON, or elements of the array
              8 bytes   u64 Z, the stored (compressed) length
              Z bytes   a zlib stream of the payload (count bytes of JSON,
                        count * item size bytes of array)
    end       a section named "end" of kind J and count 0: a file without
              it was cut short.

Sections, each once, in this order:

``meta`` (JSON, first)
    ``{"profile": {"metrics": [[name, type code], ...], "threads": bool,
    "metadata": {...}}, "session": null or {...}}``.  The session object
    holds the :class:`~ctprof.session.Session` fields except ``stacks``,
    its processes as a list (tid-keyed tables as ``[tid, value]`` pairs),
    and ``raw_keysets``: the lists of metric names raw stacks have values for.
``strings``, ``string_lengths``
    The string table: UTF-8 bytes (u8) and each string's byte length (u32).
    Every name, module, category and source file is stored once.
``frame_name`` ``frame_module`` ``frame_category`` (u32 string indexes),
``frame_file`` (u32: string index + 1, 0 for none), ``frame_line`` (i64,
-1 for none), ``frame_inlined`` (u8)
    The frame table, one element per frame.
``stack_length`` (u32 per stack), ``stack_frames`` (u32 frame indexes of
every stack, root first, one after the other)
    The profile's stacks, each unique (stack, pid, tid) once.
``value:METRIC`` (i64, or float64 for a fractional column), ``pid``,
``tid`` (i64, -1 unknown; only if ``threads``)
    One element per stack.
``raw_pid`` ``raw_tid`` (i64), ``raw_gen`` (u32), ``raw_truncated`` (u8),
``raw_keyset`` (u32), ``raw_length`` (u32) per raw stack; ``raw_ips`` (u64,
each stack's instruction pointers leaf first, one after the other);
``raw_values`` (i64, or float64 if any is fractional)
    Only with a session: its unique raw stacks, with the instruction
    pointers and maps generation a later re-resolution needs.  Raw stack
    ``i`` has values for the metrics ``raw_keysets[raw_keyset[i]]``, in
    that order, stored one stack after the other in ``raw_values``.
``raw_py_length`` (u32 per raw stack, an even count), ``raw_py`` (u64)
    Only with a session: each raw stack's Python frames (code table index,
    instruction index | entry flag, see :class:`~ctprof.session.RawStack`),
    one stack after the other.  Files written before Python frames existed
    lack both sections and load with none.

:func:`load` is the one reader.  It refuses, with one
:class:`~ctprof.errors.FormatError` line naming the file, anything that is
not exactly this: an empty or cut-short file, a bad or repeated section, a
length that disagrees with its declaration, a stream that inflates beyond
its declared size, JSON nested deeper than :data:`MAX_JSON_DEPTH` or with
NaN, a metadata value of the wrong type, a frame or string index out of
range, a stack deeper than :data:`MAX_STACK_FRAMES`, a negative or
non-finite value.  :func:`save` runs the same checks on what it writes, so
a file it writes always loads.  Format 1 (gzip JSON) is refused with one
line saying so.
"""
from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields
from collections import Counter
from itertools import chain, islice, repeat
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import FormatError
from .nogc import paused_collector
from .profile import Frame, Profile
from .session import FlatStacks, HeapStacks, ProcessInfo, RawStack, Session

FORMAT_NAME = "ctprof-profile"
FORMAT_VERSION = 2
MAGIC = b"\x89CTPROF\n"
#: The first bytes of a format-1 file (gzip) and of its JSON document.
GZIP_MAGIC = b"\x1f\x8b"
_V1_PREFIX = b'{"format":"ctprof-profile","version":1'

#: Deepest JSON nesting accepted in ``meta`` (ctprof writes at most 6).
MAX_JSON_DEPTH = 32
#: Most frames in one stack (``--max-depth`` allows 65,536, ``--lines`` may
#: add inlined frames).
MAX_STACK_FRAMES = 1 << 20
#: Largest section after inflation; a larger declaration is damage.
MAX_SECTION_BYTES = 1 << 33
#: zlib level.  On the profile of a 3.5-million-allocation compile (99,540
#: raw stacks), CPU for the whole save, best of 4: level 1 3.3 MB in 0.63 s,
#: 3 2.9 MB in 0.65 s, 6 2.3 MB in 1.00 s (format 1's gzip JSON: 2.75 MB in
#: 14 s).  Level 3: the save is part of every run's end-to-end time.
COMPRESS_LEVEL = 3
#: Threads compressing the save's whole-array sections.  Two: after
#: ``ctprof run``'s program has exited the machine's CPUs are ctprof's,
#: and the profile's columns are independent streams.
SAVE_DEFLATE_WORKERS = 2

_SECTION_HEAD = struct.Struct("<B")
_SECTION_SIZES = struct.Struct("<cQQ")
_ARRAY_KINDS = {b"B": "B", b"I": "I", b"q": "q", b"Q": "Q", b"d": "d"}
assert array("I").itemsize == 4 and array("q").itemsize == 8 and array("Q").itemsize == 8
_SWAP = sys.byteorder != "little"
_NONE = -1  # pid, tid or line unknown
#: Raw stacks flattened and compressed at a time when saving.
_BATCH = 4096
#: ... and addresses (heap stacks held flat, 1 MiB of them).
_BATCH_WORDS = 1 << 17
#: Session fields stored in sections of their own, not in its JSON document
#: (the heap's stacks are stored as raw stacks and load as such).
_SESSION_TABLES = ("processes", "stacks", "heap_stacks")


# =============================================================================
# writing
# =============================================================================

def _section(out: BinaryIO, name: str, kind: bytes, count: int, payload: Any) -> None:
    data = zlib.compress(payload, COMPRESS_LEVEL) if count else b""
    encoded = name.encode("ascii")
    out.write(_SECTION_HEAD.pack(len(encoded)) + encoded + _SECTION_SIZES.pack(kind, count, len(data)))
    out.write(data)


class _Deflater:
    """Compresses sections on worker threads while the save goes on
    building and checking the next tables (zlib releases the GIL): on the
    profile of a large compile the deflate overlaps the Python work
    instead of adding to it.  Whole arrays go to ``workers`` threads
    (each is its own stream); the pieces of one stream (:meth:`stream`) to
    a thread of their own, one at a time in the order given.  The output
    is byte for byte what compressing in line gives."""

    def __init__(self, workers: int = 1) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ctprof-deflate")
        self._streams: Optional[ThreadPoolExecutor] = None

    def array(self, values: array) -> "Future[bytes]":
        """The compressed bytes of a whole array section (kept alive, and
        unchanged, until they are written)."""
        if _SWAP:
            values = array(values.typecode, values)
            values.byteswap()
        return self._pool.submit(zlib.compress, memoryview(values).cast("B"), COMPRESS_LEVEL)

    def stream(self) -> "_Compressed":
        if self._streams is None:
            self._streams = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctprof-deflate-stream")
        return _Compressed(self._streams)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._streams is not None:
            self._streams.shutdown(wait=True)


class _Compressed:
    """An array section compressed as it is built, in batches, so the
    largest table of a save (every raw instruction pointer: 23 MB for a
    large compile) never exists whole.  Looks like an array to the checks
    that only need its type and length."""

    def __init__(self, pool: ThreadPoolExecutor, typecode: str = "Q") -> None:
        self.typecode, self.count = typecode, 0
        self.parts: List["Future[bytes]"] = []
        self._pool = pool
        self._compressor = zlib.compressobj(COMPRESS_LEVEL)

    def add(self, values: array) -> None:
        if _SWAP:
            values.byteswap()
        self.count += len(values)
        self.parts.append(self._pool.submit(self._compressor.compress, memoryview(values).cast("B")))

    def add_part(self, values: array, start: int, end: int) -> None:
        """``values[start:end]``, read where it lies (no copy: ``values``
        must not change until the section is written)."""
        if _SWAP:
            self.add(values[start:end])
            return
        self.count += end - start
        self.parts.append(self._pool.submit(self._compressor.compress, memoryview(values)[start:end].cast("B")))

    def close(self) -> "_Compressed":
        self.parts.append(self._pool.submit(self._compressor.flush))
        return self

    def __len__(self) -> int:
        return self.count


class _Stored:
    """An array section of which only the compressed bytes are kept (an
    :class:`EncodedSession`'s), with its type and length."""

    def __init__(self, typecode: str, count: int, parts: List["Future[bytes]"]) -> None:
        self.typecode, self.count, self.parts = typecode, count, parts

    def __len__(self) -> int:
        return self.count


def _write_array(out: BinaryIO, name: str, values: Any, packed: Optional["Future[bytes]"]) -> None:
    """One array section: ``values`` with its compressed bytes (``packed``,
    None for an empty array), or a :class:`_Compressed` stream."""
    encoded = name.encode("ascii")
    if isinstance(values, (_Compressed, _Stored)):
        parts = [part.result() for part in values.parts] if values.count else []
        data: Any = parts
    else:
        data = [packed.result()] if packed is not None and len(values) else []
    out.write(_SECTION_HEAD.pack(len(encoded)) + encoded
              + _SECTION_SIZES.pack(values.typecode.encode(), len(values), sum(map(len, data))))
    for part in data:
        out.write(part)


def _write_json(out: BinaryIO, name: str, doc: Any) -> None:
    try:
        data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise FormatError(f"cannot save this profile: {err}") from None
    _section(out, name, b"J", len(data), data)


def _column(values: Sequence[Any]) -> array:
    """Integers as i64; a column with fractions (or beyond i64) as float64."""
    try:
        return array("q", values)
    except (TypeError, OverflowError):
        return array("d", values)


class _Strings:
    """The string table being written: each distinct string once."""

    def __init__(self) -> None:
        self.index: Dict[str, int] = {}

    def ids(self, texts: Iterator[str]) -> array:
        index = self.index
        return array("I", [index.setdefault(t, len(index)) for t in texts])

    def arrays(self) -> Tuple[array, array]:
        encoded = [s.encode("utf-8", "surrogatepass") for s in self.index]
        return array("B", b"".join(encoded)), array("I", map(len, encoded))


def _profile_arrays(profile: Profile, strings: _Strings,
                    made: Callable[[str, array], None] = lambda name, values: None) -> Dict[str, array]:
    """The profile's columns; ``made(name, values)`` is told of each as
    soon as it is complete (the save compresses it meanwhile), the
    largest, the stacks' frames, first."""
    cols: Dict[str, array] = {}

    def column(name: str, values: array) -> None:
        cols[name] = values
        made(name, values)

    refs = array("I")
    for stack in profile.stacks:
        refs.extend(stack)
    column("stack_frames", refs)
    column("stack_length", array("I", map(len, profile.stacks)))
    for metric, values in profile.values.items():
        column("value:" + metric, _column(values))
    if profile.pids is not None:
        column("pid", array("q", [_NONE if p is None else p for p in profile.pids]))
        column("tid", array("q", [_NONE if t is None else t for t in (profile.tids or [])]))
    frames = profile.frames
    column("frame_name", strings.ids(f.name for f in frames))
    column("frame_module", strings.ids(f.module for f in frames))
    column("frame_category", strings.ids(f.category for f in frames))
    index = strings.index
    column("frame_file", array("I", [0 if f.file is None else index.setdefault(f.file, len(index)) + 1
                                     for f in frames]))
    column("frame_line", array("q", [_NONE if f.line is None else f.line for f in frames]))
    column("frame_inlined", array("B", [1 if f.inlined else 0 for f in frames]))
    first = ("frame_name", "frame_module", "frame_category", "frame_file", "frame_line", "frame_inlined",
             "stack_length", "stack_frames")
    return {**{name: cols[name] for name in first}, **cols}   # (the sections' order in the file, as before)


def _session_doc(session: Session) -> Dict[str, Any]:
    doc = {f.name: getattr(session, f.name) for f in fields(Session) if f.name not in _SESSION_TABLES}
    doc["processes"] = [_process_doc(p) for p in session.processes.values()]
    return doc


def _process_doc(proc: ProcessInfo) -> Dict[str, Any]:
    doc = {}
    for f in fields(ProcessInfo):
        value = getattr(proc, f.name)
        # JSON object keys are strings; tid-keyed tables travel as pairs.
        doc[f.name] = [[k, v] for k, v in value.items()] if _is_tid_table(f.name, value) else value
    return doc


def _is_tid_table(name: str, default: Any) -> bool:
    """Is the ProcessInfo field ``name`` a tid-keyed table?  Every dict
    field is but ``python`` (an object with string keys)."""
    return isinstance(default, dict) and name != "python"


def _raw_arrays(session: Session, doc: Dict[str, Any], deflater: _Deflater) -> Dict[str, Any]:
    """The raw stacks' sections: ``session.stacks``, then the heap's
    stacks (:class:`~ctprof.session.HeapStacks`) as raw stacks of their own."""
    stacks, heap = session.stacks, session.heap_stacks
    keysets: Dict[Tuple[str, ...], int] = {}
    keyset_ids = array("I", [keysets.setdefault(tuple(s.values), len(keysets)) for s in stacks])
    ips = deflater.stream()
    for start in range(0, len(stacks), _BATCH):
        batch = array("Q")
        for s in stacks[start:start + _BATCH]:
            batch.extend(s.ips)
        ips.add(batch)
    cols = {
        "raw_pid": array("q", [s.pid for s in stacks]),
        "raw_tid": array("q", [s.tid for s in stacks]),
        "raw_gen": array("I", [s.gen for s in stacks]),
        "raw_truncated": array("B", [1 if s.truncated else 0 for s in stacks]),
        "raw_keyset": keyset_ids,
        "raw_length": array("I", [len(s.ips) for s in stacks]),
        "raw_ips": ips,
        "raw_py_length": array("I", [len(s.py) for s in stacks]),
        "raw_py": array("Q", [w for s in stacks if s.py for w in s.py]),
    }
    for block in heap:             # column by column
        n = len(block)
        keyset_ids.extend(repeat(keysets.setdefault(tuple(block.values), len(keysets)), n))
        if isinstance(block.ips, FlatStacks):       # as captured: already one array
            words = block.ips.words
            for start in range(0, len(words), _BATCH_WORDS):
                ips.add_part(words, start, min(start + _BATCH_WORDS, len(words)))
            cols["raw_length"].extend(block.ips.lengths)
        else:
            for start in range(0, n, _BATCH):
                ips.add(array("Q", chain.from_iterable(block.ips[start:start + _BATCH])))
            cols["raw_length"].extend(map(len, block.ips))
        cols["raw_pid"].extend(repeat(block.pid, n))
        cols["raw_tid"].extend(repeat(0, n))
        cols["raw_gen"].extend(repeat(block.gen, n))
        cols["raw_truncated"].extend(array("B", block.truncated))
        cols["raw_py_length"].extend(map(len, block.py) if block.py else repeat(0, n))
        cols["raw_py"].extend(chain.from_iterable(block.py or ()))
    ips.close()
    try:
        cols["raw_values"] = _raw_values(stacks, heap, "q")
    except (TypeError, OverflowError):
        cols["raw_values"] = _raw_values(stacks, heap, "d")
    doc["raw_keysets"] = [list(k) for k in keysets]
    return cols


def _raw_values(stacks: List[RawStack], heap: List[HeapStacks], typecode: str) -> "array[Any]":
    """Each raw stack's values in its key set's order, one after the
    other (one C call per stack, no per-metric pass over every stack)."""
    values = array(typecode)
    for s in stacks:
        values.extend(s.values.values())
    for block in heap:
        # the block's rows, interleaved from its columns by strided copies
        # into their room (no copy of the whole: millions of values)
        start, width = len(values), len(block.values)
        _extend_zeros(values, len(block) * width)
        for j, column in enumerate(block.values.values()):
            same = isinstance(column, array) and column.typecode == typecode
            values[start + j::width] = column if same else array(typecode, column)
    return values


def _extend_zeros(values: "array[Any]", count: int) -> None:
    """``count`` zeros more at the end of ``values``, a block at a time."""
    zeros = array(values.typecode, bytes(values.itemsize * min(count, 1 << 16)))
    while count > len(zeros):
        values.extend(zeros)
        count -= len(zeros)
    values.extend(zeros[:count])


def save_to(out: BinaryIO, profile: Profile, session: "Optional[Session | EncodedSession]" = None) -> None:
    """Write ``profile`` and the raw ``session`` (or its
    :class:`EncodedSession`) to the binary file ``out``."""
    with paused_collector():
        _save_to(out, profile, session)


class EncodedSession:
    """A raw session's sections made ahead of the save: checked, compressed
    (on a worker thread), and nothing else kept.

    ``ctprof run`` encodes its session before resolving it, so the raw
    stacks can be let go of as they are resolved
    (``resolve_session(consume=True)``): a large memory profile's 100,000
    raw stacks (about 55 MiB of Python objects) never live beside the
    profile built from them, only their compressed sections (a few MB).
    :func:`save` takes it in place of the session and writes the same
    bytes.  :meth:`close` when done (it stops the worker thread)."""

    def __init__(self, session: Session) -> None:
        self._deflater = _Deflater()
        try:
            self.doc = _session_doc(session)
            arrays = _raw_arrays(session, self.doc, self._deflater)
        except (TypeError, OverflowError, ValueError) as err:
            self.close()
            raise FormatError(f"cannot save this profile: {err}") from None
        try:
            checker = _Validator("(profile being saved)", {"session": self.doc}, arrays)
            checker.session_doc = self.doc
            checker.check_session()
        except _Damage as err:
            self.close()
            raise FormatError(f"cannot save this profile: {err}") from None
        self.sections: Dict[str, Any] = {}
        for name, values in arrays.items():
            if isinstance(values, _Compressed):
                self.sections[name] = values
            else:
                parts = [self._deflater.array(values)] if len(values) else []
                self.sections[name] = _Stored(values.typecode, len(values), parts)

    def close(self) -> None:
        self._deflater.close()


def _save_to(out: BinaryIO, profile: Profile, session: "Optional[Session | EncodedSession]") -> None:
    deflater = _Deflater(workers=SAVE_DEFLATE_WORKERS)
    try:
        _write_sections(out, profile, session, deflater)
    finally:
        deflater.close()


def _write_sections(out: BinaryIO, profile: Profile, session: "Optional[Session | EncodedSession]",
                    deflater: _Deflater) -> None:
    strings = _Strings()
    packed: Dict[str, Any] = {}

    def deflate(tables: Dict[str, Any]) -> None:   # compressed meanwhile on the worker
        for name, values in tables.items():
            if not isinstance(values, (_Compressed, _Stored)) and len(values):
                packed[name] = deflater.array(values)

    encoded = session if isinstance(session, EncodedSession) else None
    try:
        cols = _profile_arrays(profile, strings, lambda name, values: deflate({name: values}))
        session_doc = None
        if encoded is not None:
            session_doc = encoded.doc
            cols.update(encoded.sections)
        elif session is not None:
            session_doc = _session_doc(session)
            raw = _raw_arrays(session, session_doc, deflater)
            deflate(raw)
            cols.update(raw)
    except (TypeError, OverflowError, ValueError) as err:
        raise FormatError(f"cannot save this profile: {err}") from None
    cols["strings"], cols["string_lengths"] = strings.arrays()
    deflate({"strings": cols["strings"], "string_lengths": cols["string_lengths"]})
    meta = {"profile": {"metrics": [[m, cols["value:" + m].typecode] for m in profile.values],
                        "threads": profile.pids is not None, "metadata": profile.metadata},
            "session": session_doc}
    # What load would refuse is refused here, before anything is written
    # (an encoded session's sections were checked when it was encoded).
    try:
        checker = _Validator("(profile being saved)", meta, cols)
        if encoded is not None:
            checker.check_profile()
        else:
            checker.check()
    except _Damage as err:
        raise FormatError(f"cannot save this profile: {err}") from None
    out.write(MAGIC + struct.pack("<I", FORMAT_VERSION))
    _write_json(out, "meta", meta)
    for name, values in cols.items():
        _write_array(out, name, values, packed.get(name))
    _section(out, "end", b"J", 0, b"")


def save(path: str, profile: Profile, session: "Optional[Session | EncodedSession]" = None) -> None:
    """Write ``profile`` (and the raw ``session``, or its
    :class:`EncodedSession`) to ``path``, all or nothing, through the one
    output writer."""
    from .files import write_atomic
    write_atomic(path, lambda out: save_to(out, profile, session))


# =============================================================================
# reading
# =============================================================================

def is_profile_file(path: str) -> bool:
    """True if ``path`` starts like a ctprof profile of any format version
    (so a format-1 file gets its clear refusal from :func:`load`, not a
    folded-stacks parse error)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError:
        return False
    return looks_like_profile(head)


def looks_like_profile(head: bytes) -> bool:
    """True if ``head``, a file's first bytes (one is enough: folded text
    never starts with 0x89, a byte that cannot begin UTF-8), starts like a
    ctprof profile of any format version."""
    return head[:1] == MAGIC[:1] or head[:2] == GZIP_MAGIC


def load(path: str, with_session: bool = True) -> Tuple[Profile, Optional[Session]]:
    """Read and validate a profile written by :func:`save`.  The whole file
    is validated either way; ``with_session=False`` (what the renderers
    need) skips building the raw session's objects and returns None for it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise FormatError(f"{path}: cannot read: {(err.strerror or str(err)).lower()}") from None
    return load_bytes(data, path, with_session)


def load_bytes(data: bytes, label: str, with_session: bool = True) -> Tuple[Profile, Optional[Session]]:
    """:func:`load` for the contents of a file already read (``label``
    names it in errors)."""
    if not data:
        raise FormatError(f"{label}: empty file, not a ctprof profile")
    if data.startswith(GZIP_MAGIC):
        raise FormatError(_refusal_of_gzip(data, label))
    if not data.startswith(MAGIC):
        raise FormatError(f"{label}: not a ctprof profile")
    if len(data) < len(MAGIC) + 4:
        raise FormatError(f"{label}: damaged profile: cut short inside the header")
    version, = struct.unpack_from("<I", data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise FormatError(f"{label}: profile format version {version} is not supported "
                          f"(this ctprof reads version {FORMAT_VERSION})")
    try:
        meta, cols = _read_sections(memoryview(data)[len(MAGIC) + 4:])
        with paused_collector():
            return _Validator(label, meta, cols).build(with_session)
    except _Damage as err:
        raise FormatError(f"{label}: damaged profile: {err}") from None


def _refusal_of_gzip(data: bytes, label: str) -> str:
    try:
        head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:4096], 256)
    except zlib.error:
        head = b""
    if head.startswith(_V1_PREFIX):
        return (f"{label}: written by an older ctprof in profile format 1 (gzip JSON), which this ctprof "
                f"no longer reads (it reads format {FORMAT_VERSION}); record the profile again")
    return f"{label}: gzip-compressed data, not a ctprof profile"


class _Damage(Exception):
    """What is wrong with a file, in words; :func:`load_bytes` adds the name."""


def _read_sections(view: memoryview) -> Tuple[Any, Dict[str, array]]:
    meta: Any = None
    cols: Dict[str, array] = {}
    pos, end = 0, len(view)
    first = True
    while True:
        if pos >= end:
            raise _Damage("cut short (no end marker)")
        n, = _SECTION_HEAD.unpack_from(view, pos)
        if not 1 <= n <= 64:
            raise _Damage(f"bad section header at byte {pos + 12}")
        if pos + 1 + n + _SECTION_SIZES.size > end:
            raise _Damage("cut short inside a section header")
        name = bytes(view[pos + 1:pos + 1 + n]).decode("ascii", "replace")
        kind, count, stored = _SECTION_SIZES.unpack_from(view, pos + 1 + n)
        pos += 1 + n + _SECTION_SIZES.size
        if name == "end":
            if pos != end:
                raise _Damage(f"{end - pos} bytes after the end marker")
            break
        if name in cols or (name == "meta" and not first):
            raise _Damage(f"section {name!r} appears twice")
        if first and name != "meta":
            raise _Damage(f"first section is {name!r}, not 'meta'")
        if kind != b"J" and kind not in _ARRAY_KINDS:
            raise _Damage(f"section {name!r} has unknown kind {kind!r}")
        itemsize = 1 if kind == b"J" else array(_ARRAY_KINDS[kind]).itemsize
        size = count * itemsize
        # Deflate cannot expand more than about 1030 to 1: a larger
        # declaration is damage, refused before anything is inflated.
        if size > MAX_SECTION_BYTES or size > stored * 1040 + 64:
            raise _Damage(f"section {name!r} declares {size} bytes, more than its {stored} stored bytes can hold")
        if pos + stored > end:
            raise _Damage(f"cut short inside section {name!r}")
        payload = _inflate(view[pos:pos + stored], size, name)
        pos += stored
        if kind == b"J":
            if name != "meta":
                raise _Damage(f"unexpected JSON section {name!r}")
            meta = _parse_json(payload)
            first = False
            continue
        if first:
            raise _Damage(f"first section is {name!r}, not 'meta'")
        values = array(_ARRAY_KINDS[kind])
        values.frombytes(payload)
        if _SWAP:
            values.byteswap()
        cols[name] = values
    if first:
        raise _Damage("no 'meta' section")
    return meta, cols


def _inflate(stored: memoryview, size: int, name: str) -> bytes:
    """The payload, refused if it inflates to anything but ``size`` bytes
    (a stream that would inflate further is never inflated further)."""
    if size == 0:
        if len(stored):
            raise _Damage(f"section {name!r} is empty but stores {len(stored)} bytes")
        return b""
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(stored, size)
    except zlib.error as err:
        raise _Damage(f"section {name!r} does not decompress ({err})") from None
    if len(payload) != size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise _Damage(f"section {name!r} does not hold the {size} bytes it declares")
    return payload


def _no_constants(name: str) -> Any:
    raise _Damage(f"{name} in the metadata (only finite numbers are allowed)")


def _parse_json(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_no_constants)
    except RecursionError:
        raise _Damage(f"metadata nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise _Damage(f"metadata is not valid JSON ({err})") from None


# -- validation ------------------------------------------------------------------

Check = Callable[[Any, str], None]


def _fail(where: str, expected: str, value: Any) -> None:
    found = "null" if value is None else {bool: "a boolean", int: "an integer", float: "a number",
                                          str: "a string", list: "a list", dict: "an object"}.get(
                                              type(value), type(value).__name__)
    raise _Damage(f"{where}: expected {expected}, found {found}")


def _string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        _fail(where, "a string", value)


def _boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        _fail(where, "true or false", value)


def _integer(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(where, "an integer", value)


def _count(value: Any, where: str) -> None:
    _integer(value, where)
    if value < 0:
        raise _Damage(f"{where}: negative ({value})")


def _amount(value: Any, where: str) -> None:
    """A finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(where, "a number", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _Damage(f"{where}: not a finite number ({value})")
    if value < 0:
        raise _Damage(f"{where}: negative ({value})")


def _optional(check: Check) -> Check:
    def optional(value: Any, where: str) -> None:
        if value is not None:
            check(value, where)
    return optional


def _list_of(check: Check) -> Check:
    def list_of(value: Any, where: str) -> None:
        if not isinstance(value, list):
            _fail(where, "a list", value)
        for i, item in enumerate(value):
            check(item, f"{where}[{i}]")
    return list_of


def _object_of(check: Check) -> Check:
    def object_of(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            _fail(where, "an object", value)
        for key, item in value.items():
            check(item, f"{where}.{key}")
    return object_of


def _pair(first: Check, second: Check) -> Check:
    def pair(value: Any, where: str) -> None:
        if not isinstance(value, list) or len(value) != 2:
            _fail(where, "a pair [a, b]", value)
        first(value[0], f"{where}[0]")
        second(value[1], f"{where}[1]")
    return pair


def _record(known: Dict[str, Check]) -> Check:
    """An object whose listed keys, where present, pass their checks; other
    keys may hold any JSON (their depth was checked)."""
    def record(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            _fail(where, "an object", value)
        for key, check in known.items():
            if key in value:
                check(value[key], f"{where}.{key}")
    return record


def _depth(doc: Any) -> int:
    deepest, todo = 0, [(doc, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            todo.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


#: What each process's heap figures hold (ctprof.memory.model); the reports
#: format and add them.
_MEMORY_PROCESS = _record({
    "totals": _object_of(_amount), "scanned": _boolean, "scan_error": _optional(_string),
    "timeline": _list_of(_pair(_amount, _amount)), "peak_time": _amount, "peak_rss": _amount,
    "ring_bytes": _amount, "unwind_cache_bytes": _amount, "lost_events": _amount, "wait_ns": _amount,
    "hook_ns_per_call": _amount, "sample_bytes": _amount, "depth": _amount,
})
_MEMORY = _object_of(_MEMORY_PROCESS)


def _code_entry(value: Any, where: str) -> None:
    """One code object of a CPython process: [qualname, filename,
    firstlineno, line table as hex]."""
    if not isinstance(value, list) or len(value) != 4:
        _fail(where, "a list of 4", value)
    _string(value[0], f"{where}[0]")
    _string(value[1], f"{where}[1]")
    _integer(value[2], f"{where}[2]")
    _string(value[3], f"{where}[3]")


_PYTHON = _record({"version": _list_of(_count), "codes": _list_of(_code_entry)})
_STRINGS = _list_of(_string)
_STRING_TABLE = _object_of(_string)

#: The metadata keys the renderers and reports read, with their types.
_METADATA = _record({
    "kind": _string, "command": _STRINGS, "default_metric": _string, "units": _STRING_TABLE,
    "hz": _amount, "hz_requested": _amount, "hz_achieved": _amount, "achieved_hz": _amount, "rate": _amount,
    "timer": _STRINGS, "unwind": _string, "samples": _amount, "dropped": _amount,
    "wall_s": _amount, "cpu_s": _amount, "start_time": _amount, "duration": _amount,
    "exit_status": _optional(_integer), "processes": _STRING_TABLE, "threads": _STRING_TABLE,
    "notes": _STRINGS, "memory": _MEMORY, "mem_sample": _count, "symbol_warnings": _STRINGS,
    "inverted": _boolean, "source": _string, "threads_selected": _string,
})

#: Session fields (ctprof.session.Session) and process fields, by type.
_SESSION_FIELDS: Dict[str, Check] = {
    "kind": _string, "command": _STRINGS, "hz": _amount, "unwind": _string, "max_depth": _count,
    "start_time": _amount, "wall_s": _amount, "exit_status": _optional(_integer), "notes": _STRINGS,
    "memory": _MEMORY, "mem_sample": _count,
}
_PROCESS_FIELDS: Dict[str, Check] = {
    "pid": _count, "ppid": _count, "exe": _string, "maps": _STRINGS,
    "threads": _list_of(_pair(_count, _string)), "thread_cpu_ns": _list_of(_pair(_count, _amount)),
    "thread_samples": _list_of(_pair(_count, _amount)), "perf_map": _optional(_string),
    "samples": _amount, "dropped": _amount, "handler_ns": _amount, "wall_ns": _amount, "timer": _string,
    "notes": _STRINGS, "python": _PYTHON,
}


def _like_default(default: Any) -> Check:
    """The check of a field added after this reader was written: the JSON
    type of its default."""
    def like(value: Any, where: str) -> None:
        if default is None or value is None:
            return
        if isinstance(default, bool):
            _boolean(value, where)
        elif isinstance(default, (int, float)):
            _amount(value, where)
        elif not isinstance(value, type(default)):
            _fail(where, f"a {type(default).__name__}", value)
    return like


def _field_checks(cls: type, known: Dict[str, Check]) -> Dict[str, Tuple[Check, bool]]:
    """name -> (check, is a tid-keyed table) for every field of ``cls``."""
    out = {}
    instance = cls(pid=0) if cls is ProcessInfo else cls()
    for f in fields(cls):
        default = getattr(instance, f.name)
        out[f.name] = (known.get(f.name) or _like_default(default), _is_tid_table(f.name, default))
    return out


#: The high byte of a non-negative int64: its sign bit clear.
_NON_NEGATIVE_HIGH_BYTES = bytes(range(128))


def _any_negative(values: array) -> bool:
    """Is any value negative?  For an int64 array, from the bytes holding
    its sign bits (a copy and a C scan: ``min`` makes an int object of
    each value, 60 ms for the 1.5 million of a large memory profile; the
    sign bytes are the one copy)."""
    if values.typecode != "q":
        return bool(values) and min(values) < 0
    high = memoryview(values).cast("B")[0 if _SWAP else 7::8]
    return bool(high.tobytes().translate(None, _NON_NEGATIVE_HIGH_BYTES))


class _Validator:
    """Checks ``meta`` and the arrays of one file against each other, then
    builds the objects (:meth:`build`)."""

    def __init__(self, label: str, meta: Any, cols: Dict[str, array]) -> None:
        self.label, self.meta, self.cols = label, meta, cols

    # -- helpers ---------------------------------------------------------
    def array(self, name: str, typecodes: str, count: Optional[int] = None) -> array:
        values = self.cols.get(name)
        if values is None:
            raise _Damage(f"section {name!r} is missing")
        if values.typecode not in typecodes:
            raise _Damage(f"section {name!r} holds {values.typecode!r} values, not {typecodes!r}")
        if count is not None and len(values) != count:
            raise _Damage(f"section {name!r} has {len(values)} entries for {count}")
        return values

    @staticmethod
    def below(values: array, limit: int, what: str) -> None:
        if values and max(values) >= limit:
            raise _Damage(f"{what} {max(values)} out of range (there are {limit})")

    @staticmethod
    def amounts(values: array, what: str) -> None:
        """Every value finite and >= 0."""
        if not values:
            return
        if values.typecode == "d" and not all(map(math.isfinite, values)):
            raise _Damage(f"{what}: a value is not a finite number")
        if _any_negative(values):
            raise _Damage(f"{what}: negative value {min(values)}")

    def stacks(self, lengths: array, refs: array, limit: int, what: str) -> None:
        if lengths and max(lengths) > MAX_STACK_FRAMES:
            raise _Damage(f"{what}: a stack of {max(lengths)} frames (at most {MAX_STACK_FRAMES})")
        if sum(lengths) != len(refs):
            raise _Damage(f"{what}: the stack lengths add up to {sum(lengths)}, not {len(refs)}")
        if limit >= 0:
            self.below(refs, limit, f"{what}: frame index")

    def metrics(self, declared: Any, where: str) -> List[Tuple[str, str]]:
        _list_of(_pair(_string, _string))(declared, where)
        names = [m for m, _ in declared]
        if len(set(names)) != len(names) or "" in names:
            raise _Damage(f"{where}: metric names must be distinct and not empty")
        for m, code in declared:
            if code not in ("q", "d"):
                raise _Damage(f"{where}: metric {m!r} has type {code!r}, not 'q' or 'd'")
        return [(m, t) for m, t in declared]

    # -- the checks ------------------------------------------------------
    def check(self) -> None:
        """Everything, without building objects (what :func:`save` runs)."""
        self.check_profile()
        if self.session_doc is not None:
            self.check_session()

    def check_profile(self) -> None:
        meta = self.meta
        if _depth(meta) > MAX_JSON_DEPTH:
            raise _Damage(f"metadata nested deeper than {MAX_JSON_DEPTH} levels")
        _record({"profile": _record({"metadata": _METADATA, "threads": _boolean})})(meta, "meta")
        prof = meta.get("profile")
        if not isinstance(prof, dict) or not isinstance(prof.get("metadata"), dict):
            raise _Damage("meta.profile.metadata: missing")
        self.metric_list = self.metrics(prof.get("metrics"), "meta.profile.metrics")
        self.threads = bool(prof.get("threads"))
        session = meta.get("session")
        if session is not None and not isinstance(session, dict):
            _fail("meta.session", "an object or null", session)
        self.session_doc = session

        lengths = self.array("string_lengths", "I")
        text = self.array("strings", "B", sum(lengths))
        self.nstrings = len(lengths)
        frames = self.array("frame_name", "I")
        self.nframes = n = len(frames)
        for name in ("frame_module", "frame_category"):
            self.below(self.array(name, "I", n), self.nstrings, f"{name}: string index")
        self.below(frames, self.nstrings, "frame_name: string index")
        self.below(self.array("frame_file", "I", n), self.nstrings + 1, "frame_file: string index")
        lines = self.array("frame_line", "q", n)
        if lines and min(lines) < _NONE:
            raise _Damage(f"frame_line: negative line {min(lines)}")
        self.below(self.array("frame_inlined", "B", n), 2, "frame_inlined: flag")
        stack_lengths = self.array("stack_length", "I")
        self.nstacks = len(stack_lengths)
        self.stacks(stack_lengths, self.array("stack_frames", "I"), n, "stack_frames")
        for metric, code in self.metric_list:
            self.amounts(self.array("value:" + metric, code, self.nstacks),
                         f"value:{metric}")
        if self.threads:
            for name in ("pid", "tid"):
                values = self.array(name, "q", self.nstacks)
                if values and min(values) < _NONE:
                    raise _Damage(f"{name}: negative id {min(values)}")
        self.text = text

    def check_session(self) -> None:
        doc = self.session_doc
        for name, (check, _) in _field_checks(Session, _SESSION_FIELDS).items():
            if name in doc and name not in _SESSION_TABLES:
                check(doc[name], f"meta.session.{name}")
        processes = doc.get("processes", [])
        if not isinstance(processes, list):
            _fail("meta.session.processes", "a list", processes)
        process_checks = _field_checks(ProcessInfo, _PROCESS_FIELDS)
        for i, proc in enumerate(processes):
            where = f"meta.session.processes[{i}]"
            if not isinstance(proc, dict):
                _fail(where, "an object", proc)
            if "pid" not in proc:
                raise _Damage(f"{where}: no pid")
            for name, (check, _) in process_checks.items():
                if name in proc:
                    check(proc[name], f"{where}.{name}")
        keysets = doc.get("raw_keysets", [])
        _list_of(_STRINGS)(keysets, "meta.session.raw_keysets")
        for i, keys in enumerate(keysets):
            if len(set(keys)) != len(keys):
                raise _Damage(f"meta.session.raw_keysets[{i}]: names a metric twice")
        self.keysets = keysets
        pids = self.array("raw_pid", "q")
        self.nraw = n = len(pids)
        for name in ("raw_pid", "raw_tid"):
            values = self.array(name, "q", n)
            if _any_negative(values):
                raise _Damage(f"{name}: negative id {min(values)}")
        self.array("raw_gen", "I", n)
        self.below(self.array("raw_truncated", "B", n), 2, "raw_truncated: flag")
        keyset_ids = self.array("raw_keyset", "I", n)
        self.below(keyset_ids, len(keysets), "raw_keyset: key set")
        self.stacks(self.array("raw_length", "I", n), self.array("raw_ips", "Q"), -1, "raw_ips")
        if "raw_py_length" in self.cols or "raw_py" in self.cols:
            lengths = self.array("raw_py_length", "I", n)
            self.stacks(lengths, self.array("raw_py", "Q"), -1, "raw_py")
            if any(k & 1 for k in lengths):
                raise _Damage("raw_py_length: an odd count (Python frames come in pairs)")
        values = self.array("raw_values", "qd")
        expected = sum(len(keysets[k]) * used for k, used in Counter(keyset_ids).items())
        if len(values) != expected:
            raise _Damage(f"raw_values: {len(values)} values where the key sets need {expected}")
        self.amounts(values, "raw_values")

    # -- building --------------------------------------------------------
    def build(self, with_session: bool = True) -> Tuple[Profile, Optional[Session]]:
        self.check()
        profile = self.build_profile()
        session = self.build_session() if with_session and self.session_doc is not None else None
        return profile, session

    def build_profile(self) -> Profile:
        cols = self.cols
        strings = self.decode_strings()
        name, module, category = (cols["frame_name"], cols["frame_module"], cols["frame_category"])
        files = [None] + strings
        frames = [Frame(strings[n], strings[m], strings[c], files[f], None if line == _NONE else line, bool(i))
                  for n, m, c, f, line, i in zip(name, module, category, cols["frame_file"],
                                                  cols["frame_line"], cols["frame_inlined"])]
        # Stacks refer to the frame indexes as shared int objects, not one
        # int object per reference (2.6 million references: 80 MB saved).
        indexes = list(range(len(frames)))
        refs = map(indexes.__getitem__, cols["stack_frames"])
        stacks = [tuple(islice(refs, n)) for n in cols["stack_length"]]
        values = {m: cols["value:" + m].tolist() for m, _ in self.metric_list}
        pids = tids = None
        if self.threads:
            pids = [None if p == _NONE else p for p in cols["pid"].tolist()]
            tids = [None if t == _NONE else t for t in cols["tid"].tolist()]
        profile = Profile(frames=frames, stacks=stacks, values=values, pids=pids, tids=tids,
                          metadata=dict(self.meta["profile"]["metadata"]))
        profile._frame_index = {f: i for i, f in enumerate(frames)}
        return profile

    def decode_strings(self) -> List[str]:
        blob = self.text.tobytes()
        out, pos = [], 0
        try:
            for n in self.cols["string_lengths"]:
                out.append(blob[pos:pos + n].decode("utf-8", "surrogatepass"))
                pos += n
        except UnicodeDecodeError as err:
            raise _Damage(f"strings: not UTF-8 ({err.reason})") from None
        return out

    def build_session(self) -> Session:
        doc, cols = dict(self.session_doc), self.cols
        processes = {}
        tables = {name for name, (_, table) in _field_checks(ProcessInfo, {}).items() if table}
        for proc in doc.pop("processes", []):
            info = ProcessInfo(**{k: ({int(a): b for a, b in v} if k in tables else v)
                                  for k, v in proc.items() if k in _PROCESS_NAMES})
            processes[info.pid] = info
        session = Session(**{k: v for k, v in doc.items() if k in _SESSION_NAMES})
        session.processes = processes
        keysets = [(tuple(keys), len(keys)) for keys in self.keysets]
        values = iter(cols["raw_values"])
        # One int object per distinct address (thousands), shared by the
        # millions of frames that hold it.
        # (The array is walked twice rather than turned into a list: a list
        # of 3 million ints would be the largest thing a load ever holds.)
        canonical = {a: a for a in dict.fromkeys(cols["raw_ips"])}
        ips = map(canonical.__getitem__, cols["raw_ips"])
        py_words = iter(cols.get("raw_py", ()))
        py_lengths = cols.get("raw_py_length") or array("I", bytes(4 * self.nraw))
        session.stacks = [
            RawStack(pid, tid, gen, tuple(islice(ips, n)), trunc == 1,
                     dict(zip(keysets[ks][0], islice(values, keysets[ks][1]))),
                     tuple(islice(py_words, npy)) if npy else ())
            for pid, tid, gen, trunc, n, ks, npy in zip(
                cols["raw_pid"].tolist(), cols["raw_tid"].tolist(), cols["raw_gen"].tolist(),
                cols["raw_truncated"], cols["raw_length"], cols["raw_keyset"], py_lengths)]
        return session


_SESSION_NAMES = {f.name for f in fields(Session)} - set(_SESSION_TABLES)
_PROCESS_NAMES = {f.name for f in fields(ProcessInfo)}
