"""Parse ``/proc/PID/maps`` text and find the mapping that holds an address.

A maps snapshot is parsed once into a :class:`MapTable` (sorted starts +
``bisect``).  Nothing here touches the file system: the text may describe a
process that is long gone.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from typing import List, Optional

DELETED_SUFFIX = " (deleted)"

#: Pseudo-mappings the kernel names in brackets that hold kernel-provided code.
KERNEL_PSEUDO = ("[vdso]", "[vsyscall]")


@dataclass(frozen=True)
class Mapping:
    """One line of a maps file.

    ``path`` is the name as the kernel printed it, without a trailing
    `` (deleted)`` (``deleted`` says whether it had one); empty for anonymous
    memory.  ``offset`` is the file offset of ``start``.
    """

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    deleted: bool = False

    @property
    def is_file(self) -> bool:
        """Backed by a regular file path (not ``[heap]``, ``[vdso]``, anonymous, memfd)."""
        return self.path.startswith("/") and not self.path.startswith("/memfd:")

    @property
    def executable(self) -> bool:
        return len(self.perms) > 2 and self.perms[2] == "x"

    @property
    def module(self) -> str:
        """What a person calls this mapping: the basename of the file, or the
        bracketed pseudo name (``[vdso]``), or ``memfd:NAME``."""
        if self.path.startswith("/memfd:"):
            return self.path[1:]
        if self.path.startswith("/"):
            return os.path.basename(self.path)
        return self.path

    def file_offset(self, addr: int) -> int:
        """File offset of ``addr`` (which must lie inside this mapping)."""
        return addr - self.start + self.offset


def parse_maps(text: str) -> List[Mapping]:
    """Every well-formed line of ``text``; malformed lines are skipped."""
    out: List[Mapping] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        try:
            lo, hi = parts[0].split("-", 1)
            start, end = int(lo, 16), int(hi, 16)
            offset = int(parts[2], 16)
            inode = int(parts[4])
        except ValueError:
            continue
        path = parts[5].strip() if len(parts) > 5 else ""
        deleted = path.endswith(DELETED_SUFFIX)
        if deleted:
            path = path[: -len(DELETED_SUFFIX)]
        # The kernel prints a newline in a path as \012 (and escapes
        # nothing else), so the line stays one line.
        path = path.replace("\\012", "\n")
        if end <= start:
            continue
        out.append(Mapping(start, end, parts[1], offset, parts[3], inode, path, deleted))
    return out


class MapTable:
    """A parsed maps snapshot with address lookup."""

    def __init__(self, text: str) -> None:
        self.mappings = sorted(parse_maps(text), key=lambda m: m.start)
        self._starts = [m.start for m in self.mappings]

    def find(self, addr: int) -> Optional[Mapping]:
        """The mapping containing ``addr``, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            m = self.mappings[i]
            if addr < m.end:
                return m
        return None

    def main_executable(self, exe: str = "") -> Optional[str]:
        """Path of the program's own executable: ``exe`` if it is mapped
        (compared after resolving symlinks), else the first executable file
        mapping (the kernel maps the program before the dynamic loader runs,
        so it comes first for PIE and non-PIE alike)."""
        if exe:
            real = os.path.realpath(exe)
            for m in self.mappings:
                if m.path and (m.path == exe or m.path == real):
                    return m.path
        for m in self.mappings:
            if m.executable and m.is_file:
                return m.path
        return None
