"""Addresses -> frames: the :class:`Resolver`.

For each address: the maps snapshot of its generation (or, if the address is
not mapped there, the process's other snapshots, nearest first) gives the
mapping; the mapping gives (file, file offset); the file's ``PT_LOAD``
headers give the ELF virtual address; the symbol table (cached on disk, see
:mod:`.symcache`) gives the function.  Everything is memoised per unique
address, and per unique (module, virtual address) across processes.
"""
from __future__ import annotations

import ctypes
import os
import stat
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from ..profile import Frame
from . import offcpu
from ..session import Session
from . import demangle as _dm
from . import elf, symcache
from .maps import KERNEL_PSEUDO, Mapping, MapTable
from .perfmap import PerfMap

#: Above every stack whose unwinding stopped at the depth limit.
TRUNCATED = Frame("[truncated]", "", "unknown")

_KERNEL_START = 0xFFFF800000000000   # x86-64 canonical kernel half


def _dev_matches(maps_dev: str, st_dev: int) -> Optional[bool]:
    """Does the maps ``dev`` field ("fe:01", hex major:minor) name ``st_dev``?
    None if it cannot be parsed."""
    try:
        major, minor = (int(x, 16) for x in maps_dev.split(":"))
    except ValueError:
        return None
    return os.major(st_dev) == major and os.minor(st_dev) == minor


_vdso_cache: Dict[str, object] = {}


def _file_of(m: Mapping, pid: int) -> Tuple[Optional[str], str]:
    """A path through which the file mapped at ``m`` can be read now, or
    None and why not.  Its own path first, else as the process sees it
    (``/proc/PID/root``: another mount namespace), else the mapping itself
    (``/proc/PID/map_files``: a deleted or replaced file, while the process
    lives).  Only a regular file with the mapped inode is taken (a device
    or FIFO could block; a path reused by another file gives wrong names)."""
    candidates = [] if m.deleted else [m.path, f"/proc/{pid}/root{m.path}"]
    candidates.append(f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}")
    why = "file deleted since it was mapped" if m.deleted else ""
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError as err:
            if path == m.path:
                why = f"cannot read ({err.strerror or err})"
            continue
        if not stat.S_ISREG(st.st_mode):
            why = why or "not a regular file"
            continue
        if m.inode and st.st_ino != m.inode and _dev_matches(m.dev, st.st_dev):
            why = why or "file replaced since it was mapped (inode changed)"
            continue
        return path, ""
    return None, why or "cannot read"


def _own_vdso() -> Optional[Tuple[int, bytes]]:
    """(size, image) of this process's vdso.  The kernel gives every process
    of one ABI the same vdso image, so ours can name a target's [vdso]
    frames when the sizes agree."""
    if "img" in _vdso_cache:
        return _vdso_cache["img"]  # type: ignore[return-value]
    result = None
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if line.rstrip().endswith("[vdso]"):
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    result = (hi - lo, ctypes.string_at(lo, hi - lo))
                    break
    except (OSError, ValueError):
        result = None
    _vdso_cache["img"] = result
    return result


class _Progress:
    """Progress on stderr once resolution has taken more than
    :attr:`DELAY_S`, only when stderr is a terminal (or ``enabled`` forces it
    on or off)."""

    DELAY_S = 1.0

    def __init__(self, enabled: Optional[bool]) -> None:
        if enabled is None:
            try:
                enabled = sys.stderr.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = bool(enabled)
        self.t0 = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, text_fn) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.t0 < self.DELAY_S or now - self.last < 0.2:
            return
        self.last = now
        self.shown = True
        sys.stderr.write("\rctprof: " + text_fn() + "\033[K")
        sys.stderr.flush()

    def done(self, text: str) -> None:
        if self.shown:
            sys.stderr.write("\rctprof: " + text + "\033[K\n")
            sys.stderr.flush()


