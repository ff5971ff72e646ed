"""Just enough ELF to turn a (module, file offset) into a symbol name.

Parsed with :mod:`struct` straight from the file's bytes: the header, the
program headers (``PT_LOAD`` gives file offset -> virtual address), the
section headers, the build-id note, ``.gnu_debuglink`` and the symbol tables.
Symbol tables are unpacked in bulk (``struct.iter_unpack`` over the raw
section), never one object per symbol: a 100,000-function executable loads in
a fraction of a second.  DWARF (source lines) lives in :mod:`.lines` and uses
pyelftools.

Every malformed input raises :class:`ElfError` (nothing else): offsets and
counts are checked against the file size before use, so a truncated or
bit-flipped file can only produce an error or fewer symbols.
"""
from __future__ import annotations

import bisect
import mmap
import os
import struct
import zlib
from array import array
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

PT_LOAD = 1
PT_NOTE = 4
SHT_SYMTAB = 2
SHT_NOTE = 7
SHT_NOBITS = 8
SHT_DYNSYM = 11
SHF_EXECINSTR = 0x4
STT_NOTYPE, STT_FUNC, STT_GNU_IFUNC = 0, 2, 10
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
SHN_UNDEF, SHN_LORESERVE = 0, 0xFF00
NT_GNU_BUILD_ID = 3

#: Where distributions install separate debug files (Debian's ``*-dbg``/``-dbgsym``).
DEFAULT_DEBUG_DIRS: Tuple[str, ...] = ("/usr/lib/debug",)

_MAX_SECTIONS = 1 << 16
_MAX_PHDRS = 1 << 16


class ElfError(Exception):
    """The file is not a usable ELF file; the message says why."""


@dataclass
class Section:
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass
class ElfFile:
    """Headers of one ELF image (the bytes stay with the caller)."""

    is64: bool
    endian: str                      # "<" or ">"
    e_type: int
    loads: List[Tuple[int, int, int, int]]   # (p_offset, p_vaddr, p_filesz, p_memsz)
    sections: List[Section]
    build_id: str = ""

    def section(self, name: str) -> Optional[Section]:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def has_section_data(self, name: str) -> bool:
        s = self.section(name)
        return s is not None and s.type != SHT_NOBITS and s.size > 0


def _unpack(fmt: str, data, offset: int) -> tuple:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise ElfError("truncated (header beyond end of file)")
    return struct.unpack_from(fmt, data, offset)


def _slice(data, offset: int, size: int):
    if offset < 0 or size < 0 or offset + size > len(data):
        raise ElfError("truncated (section beyond end of file)")
    return data[offset:offset + size]


def parse(data) -> ElfFile:
    """Parse the headers of the ELF image in ``data`` (bytes, mmap or memoryview)."""
    if len(data) < 16 or bytes(data[:4]) != b"\x7fELF":
        raise ElfError("not an ELF file")
    cls, enc = data[4], data[5]
    if cls not in (1, 2) or enc not in (1, 2):
        raise ElfError("unknown ELF class or byte order")
    is64 = cls == 2
    e = "<" if enc == 1 else ">"
    if is64:
        (e_type, _m, _v, _entry, e_phoff, e_shoff, _f, _eh, e_phentsize, e_phnum,
         e_shentsize, e_shnum, e_shstrndx) = _unpack(e + "HHIQQQIHHHHHH", data, 16)
    else:
        (e_type, _m, _v, _entry, e_phoff, e_shoff, _f, _eh, e_phentsize, e_phnum,
         e_shentsize, e_shnum, e_shstrndx) = _unpack(e + "HHIIIIIHHHHHH", data, 16)

    loads: List[Tuple[int, int, int, int]] = []
    notes: List[Tuple[int, int]] = []
    phfmt = e + ("IIQQQQQQ" if is64 else "IIIIIIII")
    if e_phnum and e_phoff:
        if e_phentsize < struct.calcsize(phfmt) or e_phnum > _MAX_PHDRS:
            raise ElfError("bad program header table")
        for i in range(e_phnum):
            f = _unpack(phfmt, data, e_phoff + i * e_phentsize)
            if is64:
                p_type, _flags, p_offset, p_vaddr, _pa, p_filesz, p_memsz, _al = f
            else:
                p_type, p_offset, p_vaddr, _pa, p_filesz, p_memsz, _flags, _al = f
            if p_type == PT_LOAD:
                loads.append((p_offset, p_vaddr, p_filesz, p_memsz))
            elif p_type == PT_NOTE:
                notes.append((p_offset, p_filesz))

    sections: List[Section] = []
    shfmt = e + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII")
    if e_shnum and e_shoff:
        if e_shentsize < struct.calcsize(shfmt) or e_shnum > _MAX_SECTIONS:
            raise ElfError("bad section header table")
        raw = []
        for i in range(e_shnum):
            raw.append(_unpack(shfmt, data, e_shoff + i * e_shentsize))
        names = b""
        if 0 < e_shstrndx < len(raw):
            s = raw[e_shstrndx]
            if s[1] != SHT_NOBITS:
                try:
                    names = bytes(_slice(data, s[4], s[5]))
                except ElfError:
                    names = b""
        for (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size,
             sh_link, _info, _align, sh_entsize) in raw:
            name = ""
            if names and sh_name < len(names):
                end = names.find(b"\0", sh_name)
                name = names[sh_name:end if end >= 0 else len(names)].decode("utf-8", "replace")
            sections.append(Section(name, sh_type, sh_flags, sh_addr, sh_offset, sh_size,
                                    sh_link, sh_entsize))
        for s in sections:
            if s.type == SHT_NOTE:
                notes.append((s.offset, s.size))

    info = ElfFile(is64, e, e_type, loads, sections)
    for off, size in notes:
        bid = _build_id_from_notes(data, off, size, e)
        if bid:
            info.build_id = bid
            break
    return info


