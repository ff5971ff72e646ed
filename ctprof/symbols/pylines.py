"""Source lines of CPython instructions, decoded from a code object's raw line table.

``attach`` reads Python frames out of another process: for each code object it
copies the bytes of the line table and ``co_firstlineno``, and for each frame the
position of the instruction as a code-unit index (byte offset // 2).  Calling
the interpreter's own decoder is not an option (the table belongs to another
process, and maybe another Python version), so the three formats CPython has used
since 3.9 are decoded here, following the interpreter's C code:

- 3.9 ``co_lnotab`` (``PyCode_Addr2Line``): pairs of (unsigned byte-offset
  increment, signed line increment).  A line applies from the offset reached by
  its pair onward; the last one never ends, as the table does not say where the
  code stops.  Every instruction has a line.
- 3.10 ``co_linetable`` (``Objects/lnotab_notes.txt``): pairs of (unsigned
  length in bytes, signed line increment), each pair one range; increment -128
  marks a range with no line and leaves the running line alone.
- 3.11 to 3.13 location table (``Objects/locations.md``): entries of
  ``1CCCCLLL`` covering LLL+1 code units (inline CACHE units included, they share
  their instruction's location) with code C saying where the line increment is:
  15 no location, 14 long form (signed varint, then three varints), 13 no column
  (signed varint), 10-12 one line (increment C-10, two column bytes), 0-9 short
  form (same line, one column byte).  Varints are 6-bit groups, least
  significant first, bit 6 meaning "more"; signed ones keep the sign in bit 0.

The bytes come from another process's memory and may be torn by a concurrent
write or be no line table at all, so a table is checked as it is parsed (every
entry complete, of the size its form requires, continuation bytes where they
must be) and a damaged one answers None for every instruction: no line is
better than a plausible wrong one, and the caller falls back to
``co_firstlineno``.
"""
from __future__ import annotations

import functools
from bisect import bisect_right
from typing import List, Optional, Tuple

__all__ = ["LineTable", "line_for", "SUPPORTED"]

#: Versions whose table formats are decoded here.
SUPPORTED = ((3, 9), (3, 10), (3, 11), (3, 12), (3, 13))

_NO_LINE_310 = -128     # 3.10 line increment of a range without a line

_NO_LOCATION = 15       # location-table entry codes (3.11+)
_LONG = 14
_NO_COLUMN = 13
_ONE_LINE_FIRST = 10    # 10, 11, 12: line increment 0, 1, 2


class _Damaged(Exception):
    """The bytes are not a complete line table of the version asked for."""


class LineTable:
    """One code object's line table, parsed once into sorted ranges.

    A sampled frame asks for one index of a code object that appears in many
    samples, so the table is decoded once into range starts (byte offsets) with
    their lines and each question is a bisection.  ``damaged`` says the bytes
    did not parse; such a table answers None (count these to report them once).
    """

    __slots__ = ("_starts", "_lines", "_end", "damaged")

    def __init__(self, version: Tuple[int, int], linetable: bytes, firstlineno: int) -> None:
        version = tuple(version[:2])
        if version not in SUPPORTED:
            raise ValueError("no line-table decoder for Python %d.%d" % version)
        parse = _parse_lnotab if version == (3, 9) else \
            _parse_linetable_310 if version == (3, 10) else _parse_locations
        self._starts: List[int] = []
        self._lines: List[Optional[int]] = []
        self._end: Optional[int] = 0
        self.damaged = False
        try:
            self._starts, self._lines, self._end = parse(bytes(linetable), int(firstlineno))
        except _Damaged:
            self.damaged = True

    def line(self, index: int) -> Optional[int]:
        """Source line of the instruction at code unit ``index``, None if it has none."""
        offset = index * 2
        if offset < 0 or (self._end is not None and offset >= self._end):
            return None
        at = bisect_right(self._starts, offset) - 1
        return self._lines[at] if at >= 0 else None


