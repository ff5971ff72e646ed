"""pprof: gzipped ``profile.proto``, written with a small protobuf encoder.

The format is google/pprof's ``proto/profile.proto`` (package
``perftools.profiles``), read by ``go tool pprof``, Pyroscope, Parca and
others.  The encoder below writes only what this message needs: varints
(wire type 0), length-delimited fields (wire type 2, for strings, embedded
messages and packed repeated integers).  Field numbers, from the .proto:

- Profile: 1 sample_type (ValueType), 2 sample, 3 mapping, 4 location,
  5 function, 6 string_table, 9 time_nanos, 10 duration_nanos,
  11 period_type, 12 period, 13 comment, 14 default_sample_type
- ValueType: 1 type, 2 unit (string table indexes)
- Sample: 1 location_id (packed, leaf first), 2 value (packed), 3 label
- Label: 1 key, 2 str, 3 num, 4 num_unit
- Mapping: 1 id, 2 memory_start, 3 memory_limit, 4 file_offset,
  5 filename, 6 build_id, 7 has_functions
- Location: 1 id, 2 mapping_id, 3 address, 4 line
- Line: 1 function_id, 2 line
- Function: 1 id, 2 name, 3 system_name, 4 filename, 5 start_line

Every frame becomes one Location with one Line (inlined frames stay
separate locations); one Function per (name, file); one Mapping per module,
marked ``has_functions`` so pprof does not try to symbolize again.  Every
metric of the profile becomes a sample type, the chosen one the default.
CPU profiles with a known rate also get a ``cpu nanoseconds`` value.
"""
from __future__ import annotations

import gzip
from typing import Dict, List, Optional, Tuple

from ..profile import Profile
from .speedscope import command_text

# -- a minimal protobuf encoder ----------------------------------------------


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    """Field ``number`` as wire type 0; zero (the default) is left out."""
    if not value:
        return b""
    return varint(number << 3) + varint(int(value))


def field_bytes(number: int, data: bytes) -> bytes:
    """Field ``number`` as wire type 2 (length-delimited)."""
    return varint((number << 3) | 2) + varint(len(data)) + data


def field_packed(number: int, values: List[int]) -> bytes:
    """Repeated integer field, packed (proto3 default)."""
    if not values:
        return b""
    return field_bytes(number, b"".join(varint(v) for v in values))


# -- profile -------------------------------------------------------------------

_TYPE_NAMES = {"alloc_bytes": "alloc_space", "alloc_count": "alloc_objects"}


class _Strings:
    def __init__(self) -> None:
        self.table: List[str] = [""]
        self.index: Dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        i = self.index.get(text)
        if i is None:
            i = self.index[text] = len(self.table)
            self.table.append(text)
        return i


def _rate(profile: Profile) -> float:
    for key in ("hz", "achieved_hz", "rate"):
        value = profile.metadata.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return 0.0


