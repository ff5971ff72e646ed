"""Offline stack unwinding from ``.eh_frame`` CFI (x86-64).

``ctprof attach`` gets, for every sample, the interrupted thread's registers
and a copy of the top of its user stack from the kernel (perf_event
``PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER``).  This module turns that
into a call chain, the way libgcc's unwinder would have done inside the
process, but in the controller:

* :class:`CfiTable` finds the FDE of a pc through ``.eh_frame_hdr``'s sorted
  search table (or a scan of ``.eh_frame`` when there is none), parses only
  that FDE and its CIE, and runs the CFA program up to the pc.  The resulting
  row (CFA rule, register rules) is memoised per pc, so a hot loop costs one
  dictionary lookup per frame after the first sample.
* :class:`Unwinder` walks a sample: CFA from the row, the return address and
  callee-saved registers from the copied stack, next frame; where a pc has no
  CFI (JIT code, hand-written assembly) it tries the frame-pointer chain.

The CFI reader is our own rather than pyelftools' ``EH_CFI_entries``: that
decodes a whole library eagerly (0.4 s for libc) and, in pyelftools 0.33,
raises on some opcodes glibc's CFI uses.  Only the instructions and DWARF
expression operators that compilers emit for CFI are implemented.
"""
from __future__ import annotations

import bisect
import mmap
import os
import struct
from array import array
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .symbols import elf as _elf
from .symbols.maps import Mapping, MapTable

# DWARF register numbers on x86-64.
RSP, RBP, RA = 7, 6, 16
#: rbx, rbp, r12-r15 (DWARF numbers): preserved across calls, so a caller's
#: values of them are recovered exactly at each frame.
CALLEE_SAVED = (3, 6, 12, 13, 14, 15)
_U8 = struct.Struct("<Q")

# Register rules.
UNDEF, SAME, OFFSET, VAL_OFFSET, REGISTER, EXPR, VAL_EXPR = range(7)


class CfiError(Exception):
    pass