class _CachedLines:
    """DWARF lookups of one file, through the on-disk line cache; the file
    is only opened (with pyelftools) for addresses the cache lacks."""

    def __init__(self, path: str, resolver: "Resolver") -> None:
        self.path = path
        self.resolver = resolver
        self.entry = symcache.lines_entry(path) if resolver.use_cache else None
        self.known = symcache.load_lines(self.entry)
        self.info = None
        self.failed = False
        self.dirty = False

    def lookup(self, vaddr: int):
        if vaddr in self.known:
            return self.known[vaddr]
        if self.info is None and not self.failed:
            try:
                from .lines import LineInfo
                self.info = LineInfo(self.path)
            except Exception as err:   # pyelftools raises many kinds; lines are optional
                self.failed = True
                self.resolver.warn("lines:" + self.path,
                                   f"{os.path.basename(self.path)}: no source lines ({err})")
        if self.info is None:
            return None
        levels = self.info.lookup(vaddr)
        self.known[vaddr] = tuple(levels) if levels else None
        self.dirty = True
        return self.known[vaddr]

    def close(self) -> None:
        if self.info is not None:
            self.info.close()
            self.info = None
        if self.dirty:
            symcache.save_lines(self.entry, self.known)
            self.dirty = False


def _looked_up(ip: int, is_return: bool) -> int:
    """The address ``ip`` is named by.  A return address points at the
    instruction after the call.  If the call was the function's last
    instruction (a call to a noreturn function such as abort()), that is
    already the next function, so ip - 1, inside the call instruction, is
    looked up.  The leaf is the interrupted instruction itself, as is."""
    return max(ip - 1, 0) if is_return else ip


