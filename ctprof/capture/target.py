"""Checks on the program to run, so the user gets one clear line instead of
a silent run without samples: missing, not executable, a directory, a
static binary (LD_PRELOAD cannot reach it), a setuid/setgid binary (the
loader ignores LD_PRELOAD for it)."""
from __future__ import annotations

import os
import shutil
import stat
import struct

from ..errors import TargetError

PT_INTERP = 3


def resolve_program(name: str) -> str:
    if "/" in name:
        path = name
    else:
        path = shutil.which(name) or ""
        if not path:
            raise TargetError(f"program not found: {name} (not in PATH)")
    if not os.path.lexists(path):
        raise TargetError(f"program not found: {name}")
    return path


def elf_interpreter_state(path: str) -> str:
    """"dynamic", "static" or "not-elf" for the file at ``path``."""
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF":
                return "not-elf"
            is64 = ident[4] == 2
            endian = "<" if ident[5] == 1 else ">"
            if is64:
                e_phoff, = struct.unpack_from(endian + "Q", ident, 32)
                e_phentsize, e_phnum = struct.unpack_from(endian + "HH", ident, 54)
            else:
                e_phoff, = struct.unpack_from(endian + "I", ident, 28)
                e_phentsize, e_phnum = struct.unpack_from(endian + "HH", ident, 42)
            f.seek(e_phoff)
            table = f.read(e_phentsize * e_phnum)
    except OSError:
        return "not-elf"
    for i in range(e_phnum):
        entry = table[i * e_phentsize:(i + 1) * e_phentsize]
        if len(entry) >= 4 and struct.unpack_from(endian + "I", entry, 0)[0] == PT_INTERP:
            return "dynamic"
    return "static"


def check_program(name: str, preload: bool = True) -> str:
    """The path to execute, or a TargetError saying why it cannot be
    profiled.  ``preload``: the shim must load into it (``--mem``, the
    signal sampler), which static and setuid programs refuse."""
    path = resolve_program(name)
    try:
        st = os.stat(path)
    except OSError as err:
        raise TargetError(f"cannot run {name}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise TargetError(f"cannot run {name}: it is a directory")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would hang the ELF check below
        raise TargetError(f"cannot run {name}: not a regular file")
    if not os.access(path, os.X_OK) or not st.st_mode & 0o111:
        raise TargetError(f"cannot run {name}: not executable (try chmod +x {name})")
    if not preload:
        return path
    if (st.st_mode & stat.S_ISUID and st.st_uid != os.geteuid()) or \
            (st.st_mode & stat.S_ISGID and st.st_gid != os.getegid()):
        raise TargetError(f"cannot profile {name}: it is setuid/setgid, and the loader ignores "
                          f"LD_PRELOAD for such programs (run a copy without the bit)")
    if elf_interpreter_state(path) == "static":
        raise TargetError(f"cannot profile {name}: it is statically linked, so LD_PRELOAD cannot load "
                          f"the sampler into it (rebuild it without -static)")
    return path


ALLOCATOR_NAMES = {b"malloc", b"free", b"calloc", b"realloc"}


def own_allocator(path: str) -> bool:
    """True if the program defines malloc/free itself (a statically linked
    allocator): the preloaded heap hooks cannot see its allocations."""
    from ..symbols import elf
    try:
        data = elf.open_bytes(path)
        info = elf.parse(data)
        symbols = elf.symbols_of(data, info, (elf.SHT_SYMTAB, elf.SHT_DYNSYM))
    except (OSError, ValueError, elf.ElfError):
        return False
    return any(name in ALLOCATOR_NAMES for _value, _size, _bind, name, _shndx in symbols)