def line_for(version: Tuple[int, int], linetable: bytes, firstlineno: int,
             index: int) -> Optional[int]:
    """Source line of code unit ``index`` of a code object of CPython ``version``.

    None when the instruction has no line or the table is damaged; raises only
    ValueError for a version without a decoder (a caller's choice, not the data's).
    """
    return _table(tuple(version[:2]), bytes(linetable), int(firstlineno)).line(index)


@functools.lru_cache(maxsize=4096)
def _table(version: Tuple[int, int], linetable: bytes, firstlineno: int) -> LineTable:
    return LineTable(version, linetable, firstlineno)


# Each parser returns (starts, lines, end): sorted byte offsets where a line
# begins, the line (None: no line) and the offset where the code ends (None:
# unknown, the last line runs on).

def _append(starts: List[int], lines: List[Optional[int]], start: int, line: Optional[int]) -> None:
    """Record that ``line`` applies from ``start``; a later entry at the same offset wins."""
    if line is not None and line < 0:
        raise _Damaged()            # no version writes negative lines
    if starts and starts[-1] == start:
        lines[-1] = line
    elif not lines or lines[-1] != line:
        starts.append(start)
        lines.append(line)


def _signed_byte(value: int) -> int:
    return value - 256 if value >= 128 else value


def _parse_lnotab(table: bytes, firstlineno: int):
    if len(table) % 2:
        raise _Damaged()
    starts: List[int] = []
    lines: List[Optional[int]] = []
    offset, line = 0, firstlineno
    _append(starts, lines, 0, line)
    for i in range(0, len(table), 2):
        # Pairs with a zero offset increment only carry a line jump too large
        # for one byte (or a backwards one); the line applies where the offset lands.
        offset += table[i]
        line += _signed_byte(table[i + 1])
        _append(starts, lines, offset, line)
    return starts, lines, None


def _parse_linetable_310(table: bytes, firstlineno: int):
    if len(table) % 2:
        raise _Damaged()
    starts: List[int] = []
    lines: List[Optional[int]] = []
    end, line = 0, firstlineno
    for i in range(0, len(table), 2):
        start, end = end, end + table[i]
        delta = _signed_byte(table[i + 1])
        if delta == _NO_LINE_310:
            entry_line: Optional[int] = None
        else:
            line += delta
            entry_line = line
        if end > start:             # empty ranges only carry line increments
            _append(starts, lines, start, entry_line)
    return starts, lines, end


def _parse_locations(table: bytes, firstlineno: int):
    starts: List[int] = []
    lines: List[Optional[int]] = []
    end, line, pos = 0, firstlineno, 0
    while pos < len(table):
        first = table[pos]
        if not first & 0x80:
            raise _Damaged()        # an entry must start here
        code, units = (first >> 3) & 15, (first & 7) + 1
        pos += 1
        if code == _NO_LOCATION:
            entry_line: Optional[int] = None
        else:
            if code == _LONG:
                delta, pos = _svarint(table, pos)
                for _ in range(3):  # end line, column, end column
                    _, pos = _varint(table, pos)
            elif code == _NO_COLUMN:
                delta, pos = _svarint(table, pos)
            elif code >= _ONE_LINE_FIRST:
                delta, pos = code - _ONE_LINE_FIRST, _skip_bytes(table, pos, 2)
            else:
                delta, pos = 0, _skip_bytes(table, pos, 1)
            line += delta
            entry_line = line
        _append(starts, lines, end, entry_line)
        end += units * 2
    return starts, lines, end


def _skip_bytes(table: bytes, pos: int, count: int) -> int:
    if pos + count > len(table) or any(b & 0x80 for b in table[pos:pos + count]):
        raise _Damaged()
    return pos + count


def _varint(table: bytes, pos: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(table) or table[pos] & 0x80:
            raise _Damaged()        # cut short, or runs into the next entry
        byte = table[pos]
        pos += 1
        value |= (byte & 63) << shift
        shift += 6
        if not byte & 64:
            return value, pos


def _svarint(table: bytes, pos: int) -> Tuple[int, int]:
    value, pos = _varint(table, pos)
    return (-(value >> 1) if value & 1 else value >> 1), pos