class Resolver:
    """Resolve raw addresses of a :class:`~ctprof.session.Session` to frames.

    Reusable by anything holding addresses and maps snapshots (CPU samples,
    allocation stacks, attach)::

        r = Resolver(session)
        frames = r.frames(pid, gen, ips)   # ips leaf first -> frames root first

    ``demangle``: C++/Rust names in human form (else raw symbol names).
    ``lines``: file/line from DWARF and inlined functions as their own frames.
    ``group_functions``: an address no symbol covers (stripped code) is
    named after the start of the function holding it, from the ``.eh_frame``
    FDE ranges every binary keeps for unwinding (``liblzma.so.5+0x15b40``),
    so a stripped function is one frame, not one per instruction; False
    names each address itself (``module+0xADDRESS``).
    ``debug_dirs``: roots searched for separate debug files (build-id and
    ``.gnu_debuglink``); ``()`` disables them.  ``use_cache``: read and write
    the on-disk symbol cache.  Problems with individual modules never raise:
    they are collected, once per module, in :attr:`warnings`.
    """

    def __init__(self, session: Session, *, demangle: bool = True, lines: bool = False,
                 debug_dirs: Sequence[str] = elf.DEFAULT_DEBUG_DIRS, use_cache: bool = True,
                 progress: Optional[bool] = None, group_functions: bool = True) -> None:
        self.session = session
        self.demangle = demangle
        self.lines = lines
        self.group_functions = group_functions
        self._cfi: Dict[tuple, object] = {}     # (path, dev, inode) -> unwinder.CfiTable or None
        self._cfi_data: List[object] = []       # their mmaps, closed by close()
        self.debug_dirs = tuple(debug_dirs)
        self.use_cache = use_cache
        self.progress = _Progress(progress)
        self.warnings: List[str] = []
        self._warned: set = set()
        self._tables: Dict[Tuple[int, int], MapTable] = {}
        self._mains: Dict[Tuple[int, int], Optional[str]] = {}
        self._perfmaps: Dict[int, Optional[PerfMap]] = {}
        self._modules: Dict[tuple, Optional[elf.ModuleSymbols]] = {}
        self._lineinfo: Dict[str, object] = {}
        self._addr_memo: Dict[tuple, Tuple[Frame, ...]] = {}
        self._sym_memo: Dict[tuple, Optional[tuple]] = {}
        self._contexts: Dict[int, tuple] = {}
        self._sym_frames: Dict[tuple, Tuple[Frame, ...]] = {}
        self._context_keep: List[Mapping] = []   # keeps id() keys valid
        self.stats = {"modules": 0, "modules_cached": 0, "addresses": 0}

    # -- bookkeeping ----------------------------------------------------------
    def warn(self, key: str, message: str) -> None:
        """Record ``message`` once per ``key`` (normally the module)."""
        if key not in self._warned:
            self._warned.add(key)
            self.warnings.append(message)

    def close(self) -> None:
        """Release open DWARF files and write new line results to the cache."""
        for li in self._lineinfo.values():
            li.close()
        self._lineinfo.clear()
        self._cfi.clear()
        for data in self._cfi_data:
            if hasattr(data, "close"):
                data.close()
        self._cfi_data.clear()

    def _function_start(self, m: Mapping, vaddr: int) -> Optional[int]:
        """Start of the function holding ``vaddr`` in the file of ``m`` by
        its ``.eh_frame`` FDE (present in stripped files: unwinding needs
        it), or None.  The FDE search table is read once per file; an FDE is
        parsed only when an address needs it."""
        path = m.path
        key = (path, m.dev, m.inode)
        table = self._cfi.get(key, 0)
        if table == 0:
            from ..unwinder import CfiError, CfiTable
            table = None
            try:
                data = elf.open_bytes(path)
                self._cfi_data.append(data)
                table = CfiTable(data, elf.parse(data))
            except (OSError, elf.ElfError, CfiError, IndexError, ValueError) as err:
                if not isinstance(err, CfiError):   # no .eh_frame at all is normal for some files
                    self.warn("cfi:" + path, f"{os.path.basename(path)}: cannot group unnamed code by "
                                             f"function ({err})")
                table = None
            self._cfi[key] = table
        if table is None:
            return None
        found = table.function_range(vaddr)  # type: ignore[attr-defined]
        return found[0] if found else None

    def forget_addresses(self) -> None:
        """Drop the per-address results (for a caller that keeps its own)."""
        self._addr_memo.clear()

    def use_session(self, session: Session) -> None:
        """Resolve the addresses of ``session`` from now on: what was found
        under its processes' maps is dropped, what was read from files is
        kept (symbol tables, line tables, unwind tables)."""
        self.session = session
        self._tables.clear()
        self._mains.clear()
        self._perfmaps.clear()
        self._addr_memo.clear()

    def _table(self, pid: int, gen: int) -> MapTable:
        key = (pid, gen)
        t = self._tables.get(key)
        if t is None:
            proc = self.session.processes.get(pid)
            text = proc.maps[gen] if proc and 0 <= gen < len(proc.maps) else ""
            t = self._tables[key] = MapTable(text)
        return t

    def _main_exe(self, pid: int, gen: int) -> Optional[str]:
        key = (pid, gen)
        if key not in self._mains:
            proc = self.session.processes.get(pid)
            self._mains[key] = self._table(pid, gen).main_executable(proc.exe if proc else "")
        return self._mains[key]

    def _perfmap(self, pid: int) -> Optional[PerfMap]:
        if pid not in self._perfmaps:
            proc = self.session.processes.get(pid)
            pm = PerfMap(proc.perf_map) if proc and proc.perf_map else None
            self._perfmaps[pid] = pm if pm else None
        return self._perfmaps[pid]

    def in_own_file_mapping(self, pid: int, gen: int, ip: int, is_return: bool) -> bool:
        """Does ``ip`` lie in a file mapping of generation ``gen``'s own
        snapshot?  Then every resolution under that snapshot names it
        alike.  (Otherwise :meth:`_find_mapping` falls back to the nearest
        other snapshot, and which is nearest depends on the snapshots there
        are by then; no file at all may be mapped there later.)"""
        proc = self.session.processes.get(pid)
        if proc is None or not 0 <= gen < len(proc.maps):
            return False
        m = self._table(pid, gen).find(_looked_up(ip, is_return))
        return m is not None and m.is_file

    def _find_mapping(self, pid: int, gen: int, addr: int) -> Tuple[Optional[Mapping], int]:
        """The mapping of ``addr`` in generation ``gen``, else in the nearest
        other generation (later first: a library ``dlopen``ed just before a
        sample shows up in the next snapshot).  Returns (mapping, gen used)."""
        proc = self.session.processes.get(pid)
        n = len(proc.maps) if proc else 0
        if n == 0:
            return None, gen
        g = min(max(gen, 0), n - 1)
        m = self._table(pid, g).find(addr)
        if m is not None:
            return m, g
        for d in range(1, n):
            for other in (g + d, g - d):
                if 0 <= other < n:
                    m = self._table(pid, other).find(addr)
                    if m is not None:
                        return m, other
        return None, g

    # -- modules ----------------------------------------------------------------
    def _module(self, m: Mapping, pid: int) -> Optional[elf.ModuleSymbols]:
        key = (m.path, m.dev, m.inode, m.deleted)
        if key in self._modules:
            return self._modules[key]
        mod = None
        name = m.module
        try:
            path, why = _file_of(m, pid)
            if path is None:
                raise elf.ElfError(why)
            mod, cached = symcache.load(path, self.debug_dirs, use_disk=self.use_cache)
            self.stats["modules"] += 1
            self.stats["modules_cached"] += int(cached)
            if len(mod.table) == 0:
                self.warn(m.path, f"{name}: no symbols (stripped); its frames show as {name}+0x...")
        except elf.ElfError as err:
            self.warn(m.path, f"{name}: {err}; its frames show as {name}+0x...")
            mod = None
        except OSError as err:
            self.warn(m.path, f"{name}: cannot read ({err.strerror or err}); its frames show as {name}+0x...")
            mod = None
        self._modules[key] = mod
        return mod

    def _vdso(self, m: Mapping) -> Optional[elf.ModuleSymbols]:
        key = ("[vdso]", m.end - m.start)
        if key in self._modules:
            return self._modules[key]
        mod = None
        own = _own_vdso()
        if own and own[0] == m.end - m.start:
            try:
                mod = elf.load_module("", data=own[1], debug_dirs=())
            except elf.ElfError:
                mod = None
        self._modules[key] = mod
        return mod

    def _line_info(self, path: str) -> "_CachedLines":
        li = self._lineinfo.get(path)
        if li is None:
            li = self._lineinfo[path] = _CachedLines(path, self)
        return li

    def _name(self, raw: str) -> str:
        return _dm.demangle(raw) if self.demangle else raw

    def _symbolize(self, mod: elf.ModuleSymbols, vaddr: int) -> Optional[tuple]:
        """Levels ((name, file, line, inlined), ...) outermost first for
        ``vaddr`` in ``mod``, or None if no symbol covers it."""
        key = (id(mod), vaddr)
        if key in self._sym_memo:
            return self._sym_memo[key]
        hit = mod.table.lookup(vaddr)
        name = self._name(hit[0]) if hit else None
        levels = None
        if self.lines and mod.dwarf_path:
            dl = self._line_info(mod.dwarf_path).lookup(vaddr)
            if dl:
                levels = []
                for k, (link, plain, f, ln) in enumerate(dl):
                    if k == 0 and name is not None:
                        n = name
                    elif link:
                        n = self._name(link)
                    else:
                        n = plain or name or "??"
                    levels.append((n, f, ln, k > 0))
                levels = tuple(levels)
        if levels is None and name is not None:
            levels = ((name, None, None, False),)
        self._sym_memo[key] = levels
        return levels

    # -- addresses ------------------------------------------------------------------
    def resolve(self, pid: int, gen: int, ip: int, is_return: bool) -> Tuple[Frame, ...]:
        """Frames (outermost first; more than one only for inlined calls) for
        one address.  ``is_return``: ``ip`` is a return address."""
        key = (pid, gen, ip, is_return)
        out = self._addr_memo.get(key)
        if out is None:
            out = self._addr_memo[key] = self._resolve(pid, gen, ip, is_return)
            self.stats["addresses"] += 1
        return out

    def _context(self, pid: int, g: int, m: Mapping) -> tuple:
        """(kind, module name, category, ModuleSymbols or None) of a mapping,
        computed once per mapping object."""
        ctx = self._contexts.get(id(m))
        if ctx is not None:
            return ctx
        module = m.module
        if m.path in KERNEL_PSEUDO:
            ctx = ("kernel", module, "kernel", self._vdso(m) if m.path == "[vdso]" else None)
        elif not m.is_file:
            # [heap], [stack], anonymous memory, memfd: no file to read.
            label = module or "[anon]"
            if m.executable:
                self.warn(label, f"{label}: executable memory without symbols "
                                 f"(JIT code without a perf map?); frames show as {label}+0x...")
            ctx = ("memfd" if m.path.startswith("/memfd:") else "anon", label, "unknown", None)
        else:
            category = "program" if m.path == self._main_exe(pid, g) else "library"
            ctx = ("file", module, category, self._module(m, pid))
        self._contexts[id(m)] = ctx
        self._context_keep.append(m)
        return ctx

    def _resolve(self, pid: int, gen: int, ip: int, is_return: bool) -> Tuple[Frame, ...]:
        look = _looked_up(ip, is_return)
        pm = self._perfmaps.get(pid, 0)
        if pm == 0:
            pm = self._perfmap(pid)
        if pm is not None:
            name = pm.lookup(look)
            if name is not None:
                return (Frame(name, "[jit]", "jit"),)
        table = self._tables.get((pid, gen))
        m = table.find(look) if table is not None else None
        g = gen
        if m is None:
            m, g = self._find_mapping(pid, gen, look)
        if m is None:
            if ip >= _KERNEL_START:
                return (Frame(f"[kernel] {ip:#x}", "[kernel]", "kernel"),)
            return (Frame(f"[unknown] {ip:#x}", "", "unknown"),)
        kind, module, category, mod = self._context(pid, g, m)
        if kind == "anon":
            return (Frame(f"{module}+{ip - m.start:#x}", module, category),)
        off = look - m.start + m.offset
        if mod is not None:
            va = mod.vaddr(off)
            if va is not None:
                if not self.lines:
                    # Fast path: one Frame per (mapping, symbol), shared by
                    # every address inside that function.
                    i = mod.table.index(va)
                    if i >= 0:
                        fkey = (id(m), i)
                        out = self._sym_frames.get(fkey)
                        if out is None:
                            out = self._sym_frames[fkey] = (
                                Frame(self._name(mod.table.name(i)), module, category),)
                        return out
                    levels = None
                else:
                    levels = self._symbolize(mod, va)
                if levels:
                    return tuple(Frame(n, module, category, f, ln, inl) for n, f, ln, inl in levels)
                # Stripped code: the function's start from its FDE, so all its
                # addresses are one frame.  Either way an ELF virtual address
                # (what objdump/addr2line -e take), not the file offset.
                start = self._function_start(m, va) if self.group_functions else None
                if start is not None:
                    return (Frame(f"{module}+{start:#x}", module, category),)
                return (Frame(f"{module}+{va + (ip - look):#x}", module, category),)
        # No usable ELF: the offset shown is the file offset of ip.
        return (Frame(f"{module}+{off + (ip - look):#x}", module, category),)

    def frames(self, pid: int, gen: int, ips: Sequence[int]) -> List[Frame]:
        """Frames root first for one stack, ``ips`` leaf first (``ips[0]``
        the interrupted instruction, the rest return addresses)."""
        marker = ips[0] if ips and ips[0] in offcpu.MARKERS else None
        if marker is not None:                 # an off-CPU stack: its reason is the leaf
            ips = ips[1:]
        out: List[Frame] = []
        for i in range(len(ips) - 1, -1, -1):
            out.extend(self.resolve(pid, gen, ips[i], i > 0))
        if marker is not None:
            out.append(offcpu.off_cpu_frame(marker, out[-1] if out else None))
        return out
