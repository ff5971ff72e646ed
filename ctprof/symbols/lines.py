"""Source file/line and inlined functions from DWARF, via pyelftools.

Opt-in (``--lines``): only compilation units that contain a looked-up address
are ever decoded.  Per CU, built on first use and kept: the line table as
sorted address rows (``bisect``), the file name table, and the address ranges
of its functions.  The CU holding an address comes from ``.debug_aranges``
when present, else from the CUs' own ``DW_AT_low_pc``/``high_pc``/``ranges``.

Every failure inside pyelftools (corrupt or unsupported DWARF) makes a lookup
return None; source lines are a bonus, never a reason to lose a frame.
"""
from __future__ import annotations

import bisect
import os
from typing import Dict, List, Optional, Tuple

#: One level of a resolved address, outermost first: (linkage name or None,
#: plain DWARF name or None, file, line).  The first level is the real
#: (out-of-line) function, every later one an inlined call inside it.
Level = Tuple[Optional[str], Optional[str], Optional[str], Optional[int]]

_CONTAINERS = {"DW_TAG_namespace", "DW_TAG_class_type", "DW_TAG_structure_type",
               "DW_TAG_union_type", "DW_TAG_module"}


class _CU:
    def __init__(self, cu) -> None:
        self.cu = cu
        self.files: Optional[List[str]] = None
        self.addrs: Optional[List[int]] = None
        self.rows: List[Tuple[int, int, bool]] = []
        self.subs: Optional[List[Tuple[int, int, object]]] = None
        self.sub_starts: List[int] = []


def _attr_int(die, name: str) -> Optional[int]:
    a = die.attributes.get(name)
    if a is None or not isinstance(a.value, int):
        return None
    return a.value