def pprof_bytes(profile: Profile, metric: Optional[str] = None) -> bytes:
    """The uncompressed profile.proto message for ``profile``."""
    strings = _Strings()
    metrics = list(profile.values)
    default = metric or profile.default_metric()
    if metrics:
        profile.column(default)
    columns = [profile.values[m] for m in metrics]
    sample_types: List[Tuple[str, str]] = []
    for m in metrics:
        unit = profile.unit(m)
        sample_types.append((_TYPE_NAMES.get(m, m), "bytes" if unit == "bytes" else "count"))
    hz = _rate(profile)
    cpu = profile.metadata.get("kind", "cpu") == "cpu" and "samples" in metrics and hz > 0
    period = int(round(1e9 / hz)) if cpu else 0
    if cpu:
        sample_types.append(("cpu", "nanoseconds"))
        samples_column = profile.values["samples"]

    out = bytearray()
    for type_name, unit in sample_types:
        out += field_bytes(1, field_varint(1, strings(type_name)) + field_varint(2, strings(unit)))

    # functions, mappings, locations: one location per frame actually used
    mappings: Dict[str, int] = {}
    functions: Dict[Tuple[str, str], int] = {}
    locations: Dict[int, int] = {}
    mapping_msgs: List[bytes] = []
    function_msgs: List[bytes] = []
    location_msgs: List[bytes] = []

    def location_id(frame_index: int) -> int:
        loc = locations.get(frame_index)
        if loc is not None:
            return loc
        frame = profile.frames[frame_index]
        mapping_id = 0
        if frame.module:
            mapping_id = mappings.get(frame.module, 0)
            if not mapping_id:
                mapping_id = mappings[frame.module] = len(mappings) + 1
                mapping_msgs.append(field_varint(1, mapping_id) + field_varint(5, strings(frame.module))
                                    + field_varint(7, 1))
        filename = frame.file or frame.module or ""
        fkey = (frame.name, filename)
        function_id = functions.get(fkey)
        if function_id is None:
            function_id = functions[fkey] = len(functions) + 1
            name = strings(frame.name)
            function_msgs.append(field_varint(1, function_id) + field_varint(2, name) + field_varint(3, name)
                                 + field_varint(4, strings(filename)))
        loc = locations[frame_index] = len(locations) + 1
        line = field_varint(1, function_id) + field_varint(2, frame.line or 0)
        location_msgs.append(field_varint(1, loc) + field_varint(2, mapping_id) + field_bytes(4, line))
        return loc

    # pprof takes the first mapping for the main binary: the program's own,
    # not whichever library the first sample happened to end in.
    main = next((f.module for f in profile.frames if f.category == "program" and f.module), None)
    if main:
        mappings[main] = 1
        mapping_msgs.append(field_varint(1, 1) + field_varint(5, strings(main)) + field_varint(7, 1))

    pid_key = strings("pid") if profile.pids is not None else 0
    tid_key = strings("thread_id") if profile.tids is not None else 0
    for n, stack in enumerate(profile.stacks):
        values = [c[n] for c in columns]
        if cpu:
            values.append(samples_column[n] * period)
        if not any(values):
            continue
        msg = field_packed(1, [location_id(i) for i in reversed(stack)]) + field_packed(2, values)
        if pid_key and profile.pids[n] is not None:
            msg += field_bytes(3, field_varint(1, pid_key) + field_varint(3, profile.pids[n]))
        if tid_key and profile.tids[n] is not None:
            msg += field_bytes(3, field_varint(1, tid_key) + field_varint(3, profile.tids[n]))
        out += field_bytes(2, msg)
    for msg in mapping_msgs:
        out += field_bytes(3, msg)
    for msg in location_msgs:
        out += field_bytes(4, msg)
    for msg in function_msgs:
        out += field_bytes(5, msg)

    start = profile.metadata.get("start_time")
    duration = profile.metadata.get("duration") or profile.metadata.get("wall_s")
    # intern remaining strings before writing the table
    comment = strings("ctprof: " + command_text(profile))
    cpu_type = strings("cpu") if cpu else 0
    ns = strings("nanoseconds") if cpu else 0
    default_type = strings(_TYPE_NAMES.get(default, default)) if metrics else 0
    for text in strings.table:
        out += field_bytes(6, text.encode("utf-8", "replace"))
    if isinstance(start, (int, float)) and start > 0:
        out += field_varint(9, int(start * 1e9))
    if isinstance(duration, (int, float)) and duration > 0:
        out += field_varint(10, int(duration * 1e9))
    if cpu:
        out += field_bytes(11, field_varint(1, cpu_type) + field_varint(2, ns))
        out += field_varint(12, period)
    out += field_packed(13, [comment])
    out += field_varint(14, default_type)
    return bytes(out)


def pprof_gzip(profile: Profile, metric: Optional[str] = None) -> bytes:
    """:func:`pprof_bytes`, gzipped (what pprof tools expect on disk)."""
    return gzip.compress(pprof_bytes(profile, metric), compresslevel=6, mtime=0)