def _build_id_from_notes(data, off: int, size: int, e: str) -> str:
    if off < 0 or size <= 0 or off + size > len(data):
        return ""
    pos, end = off, off + size
    while pos + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from(e + "III", data, pos)
        pos += 12
        name_end = pos + ((namesz + 3) & ~3)
        desc_end = name_end + ((descsz + 3) & ~3)
        if desc_end > end:
            return ""
        if ntype == NT_GNU_BUILD_ID and bytes(data[pos:pos + namesz]).rstrip(b"\0") == b"GNU" and 0 < descsz <= 64:
            return bytes(data[name_end:name_end + descsz]).hex()
        pos = desc_end
    return ""


def debuglink(data, info: ElfFile) -> Optional[Tuple[str, int]]:
    """(file name, CRC32) from ``.gnu_debuglink``, if present."""
    s = info.section(".gnu_debuglink")
    if s is None or s.type == SHT_NOBITS or s.size < 5:
        return None
    try:
        raw = bytes(_slice(data, s.offset, s.size))
    except ElfError:
        return None
    nul = raw.find(b"\0")
    if nul <= 0:
        return None
    crc_at = (nul + 4) & ~3
    if crc_at + 4 > len(raw):
        return None
    name = raw[:nul].decode("utf-8", "replace")
    if "/" in name:
        return None
    return name, struct.unpack_from(info.endian + "I", raw, crc_at)[0]


# -- symbol tables ------------------------------------------------------------

class SymbolTable:
    """Sorted, non-overlapping-by-start function symbols.

    ``starts[i]``/``ends[i]`` bound symbol ``i`` (``end`` from ``st_size``; a
    zero-sized symbol runs to the next symbol or the end of its section);
    its name is ``blob[offs[i]:offs[i+1]]`` (UTF-8, decoded on lookup so a
    large table costs nothing until it is used).
    """

    __slots__ = ("starts", "ends", "offs", "blob", "_names")

    def __init__(self, starts: array, ends: array, offs: array, blob: bytes) -> None:
        self.starts, self.ends, self.offs, self.blob = starts, ends, offs, blob
        self._names: Dict[int, str] = {}

    @classmethod
    def empty(cls) -> "SymbolTable":
        return cls(array("Q"), array("Q"), array("I", [0]), b"")

    def __len__(self) -> int:
        return len(self.starts)

    def index(self, vaddr: int) -> int:
        """Index of the symbol whose [start, end) holds ``vaddr``, or -1."""
        i = bisect.bisect_right(self.starts, vaddr) - 1
        if i < 0 or vaddr >= self.ends[i]:
            return -1
        return i

    def name(self, i: int) -> str:
        """Raw (mangled) name of symbol ``i``."""
        name = self._names.get(i)
        if name is None:
            name = self.blob[self.offs[i]:self.offs[i + 1]].decode("utf-8", "replace")
            self._names[i] = name
        return name

    def lookup(self, vaddr: int) -> Optional[Tuple[str, int]]:
        """(raw name, start) of the symbol whose [start, end) holds ``vaddr``."""
        i = self.index(vaddr)
        if i < 0:
            return None
        return self.name(i), self.starts[i]


def _name_rank(bind: int, name: bytes) -> tuple:
    """Which of several names at one address to show: fewest leading
    underscores (the public ``getpid``, a weak alias, over the global
    ``__getpid``; ``malloc`` over ``__libc_malloc``), then global before weak
    before local, then shorter."""
    brank = 0 if bind == STB_GLOBAL else 1 if bind == STB_WEAK else 2
    return (len(name) - len(name.lstrip(b"_")), brank, len(name), name)