class LineInfo:
    """DWARF of one file.  ``lookup(vaddr)`` -> list of :data:`Level` or None."""

    def __init__(self, path: str) -> None:
        from elftools.elf.elffile import ELFFile
        from ..files import open_regular
        self._fh = os.fdopen(open_regular(path), "rb")  # a regular file, never a FIFO
        try:
            self._elf = ELFFile(self._fh)
            self._dwarf = self._elf.get_dwarf_info(relocate_dwarf_sections=False)
        except Exception:
            self._fh.close()
            raise
        self._cus: Dict[int, _CU] = {}
        self._ranges: Optional[List[Tuple[int, int, int]]] = None
        self._range_starts: List[int] = []

    def close(self) -> None:
        self._fh.close()

    # -- which CU -------------------------------------------------------------
    def _die_ranges(self, die, cu) -> List[Tuple[int, int]]:
        attrs = die.attributes
        low = _attr_int(die, "DW_AT_low_pc")
        if low is not None and "DW_AT_high_pc" in attrs:
            high_attr = attrs["DW_AT_high_pc"]
            high = high_attr.value
            if high_attr.form != "DW_FORM_addr":
                high = low + high          # DWARF 4+: high_pc is a length
            return [(low, high)] if high > low else []
        if "DW_AT_ranges" in attrs:
            rl = self._dwarf.range_lists()
            if rl is None:
                return []
            entries = rl.get_range_list_at_offset(attrs["DW_AT_ranges"].value, cu=cu)
            top = cu.get_top_DIE()
            base = _attr_int(top, "DW_AT_low_pc") or 0
            out = []
            for e in entries:
                if hasattr(e, "base_address"):
                    base = e.base_address
                elif e.end_offset > e.begin_offset:
                    if e.is_absolute:
                        out.append((e.begin_offset, e.end_offset))
                    else:
                        out.append((base + e.begin_offset, base + e.end_offset))
            return out
        if low is not None:
            return [(low, low + 1)]
        return []

    def _build_ranges(self) -> None:
        ranges: List[Tuple[int, int, int]] = []
        aranges = None
        try:
            aranges = self._dwarf.get_aranges()
        except Exception:
            aranges = None
        covered = set()
        if aranges is not None:
            for e in aranges.entries:
                if e.length:
                    ranges.append((e.begin_addr, e.begin_addr + e.length, e.info_offset))
                    covered.add(e.info_offset)
        for cu in self._dwarf.iter_CUs():
            if cu.cu_offset in covered:
                continue
            try:
                for lo, hi in self._die_ranges(cu.get_top_DIE(), cu):
                    ranges.append((lo, hi, cu.cu_offset))
            except Exception:
                continue
        ranges.sort()
        self._ranges = ranges
        self._range_starts = [r[0] for r in ranges]

    def _cu_for(self, addr: int) -> Optional[_CU]:
        if self._ranges is None:
            self._build_ranges()
        i = bisect.bisect_right(self._range_starts, addr) - 1
        # Ranges of different CUs do not overlap in sane DWARF, but allow a
        # few steps back in case a large range encloses smaller ones.
        for j in range(i, max(i - 4, -1), -1):
            lo, hi, off = self._ranges[j]
            if lo <= addr < hi:
                c = self._cus.get(off)
                if c is None:
                    c = self._cus[off] = _CU(self._dwarf.get_CU_at(off))
                return c
        return None

    # -- per CU tables ----------------------------------------------------------
    def _lines(self, c: _CU) -> None:
        lp = self._dwarf.line_program_for_CU(c.cu)
        files: List[str] = []
        rows: List[Tuple[int, int, int, bool]] = []
        if lp is not None:
            version = lp.header.version
            comp_dir = ""
            top = c.cu.get_top_DIE()
            if "DW_AT_comp_dir" in top.attributes:
                comp_dir = _text(top.attributes["DW_AT_comp_dir"].value)
            dirs = [_text(d) for d in lp.header.include_directory]
            if version < 5:
                dirs = [comp_dir] + dirs   # DWARF 2-4: directory 0 is the CU's own
            base = dirs[0] if dirs else comp_dir
            for fe in lp.header.file_entry:
                name = _text(fe.name)
                idx = fe.dir_index
                d = dirs[idx] if 0 <= idx < len(dirs) else ""
                # Relative directories are relative to directory 0 (the
                # compilation directory), which itself may be relative when
                # built with -fdebug-prefix-map.
                if idx > 0 and d and not os.path.isabs(d) and base:
                    d = os.path.join(base, d)
                files.append(os.path.normpath(os.path.join(d, name)) if d else name)
            if version < 5:
                files = [""] + files       # DWARF 2-4 file numbers start at 1
            for entry in lp.get_entries():
                st = entry.state
                if st is not None:
                    rows.append((st.address, 0 if st.end_sequence else 1, st.file, st.line))
        rows.sort(key=lambda r: (r[0], r[1]))
        c.files = files
        c.addrs = [r[0] for r in rows]
        c.rows = [(f, ln, es == 0) for _a, es, f, ln in rows]

    def _subprograms(self, c: _CU) -> None:
        subs: List[Tuple[int, int, object]] = []
        stack = [c.cu.get_top_DIE()]
        while stack:
            die = stack.pop()
            for child in die.iter_children():
                tag = child.tag
                if tag == "DW_TAG_subprogram":
                    for lo, hi in self._die_ranges(child, c.cu):
                        subs.append((lo, hi, child))
                elif tag in _CONTAINERS:
                    stack.append(child)
        subs.sort(key=lambda s: (s[0], s[1]))
        c.subs = subs
        c.sub_starts = [s[0] for s in subs]

    def _file(self, c: _CU, index: Optional[int]) -> Optional[str]:
        if index is None or c.files is None or not 0 <= index < len(c.files):
            return None
        return c.files[index] or None

    def _line_at(self, c: _CU, addr: int) -> Tuple[Optional[str], Optional[int]]:
        if c.addrs is None:
            self._lines(c)
        i = bisect.bisect_right(c.addrs, addr) - 1
        if i < 0:
            return None, None
        f, ln, end = c.rows[i]
        if end or not ln:
            return None, None
        return self._file(c, f), ln

    def _inline_chain(self, c: _CU, addr: int) -> List[object]:
        if c.subs is None:
            self._subprograms(c)
        i = bisect.bisect_right(c.sub_starts, addr) - 1
        sub = None
        for j in range(i, max(i - 8, -1), -1):
            lo, hi, die = c.subs[j]
            if lo <= addr < hi:
                sub = die
                break
        if sub is None:
            return []
        chain = [sub]
        die = sub
        for _depth in range(64):
            nxt = None
            for child in die.iter_children():
                tag = child.tag
                if tag == "DW_TAG_inlined_subroutine":
                    if any(lo <= addr < hi for lo, hi in self._die_ranges(child, c.cu)):
                        nxt = child
                        chain.append(child)
                        break
                elif tag == "DW_TAG_lexical_block":
                    rs = self._die_ranges(child, c.cu)
                    if not rs or any(lo <= addr < hi for lo, hi in rs):
                        if child.has_children and self._contains_inline(child, addr, c):
                            nxt = child
                            break
            if nxt is None:
                break
            die = nxt
        return chain

    def _contains_inline(self, die, addr: int, c: _CU) -> bool:
        for child in die.iter_children():
            if child.tag == "DW_TAG_inlined_subroutine":
                if any(lo <= addr < hi for lo, hi in self._die_ranges(child, c.cu)):
                    return True
            elif child.tag == "DW_TAG_lexical_block" and child.has_children:
                if self._contains_inline(child, addr, c):
                    return True
        return False

    # -- public -------------------------------------------------------------------
    def lookup(self, vaddr: int) -> Optional[List[Level]]:
        """Levels for ``vaddr``, outermost first, or None if DWARF has nothing."""
        try:
            c = self._cu_for(vaddr)
            if c is None:
                return None
            file, line = self._line_at(c, vaddr)
            chain = self._inline_chain(c, vaddr)
            if not chain:
                return [(None, None, file, line)] if line else None
            levels: List[Level] = []
            for k, die in enumerate(chain):
                link, name = _die_names(die)
                if k + 1 < len(chain):
                    inner = chain[k + 1]
                    f = self._file(c, _attr_int(inner, "DW_AT_call_file"))
                    ln = _attr_int(inner, "DW_AT_call_line")
                else:
                    f, ln = file, line
                levels.append((link, name, f, ln))
            return levels
        except Exception:
            return None


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _die_names(die) -> Tuple[Optional[str], Optional[str]]:
    """(linkage name, plain name) of a subprogram or inlined call, following
    DW_AT_abstract_origin and DW_AT_specification."""
    link = name = None
    for _ in range(8):
        attrs = die.attributes
        if link is None:
            for a in ("DW_AT_linkage_name", "DW_AT_MIPS_linkage_name"):
                if a in attrs:
                    link = _text(attrs[a].value)
                    break
        if name is None and "DW_AT_name" in attrs:
            name = _text(attrs["DW_AT_name"].value)
        if link is not None:
            break
        nxt = None
        for a in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if a in attrs:
                nxt = die.get_DIE_from_attribute(a)
                break
        if nxt is None:
            break
        die = nxt
    return link, name