def _uleb(data, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def _sleb(data, pos: int) -> Tuple[int, int]:
    result, end = _uleb(data, pos)
    if data[end - 1] & 0x40:                 # sign bit of the last byte
        result -= 1 << (7 * (end - pos))
    return result, end


_FIXED = {0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i", 0x0C: "<q", 0x00: "<Q"}


def _read_encoded(data, pos: int, enc: int, pos_vaddr: int, datarel: int = 0) -> Tuple[int, int]:
    """Read a DW_EH_PE-encoded pointer at ``data[pos]`` (whose virtual
    address is ``pos_vaddr``).  Returns (value, new pos)."""
    if enc == 0xFF:
        return 0, pos
    fmt = enc & 0x0F
    if fmt == 0x01:
        value, end = _uleb(data, pos)
    elif fmt == 0x09:
        value, end = _sleb(data, pos)
    else:
        code = _FIXED.get(fmt)
        if code is None:
            raise CfiError(f"pointer encoding {enc:#x}")
        value = struct.unpack_from(code, data, pos)[0]
        end = pos + struct.calcsize(code)
    app = enc & 0x70
    if app == 0x10:
        value += pos_vaddr
    elif app == 0x30:
        value += datarel
    elif app not in (0x00,):
        raise CfiError(f"pointer application {enc:#x}")
    return value & 0xFFFFFFFFFFFFFFFF, end


class Cie:
    __slots__ = ("code_align", "data_align", "ra_reg", "fde_enc", "aug_z", "signal", "initial", "initial_rules")

    def __init__(self) -> None:
        self.code_align = 1
        self.data_align = -8
        self.ra_reg = RA
        self.fde_enc = 0
        self.aug_z = False
        self.signal = False
        self.initial = b""
        self.initial_rules = None


class Row:
    """The unwind rule at one pc: CFA = reg + offset (or a DWARF expression),
    and how to recover each register of the caller."""

    __slots__ = ("cfa_reg", "cfa_off", "cfa_expr", "rules", "ra_reg", "signal")

    def __init__(self, cfa_reg: int, cfa_off: int, cfa_expr: Optional[bytes],
                 rules: Dict[int, Tuple[int, object]], ra_reg: int, signal: bool) -> None:
        self.cfa_reg = cfa_reg
        self.cfa_off = cfa_off
        self.cfa_expr = cfa_expr
        self.rules = rules
        self.ra_reg = ra_reg
        self.signal = signal


class CfiTable:
    """The ``.eh_frame`` unwind table of one ELF image (file or vdso bytes)."""

    def __init__(self, data, info: "_elf.ElfFile") -> None:
        self.data = data
        self.info = info
        self.eh = info.section(".eh_frame")
        if self.eh is None or self.eh.size == 0:
            raise CfiError("no .eh_frame")
        # Sorted FDE start addresses and the FDEs' file offsets, each less
        # a bias: .eh_frame_hdr's table is used as it is stored (offsets
        # from the table), not rebuilt entry by entry in Python (13 ms for
        # cc1plus's 49,000 entries, paid again after the run by symbols).
        self.starts = array("q")
        self.fdes = array("q")
        self.start_bias = self.fde_bias = 0
        self._cies: Dict[int, Cie] = {}
        self._fde_cache: Dict[int, Optional[tuple]] = {}
        self._rows: Dict[int, Optional[Row]] = {}
        hdr = info.section(".eh_frame_hdr")
        if hdr is None or not self._read_hdr(hdr):
            self._scan()

    # -- finding FDEs -----------------------------------------------------------
    def _read_hdr(self, hdr) -> bool:
        d = self.data
        off = hdr.offset
        if d[off] != 1:
            return False
        ptr_enc, count_enc, table_enc = d[off + 1], d[off + 2], d[off + 3]
        pos = off + 4
        _, pos = _read_encoded(d, pos, ptr_enc, hdr.addr + (pos - off), hdr.addr)
        count, pos = _read_encoded(d, pos, count_enc, hdr.addr + (pos - off), hdr.addr)
        if table_enc != 0x3B or count <= 0:   # datarel | sdata4: what every linker writes
            return False
        raw = array("i")
        raw.frombytes(bytes(d[pos:pos + 8 * count]))
        base = hdr.addr
        eh_addr, eh_off = self.eh.addr, self.eh.offset
        self.starts, self.start_bias = raw[0::2], base
        self.fdes, self.fde_bias = raw[1::2], base - eh_addr + eh_off
        return True

    def _scan(self) -> None:
        """No search table: walk .eh_frame once and sort its FDEs."""
        d = self.data
        pos, end = self.eh.offset, self.eh.offset + self.eh.size
        found = []
        while pos + 4 <= end:
            length = struct.unpack_from("<I", d, pos)[0]
            if length == 0:
                break
            hdr_len = 4
            if length == 0xFFFFFFFF:
                length = struct.unpack_from("<Q", d, pos + 4)[0]
                hdr_len = 12
            body = pos + hdr_len
            cie_id = struct.unpack_from("<I", d, body)[0]
            if cie_id != 0:
                try:
                    fde = self._fde(pos)
                    if fde:
                        found.append((fde[0], pos))
                except (CfiError, IndexError, struct.error):
                    pass
            pos = body + length
        found.sort()
        self.starts = array("q", (s for s, _ in found))
        self.fdes = array("q", (p for _, p in found))

    def _vaddr_of(self, file_off: int) -> int:
        return file_off - self.eh.offset + self.eh.addr

    def _cie(self, off: int) -> Cie:
        cie = self._cies.get(off)
        if cie is not None:
            return cie
        d = self.data
        length = struct.unpack_from("<I", d, off)[0]
        pos = off + 4
        if length == 0xFFFFFFFF:
            length = struct.unpack_from("<Q", d, pos)[0]
            pos += 8
        end = pos + length
        pos += 4  # CIE id
        version = d[pos]
        pos += 1
        aug_end = bytes(d[pos:pos + 256]).index(b"\0")
        aug = bytes(d[pos:pos + aug_end]).decode("latin-1")
        pos += aug_end + 1
        cie = Cie()
        if "eh" in aug:
            pos += 8
        if version >= 4:
            pos += 2
        cie.code_align, pos = _uleb(d, pos)
        cie.data_align, pos = _sleb(d, pos)
        if version == 1:
            cie.ra_reg = d[pos]
            pos += 1
        else:
            cie.ra_reg, pos = _uleb(d, pos)
        if aug.startswith("z"):
            cie.aug_z = True
            aug_len, pos = _uleb(d, pos)
            aug_data_end = pos + aug_len
            for ch in aug[1:]:
                if ch == "R":
                    cie.fde_enc = d[pos]
                    pos += 1
                elif ch == "L":
                    pos += 1
                elif ch == "P":
                    enc = d[pos]
                    pos += 1
                    _, pos = _read_encoded(d, pos, enc & 0x7F, self._vaddr_of(pos))
                elif ch == "S":
                    cie.signal = True
            pos = aug_data_end
        cie.initial = bytes(d[pos:end])
        self._cies[off] = cie
        return cie

    def _fde(self, off: int) -> Optional[tuple]:
        """(pc_begin, pc_end, cie, instructions) of the FDE at file offset ``off``."""
        if off in self._fde_cache:
            return self._fde_cache[off]
        d = self.data
        length = struct.unpack_from("<I", d, off)[0]
        pos = off + 4
        if length == 0xFFFFFFFF:
            length = struct.unpack_from("<Q", d, pos)[0]
            pos += 8
        end = pos + length
        cie_ptr = struct.unpack_from("<I", d, pos)[0]
        if cie_ptr == 0:
            self._fde_cache[off] = None
            return None
        cie = self._cie(pos - cie_ptr)
        pos += 4
        begin, pos = _read_encoded(d, pos, cie.fde_enc, self._vaddr_of(pos))
        size, pos = _read_encoded(d, pos, cie.fde_enc & 0x0F, 0)
        if cie.aug_z:
            aug_len, pos = _uleb(d, pos)
            pos += aug_len
        out = (begin, begin + size, cie, bytes(d[pos:end]))
        self._fde_cache[off] = out
        return out

    def function_range(self, vaddr: int) -> Optional[Tuple[int, int]]:
        """[start, end) of the FDE covering ``vaddr``: in a stripped binary,
        the bounds of the function holding it (symbols use this to group
        unnamed addresses by function)."""
        i = bisect.bisect_right(self.starts, vaddr - self.start_bias) - 1
        if i < 0:
            return None
        try:
            fde = self._fde(self.fdes[i] + self.fde_bias)
        except (CfiError, IndexError, struct.error, ValueError):
            return None
        return (fde[0], fde[1]) if fde and fde[0] <= vaddr < fde[1] else None

    # -- rows ---------------------------------------------------------------------
    def row(self, vaddr: int) -> Optional[Row]:
        """The unwind row in effect at ``vaddr`` (None: no CFI covers it)."""
        try:
            return self._rows[vaddr]
        except KeyError:
            pass
        row = None
        i = bisect.bisect_right(self.starts, vaddr - self.start_bias) - 1
        if i >= 0:
            try:
                fde = self._fde(self.fdes[i] + self.fde_bias)
                if fde and fde[0] <= vaddr < fde[1]:
                    row = self._execute(fde, vaddr)
            except (CfiError, IndexError, struct.error, ValueError):
                row = None
        self._rows[vaddr] = row
        return row

    def _execute(self, fde: tuple, target: int) -> Row:
        begin, _end, cie, program = fde
        state = [RSP, 8, None, {}]          # cfa_reg, cfa_off, cfa_expr, rules
        if cie.initial_rules is None:
            self._run(cie, cie.initial, state, None, 0, 1 << 64)
            cie.initial_rules = (state[0], state[1], state[2], dict(state[3]))
        cfa_reg, cfa_off, cfa_expr, rules = cie.initial_rules
        state = [cfa_reg, cfa_off, cfa_expr, dict(rules)]
        self._run(cie, program, state, rules, begin, target)
        return Row(state[0], state[1], state[2], state[3], cie.ra_reg, cie.signal)

    def _run(self, cie: Cie, prog: bytes, state: list, initial: Optional[dict], loc: int, target: int) -> None:
        pos, n = 0, len(prog)
        da, ca = cie.data_align, cie.code_align
        stack: List[tuple] = []
        rules = state[3]
        while pos < n:
            op = prog[pos]
            pos += 1
            hi = op & 0xC0
            if hi == 0x40:
                loc += (op & 0x3F) * ca
                if loc > target:
                    return
                continue
            if hi == 0x80:
                v, pos = _uleb(prog, pos)
                rules[op & 0x3F] = (OFFSET, v * da)
                continue
            if hi == 0xC0:
                reg = op & 0x3F
                if initial is not None and reg in initial:
                    rules[reg] = initial[reg]
                else:
                    rules.pop(reg, None)
                continue
            if op == 0x00:
                continue
            if op == 0x01:
                loc, pos = _read_encoded(prog, pos, cie.fde_enc, 0)
            elif op in (0x02, 0x03, 0x04):
                size = {0x02: 1, 0x03: 2, 0x04: 4}[op]
                delta = int.from_bytes(prog[pos:pos + size], "little")
                pos += size
                loc += delta * ca
            elif op in (0x05, 0x14):
                reg, pos = _uleb(prog, pos)
                v, pos = _uleb(prog, pos)
                rules[reg] = (OFFSET if op == 0x05 else VAL_OFFSET, v * da)
                continue
            elif op in (0x11, 0x15):
                reg, pos = _uleb(prog, pos)
                v, pos = _sleb(prog, pos)
                rules[reg] = (OFFSET if op == 0x11 else VAL_OFFSET, v * da)
                continue
            elif op == 0x2F:
                reg, pos = _uleb(prog, pos)
                v, pos = _uleb(prog, pos)
                rules[reg] = (OFFSET, -v * da)
                continue
            elif op == 0x06:
                reg, pos = _uleb(prog, pos)
                if initial is not None and reg in initial:
                    rules[reg] = initial[reg]
                else:
                    rules.pop(reg, None)
                continue
            elif op == 0x07:
                reg, pos = _uleb(prog, pos)
                rules[reg] = (UNDEF, 0)
                continue
            elif op == 0x08:
                reg, pos = _uleb(prog, pos)
                rules[reg] = (SAME, 0)
                continue
            elif op == 0x09:
                reg, pos = _uleb(prog, pos)
                r2, pos = _uleb(prog, pos)
                rules[reg] = (REGISTER, r2)
                continue
            elif op == 0x0A:
                stack.append((state[0], state[1], state[2], dict(rules)))
                continue
            elif op == 0x0B:
                if stack:
                    state[0], state[1], state[2], saved = stack.pop()
                    rules.clear()
                    rules.update(saved)
                continue
            elif op == 0x0C:
                state[0], pos = _uleb(prog, pos)
                state[1], pos = _uleb(prog, pos)
                state[2] = None
                continue
            elif op == 0x12:
                state[0], pos = _uleb(prog, pos)
                v, pos = _sleb(prog, pos)
                state[1] = v * da
                state[2] = None
                continue
            elif op == 0x0D:
                state[0], pos = _uleb(prog, pos)
                state[2] = None
                continue
            elif op == 0x0E:
                state[1], pos = _uleb(prog, pos)
                continue
            elif op == 0x13:
                v, pos = _sleb(prog, pos)
                state[1] = v * da
                continue
            elif op == 0x0F:
                size, pos = _uleb(prog, pos)
                state[2] = bytes(prog[pos:pos + size])
                pos += size
                continue
            elif op in (0x10, 0x16):
                reg, pos = _uleb(prog, pos)
                size, pos = _uleb(prog, pos)
                rules[reg] = (EXPR if op == 0x10 else VAL_EXPR, bytes(prog[pos:pos + size]))
                pos += size
                continue
            elif op == 0x2E:
                _, pos = _uleb(prog, pos)
                continue
            else:
                raise CfiError(f"CFA opcode {op:#x}")
            if loc > target:
                return


def eval_expr(expr: bytes, regs: Dict[int, int], read: Callable[[int], Optional[int]],
              push: Optional[int] = None) -> Optional[int]:
    """Evaluate the DWARF expression operators compilers emit in CFI (PLT
    entries, stack realignment, signal frames).  None when it needs memory
    that is not in the copied stack or an unknown register/operator."""
    st: List[int] = [] if push is None else [push]
    pos, n = 0, len(expr)
    M = 0xFFFFFFFFFFFFFFFF
    while pos < n:
        op = expr[pos]
        pos += 1
        if 0x70 <= op <= 0x8F:                       # bregN
            off, pos = _sleb(expr, pos)
            r = regs.get(op - 0x70)
            if r is None:
                return None
            st.append((r + off) & M)
        elif 0x50 <= op <= 0x6F:                     # regN
            r = regs.get(op - 0x50)
            if r is None:
                return None
            st.append(r)
        elif 0x30 <= op <= 0x4F:                     # litN
            st.append(op - 0x30)
        elif op == 0x92:                             # bregx
            reg, pos = _uleb(expr, pos)
            off, pos = _sleb(expr, pos)
            r = regs.get(reg)
            if r is None:
                return None
            st.append((r + off) & M)
        elif op == 0x06:                             # deref
            v = read(st.pop())
            if v is None:
                return None
            st.append(v)
        elif op in (0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F):
            size = {0x08: 1, 0x09: 1, 0x0A: 2, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8, 0x0F: 8}[op]
            v = int.from_bytes(expr[pos:pos + size], "little", signed=op in (0x09, 0x0B, 0x0D, 0x0F))
            pos += size
            st.append(v & M)
        elif op == 0x10:
            v, pos = _uleb(expr, pos)
            st.append(v)
        elif op == 0x11:
            v, pos = _sleb(expr, pos)
            st.append(v & M)
        elif op == 0x23:                             # plus_uconst
            v, pos = _uleb(expr, pos)
            st.append((st.pop() + v) & M)
        elif op in (0x1A, 0x1C, 0x1E, 0x21, 0x22, 0x24, 0x25, 0x27, 0x29, 0x2A, 0x2B, 0x2C, 0x2D, 0x2E):
            b, a = st.pop(), st.pop()
            if op == 0x1A:
                v = a & b
            elif op == 0x1C:
                v = a - b
            elif op == 0x1E:
                v = a * b
            elif op == 0x21:
                v = a | b
            elif op == 0x22:
                v = a + b
            elif op == 0x24:
                v = a << b
            elif op == 0x25:
                v = a >> b
            elif op == 0x27:
                v = a ^ b
            else:
                sa = a - (1 << 64) if a >> 63 else a
                sb = b - (1 << 64) if b >> 63 else b
                v = int({0x29: sa == sb, 0x2A: sa >= sb, 0x2B: sa > sb, 0x2C: sa <= sb,
                         0x2D: sa < sb, 0x2E: sa != sb}[op])
            st.append(v & M)
        elif op == 0x12:                             # dup
            st.append(st[-1])
        elif op == 0x13:                             # drop
            st.pop()
        elif op == 0x96:                             # nop
            pass
        else:
            return None
    return st[-1] if st else None


class _Module:
    """CFI of one mapped file: bias from runtime address to ELF vaddr."""

    __slots__ = ("table", "bias")

    def __init__(self, table: Optional[CfiTable], bias: int) -> None:
        self.table = table
        self.bias = bias


def _open_image(path: str):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: refused, not waited on
    try:
        st = os.fstat(fd)
        import stat as _stat
        if not _stat.S_ISREG(st.st_mode) or st.st_size == 0:
            raise OSError("not a regular file")
        return mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def load_vaddr(info: "_elf.ElfFile", file_off: int, size: int = 1) -> Optional[int]:
    """ELF virtual address of ``file_off``, the start of a mapping of
    ``size`` bytes.  Where two segments share the page (lld puts the text
    segment at p_vaddr = p_offset + 0x1000, sharing its first page with the
    read-only one), the segment covering most of the mapping is the one
    mapped there."""
    best, best_overlap = None, 0
    for p_offset, p_vaddr, p_filesz, _memsz in info.loads:
        lo, hi = p_offset & ~0xFFF, p_offset + max(p_filesz, 1)
        if lo <= file_off < hi:
            overlap = min(hi, file_off + size) - file_off
            if overlap > best_overlap:
                best, best_overlap = file_off - p_offset + p_vaddr, overlap
    return best


#: At most this much of one frame's stack is handed to ``watched``.
MAX_WATCHED_FRAME = 16384


def _frame_words(stack, stack_base: int, sp: int, cfa: int) -> List[int]:
    """The 8-byte words of the stack copy in [sp, cfa): one frame's slots."""
    lo = max(sp, stack_base) - stack_base
    hi = min(cfa, sp + MAX_WATCHED_FRAME, stack_base + len(stack)) - stack_base
    lo += (-lo) % 8
    if hi <= lo:
        return []
    return list(memoryview(stack)[lo:hi - (hi - lo) % 8].cast("B").cast("Q"))


class Unwinder:
    """Unwind samples of one process from registers and stack copies.

    ``maps`` is the :class:`MapTable` current for the sample; ``root`` is
    where the target's files are seen from (``/proc/PID/root`` so a process
    in another mount namespace still resolves; ``""`` for our own)."""

    def __init__(self, root: str = "", vdso: Optional[bytes] = None, map_files: str = "") -> None:
        self.root = root
        self.map_files = map_files      # /proc/PID/map_files: a deleted file, still mapped
        self.vdso = vdso
        self._mods: Dict[tuple, _Module] = {}
        self._images: Dict[tuple, Optional[CfiTable]] = {}
        self.stats = {"frames": 0, "cfi": 0, "fp": 0, "no_cfi": 0}

    def _table_for(self, m: Mapping) -> Optional[CfiTable]:
        key = (m.path, m.inode, m.dev)
        if key in self._images:
            return self._images[key]
        table = None
        try:
            if m.path == "[vdso]":
                if self.vdso:
                    table = CfiTable(self.vdso, _elf.parse(self.vdso))
            else:
                data = self.image(m)
                if data is not None:
                    table = CfiTable(data, _elf.parse(data))
        except (CfiError, _elf.ElfError, IndexError, struct.error, ValueError):
            table = None
        self._images[key] = table
        return table

    def image(self, m: Mapping):
        """The bytes of the file mapped at ``m`` (an mmap), seen as the
        process sees it, or None."""
        if not m.is_file:
            return None
        by_mapping = f"{self.map_files}/{m.start:x}-{m.end:x}" if self.map_files else None
        for cand in ((self.root + m.path) if self.root and not m.deleted else None, by_mapping, m.path):
            if not cand:
                continue
            try:
                return _open_image(cand)
            except (OSError, ValueError):
                continue
        return None

    def module(self, m: Mapping) -> _Module:
        key = (m.start, m.path, m.offset, m.inode)
        mod = self._mods.get(key)
        if mod is None:
            table = self._table_for(m)
            bias = 0
            if table is not None:
                if m.path == "[vdso]":
                    bias = m.start
                else:
                    va = load_vaddr(table.info, m.offset, m.end - m.start)
                    bias = m.start - va if va is not None else m.start - m.offset
            mod = self._mods[key] = _Module(table, bias)
        return mod

    def unwind(self, maps: MapTable, regs: Dict[int, int], stack, stack_base: int,
               max_depth: int, watch: Sequence[Tuple[int, int]] = (),
               watched: Optional[List[int]] = None) -> Tuple[List[int], bool]:
        """Return addresses leaf first (``ips[0]`` the interrupted pc) and
        whether ``max_depth`` cut the chain.  ``regs`` uses DWARF numbers
        (7 = rsp, 16 = rip); ``stack`` is the bytes copied from ``stack_base``.

        ``watch``: address ranges of a function; the values the innermost
        frame running in one of them held are appended to ``watched``: its
        registers (all of them if it is the interrupted frame, else the
        callee-saved ones the unwinding recovered: the values live across
        its call) and the words of its own stack frame (where it keeps the
        others across a call)."""
        size = len(stack)
        limit = stack_base + size

        def read(addr: int) -> Optional[int]:
            if stack_base <= addr and addr + 8 <= limit:
                return _U8.unpack_from(stack, addr - stack_base)[0]
            return None

        pc = regs.get(RA, 0)
        ips = [pc]
        first = True
        signal = False
        regs = dict(regs)
        stats = self.stats
        while True:
            look = pc if first or signal else pc - 1
            watching = False
            if watch and watched is not None and any(lo <= look < hi for lo, hi in watch):
                watched.extend(regs.values() if first else (regs[r] for r in CALLEE_SAVED if r in regs))
                watch = ()
                watching = True
            m = maps.find(look)
            row = None
            if m is not None:
                mod = self.module(m)
                if mod.table is not None:
                    row = mod.table.row(look - mod.bias)
            sp = regs.get(RSP, 0)
            if row is not None:
                stats["cfi"] += 1
                if row.cfa_expr is not None:
                    cfa = eval_expr(row.cfa_expr, regs, read)
                else:
                    base = regs.get(row.cfa_reg)
                    cfa = None if base is None else (base + row.cfa_off) & 0xFFFFFFFFFFFFFFFF
                if cfa is None:
                    break
                if watching:
                    watched.extend(_frame_words(stack, stack_base, regs.get(RSP, 0), cfa))
                ra_rule = row.rules.get(row.ra_reg)
                if ra_rule is None or ra_rule[0] == UNDEF:
                    break                                    # outermost frame (_start, clone)
                # Registers without a rule (or SAME) keep their values; only
                # the row's rules are applied (a dict copy runs in C).
                new: Dict[int, int] = dict(regs)
                ok = True
                for reg, (kind, arg) in row.rules.items():
                    if kind == SAME:
                        continue
                    if kind == OFFSET:
                        v = read(cfa + arg)
                    elif kind == VAL_OFFSET:
                        v = cfa + arg
                    elif kind == REGISTER:
                        v = regs.get(arg)
                    elif kind == EXPR:
                        a = eval_expr(arg, regs, read, cfa)
                        v = read(a) if a is not None else None
                    elif kind == VAL_EXPR:
                        v = eval_expr(arg, regs, read, cfa)
                    else:                                    # UNDEF: the value is gone
                        new.pop(reg, None)
                        continue
                    if v is None:
                        if reg == row.ra_reg:
                            ok = False
                        new.pop(reg, None)
                    else:
                        new[reg] = v
                if not ok:
                    break
                ret = new.get(row.ra_reg)
                if row.ra_reg != RA and ret is not None:
                    new[RA] = ret
                new[RSP] = cfa
                signal = row.signal
            else:
                # No CFI: the frame-pointer chain, if it points into the copy.
                stats["no_cfi" if first else "fp"] += 1
                fp = regs.get(RBP)
                if fp is None or fp < sp or fp & 7:
                    break
                ret = read(fp + 8)
                saved = read(fp)
                if ret is None or saved is None:
                    break
                new = dict(regs)
                new[RSP] = fp + 16
                new[RBP] = saved
                new[RA] = ret
                signal = False
            ret = new.get(RA)
            if not ret or ret < 4096:
                break
            if new[RSP] <= sp and not signal:
                break                                        # no progress: garbage
            if len(ips) >= max_depth:
                return ips, True
            ips.append(ret)
            regs = new
            pc = ret
            first = False
        stats["frames"] += len(ips)
        return ips, False