def read_symbols(data, info: ElfFile, section: Section) -> List[Tuple[int, int, int, bytes, int]]:
    """Function symbols of one SYMTAB/DYNSYM section:
    (value, size, bind, name, section index) for each, unsorted."""
    if section.type == SHT_NOBITS or section.size == 0:
        return []
    if not 0 <= section.link < len(info.sections):
        raise ElfError(f"{section.name}: bad string table link")
    strsec = info.sections[section.link]
    if strsec.type == SHT_NOBITS:
        return []
    strtab = bytes(_slice(data, strsec.offset, strsec.size))
    if info.is64:
        fmt, entsize = info.endian + "IBBHQQ", 24
    else:
        fmt, entsize = info.endian + "IIIBBH", 16
    if section.entsize and section.entsize != entsize:
        raise ElfError(f"{section.name}: unexpected entry size {section.entsize}")
    count = section.size // entsize
    raw = _slice(data, section.offset, count * entsize)
    exec_sections = {i for i, s in enumerate(info.sections) if s.flags & SHF_EXECINSTR}
    out = []
    find = strtab.find
    nstr = len(strtab)
    for ent in struct.iter_unpack(fmt, raw):
        if info.is64:
            st_name, st_info, _other, shndx, value, size = ent
        else:
            st_name, value, size, st_info, _other, shndx = ent
        stype = st_info & 0xF
        if stype == STT_FUNC or stype == STT_GNU_IFUNC:
            if shndx == SHN_UNDEF or value == 0:
                continue
        elif stype == STT_NOTYPE:
            # Hand-written assembly often leaves the type out; keep such a
            # symbol only if it labels code.
            if shndx not in exec_sections or value == 0:
                continue
        else:
            continue
        if st_name == 0 or st_name >= nstr:
            continue
        end = find(b"\0", st_name)
        name = strtab[st_name:end if end >= 0 else nstr]
        if not name or name[:1] == b"$":
            continue
        out.append((value, size, st_info >> 4, name, shndx))
    return out


def build_table(symbols: Sequence[Tuple[int, int, int, bytes, int]], info: ElfFile) -> SymbolTable:
    """Sort, pick one name per address, compute ends."""
    best: Dict[int, Tuple[tuple, int, bytes, int]] = {}
    for value, size, bind, name, shndx in symbols:
        rank = _name_rank(bind, name)
        cur = best.get(value)
        if cur is None:
            best[value] = (rank, size, name, shndx)
        else:
            # Keep the best name but the largest size any alias declares.
            if rank < cur[0]:
                best[value] = (rank, max(size, cur[1]), name, shndx)
            elif size > cur[1]:
                best[value] = (cur[0], size, cur[2], cur[3])
    starts_l = sorted(best)
    starts, ends, offs = array("Q"), array("Q"), array("I")
    parts: List[bytes] = []
    pos = 0
    nsec = len(info.sections)
    for i, start in enumerate(starts_l):
        _rank, size, name, shndx = best[start]
        if size:
            end = start + size
        else:
            end = starts_l[i + 1] if i + 1 < len(starts_l) else start + 1
            if shndx < nsec:
                s = info.sections[shndx]
                if s.addr <= start < s.addr + s.size:
                    end = min(end, s.addr + s.size) if i + 1 < len(starts_l) else s.addr + s.size
        starts.append(start)
        ends.append(end)
        offs.append(pos)
        parts.append(name)
        pos += len(name)
    offs.append(pos)
    return SymbolTable(starts, ends, offs, b"".join(parts))


def symbols_of(data, info: ElfFile, kinds: Sequence[int]) -> List[Tuple[int, int, int, bytes, int]]:
    out = []
    for s in info.sections:
        if s.type in kinds:
            out.extend(read_symbols(data, info, s))
    return out


# -- a whole module -------------------------------------------------------------

@dataclass
class ModuleSymbols:
    """What resolution needs from one file: segments, symbols, where DWARF is."""

    path: str
    build_id: str
    loads: List[Tuple[int, int, int, int]]
    table: SymbolTable
    source: str                      # ".symtab", ".dynsym", "debug:.symtab+.dynsym", "none"
    dwarf_path: str = ""             # file holding .debug_info/.debug_line, if any
    debug_file: str = ""
    debug_candidates: List[str] = field(default_factory=list)

    def vaddr(self, file_offset: int) -> Optional[int]:
        """ELF virtual address of ``file_offset`` through the PT_LOAD headers."""
        for p_offset, p_vaddr, p_filesz, p_memsz in self.loads:
            if p_offset <= file_offset < p_offset + max(p_filesz, 1):
                return file_offset - p_offset + p_vaddr
        return None


def open_bytes(path: str):
    """Read-only mmap of ``path`` (bytes for empty or unmappable files);
    ``OSError`` for anything but a regular file (never waits on a FIFO)."""
    from ..files import open_regular
    with os.fdopen(open_regular(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return b""
        try:
            return mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            return f.read()


def debug_candidates(path: str, build_id: str, link: Optional[Tuple[str, int]],
                     debug_dirs: Sequence[str]) -> List[Tuple[str, bool]]:
    """Where gdb would look for ``path``'s separate debug file, in order, as
    (candidate, by_link): ``by_link`` is True for a ``.gnu_debuglink``
    location (found by name, so its CRC has to be checked), False for a
    build-id one.  A path reachable both ways keeps its first (build-id) kind."""
    out: Dict[str, bool] = {}
    if len(build_id) > 2:
        for d in debug_dirs:
            out.setdefault(os.path.join(d, ".build-id", build_id[:2], build_id[2:] + ".debug"), False)
    if link:
        name = link[0]
        here = os.path.dirname(path)
        out.setdefault(os.path.join(here, name), True)
        out.setdefault(os.path.join(here, ".debug", name), True)
        for d in debug_dirs:
            out.setdefault(os.path.join(d, here.lstrip("/"), name), True)
    return [(p, by_link) for p, by_link in out.items() if p != path]


def _load_debug_file(cand: str, build_id: str, link: Optional[Tuple[str, int]], by_link: bool):
    data = open_bytes(cand)
    try:
        info = parse(data)
        if build_id and info.build_id and info.build_id != build_id:
            return None
        if by_link and not (build_id and info.build_id) and link:
            if zlib.crc32(data) & 0xFFFFFFFF != link[1]:
                return None
        return data, info
    except ElfError:
        if isinstance(data, mmap.mmap):
            data.close()
        return None


def load_module(path: str, *, debug_dirs: Sequence[str] = DEFAULT_DEBUG_DIRS,
                data=None) -> ModuleSymbols:
    """Parse ``path`` (or the image in ``data``) into a :class:`ModuleSymbols`.

    Symbols: the file's own ``.symtab`` if it has one; else the ``.symtab`` of
    its separate debug file (build-id, then ``.gnu_debuglink``) merged with
    its own ``.dynsym``; else ``.dynsym`` alone.  (A distribution library
    always has ``.dynsym``, so the debug file has to be tried before settling
    for it, or static functions would never get names.)  Raises
    :class:`ElfError` for anything unreadable.
    """
    own = data
    try:
        if own is None:
            try:
                own = open_bytes(path)
            except OSError as err:
                raise ElfError(f"cannot read: {err.strerror or err}") from None
        try:
            info = parse(own)
            if not info.loads:
                raise ElfError("no loadable segments")
            link = debuglink(own, info)
            cands = debug_candidates(path, info.build_id, link, debug_dirs) if path else []
            has_dwarf = info.has_section_data(".debug_info") and info.has_section_data(".debug_line")
            dwarf_path = path if has_dwarf else ""
            debug_file = ""
            if info.section(".symtab") is not None and info.has_section_data(".symtab"):
                syms = symbols_of(own, info, (SHT_SYMTAB,))
                source = ".symtab"
                table_info = info
            else:
                syms, source, table_info = [], "", info
                for cand, by_link in cands:
                    if not os.path.isfile(cand):
                        continue
                    try:
                        loaded = _load_debug_file(cand, info.build_id, link, by_link)
                    except OSError:
                        loaded = None
                    if not loaded:
                        continue
                    ddata, dinfo = loaded
                    try:
                        dsyms = symbols_of(ddata, dinfo, (SHT_SYMTAB,))
                        if dsyms:
                            syms, source, table_info, debug_file = dsyms, "debug:.symtab", dinfo, cand
                        if not dwarf_path and dinfo.has_section_data(".debug_info") \
                                and dinfo.has_section_data(".debug_line"):
                            dwarf_path = cand
                    except ElfError:
                        pass
                    finally:
                        if isinstance(ddata, mmap.mmap):
                            ddata.close()
                    if syms:
                        break
                dyn = symbols_of(own, info, (SHT_DYNSYM,))
                if dyn:
                    syms = syms + dyn
                    source = source + "+.dynsym" if source else ".dynsym"
                source = source or "none"
            table = build_table(syms, table_info)
            return ModuleSymbols(path, info.build_id, info.loads, table, source,
                                 dwarf_path, debug_file, [c for c, _ in cands])
        except (struct.error, IndexError, ValueError, OverflowError, MemoryError) as err:
            raise ElfError(f"corrupt ELF ({type(err).__name__}: {err})") from None
    finally:
        if data is None and isinstance(own, mmap.mmap):
            own.close()
