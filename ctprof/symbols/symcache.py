"""On-disk cache of parsed symbol tables, so a second run parses no ELF.

One file per module under ``cache_dir("symbols")``, named by a hash of the
module's identity as :func:`os.stat` sees it (real path, device, inode, size,
mtime): checking it costs one ``stat``, no reads.  The entry also lists the
separate debug files that were looked for and whether each existed, so
installing (or removing) a ``-dbg`` package later invalidates it.

Format (native byte order; the cache never leaves the machine)::

    b"CTPSYM" + version byte + b"\\n"
    u32 header length, header (JSON: build id, PT_LOAD list, source, dwarf
    path, debug candidates and their stat signatures), then
    u32 n, starts (n x u64), ends (n x u64), name offsets ((n+1) x u32),
    name blob (UTF-8, not separated).

Written with :func:`ctprof.cache.write_atomic`, so readers never see a
partial file; anything unreadable is treated as a miss and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from array import array
from typing import List, Optional, Sequence, Tuple

from .. import cache as _cache
from ..errors import CtprofError
from . import elf

MAGIC = b"CTPSYM\x02\n"


def _sig(path: str) -> Optional[List[int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def module_key(path: str, st: os.stat_result, debug_dirs: Sequence[str]) -> str:
    ident = "\0".join([os.path.realpath(path), str(st.st_dev), str(st.st_ino),
                       str(st.st_size), str(st.st_mtime_ns), "|".join(debug_dirs)])
    return hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()


def _dir() -> Optional[str]:
    try:
        return _cache.cache_dir("symbols")
    except (CtprofError, OSError):
        return None


def encode(mod: elf.ModuleSymbols) -> bytes:
    t = mod.table
    header = {
        "path": mod.path, "build_id": mod.build_id, "loads": mod.loads,
        "source": mod.source, "dwarf_path": mod.dwarf_path, "debug_file": mod.debug_file,
        "candidates": [[c, _sig(c)] for c in mod.debug_candidates],
    }
    hb = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, struct.pack("=I", len(hb)), hb, struct.pack("=I", len(t.starts)),
                     t.starts.tobytes(), t.ends.tobytes(), t.offs.tobytes(), t.blob])


def decode(raw: bytes) -> Optional[elf.ModuleSymbols]:
    """The cached module, or None if ``raw`` is not a valid current entry."""
    try:
        if not raw.startswith(MAGIC):
            return None
        pos = len(MAGIC)
        (hlen,) = struct.unpack_from("=I", raw, pos)
        pos += 4
        header = json.loads(raw[pos:pos + hlen])
        pos += hlen
        # A debug file that appeared, vanished or changed since: stale.
        for cand, sig in header["candidates"]:
            if _sig(cand) != sig:
                return None
        (n,) = struct.unpack_from("=I", raw, pos)
        pos += 4
        starts, ends, offs = array("Q"), array("Q"), array("I")
        for arr, count in ((starts, n), (ends, n), (offs, n + 1)):
            size = arr.itemsize * count
            if pos + size > len(raw):
                return None
            arr.frombytes(raw[pos:pos + size])
            pos += size
        blob = raw[pos:]
        if offs[-1] != len(blob):
            return None
        table = elf.SymbolTable(starts, ends, offs, blob)
        return elf.ModuleSymbols(header["path"], header["build_id"],
                                 [tuple(x) for x in header["loads"]], table, header["source"],
                                 header["dwarf_path"], header["debug_file"],
                                 [c for c, _ in header["candidates"]])
    except (ValueError, KeyError, TypeError, struct.error, IndexError):
        return None


def load(path: str, debug_dirs: Sequence[str] = elf.DEFAULT_DEBUG_DIRS,
         use_disk: bool = True) -> Tuple[elf.ModuleSymbols, bool]:
    """Symbols of ``path``: (module, came_from_cache).  Raises
    :class:`elf.ElfError` if the file cannot be used."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise elf.ElfError(f"cannot read: {err.strerror or err}") from None
    directory = _dir() if use_disk else None
    entry = None
    if directory:
        entry = os.path.join(directory, module_key(path, st, debug_dirs) + ".sym")
        try:
            with open(entry, "rb") as f:
                cached = decode(f.read())
            if cached is not None:
                return cached, True
        except OSError:
            pass
    mod = elf.load_module(path, debug_dirs=debug_dirs)
    if entry:
        try:
            _cache.write_atomic(entry, encode(mod))
        except OSError:
            pass
    return mod, False


# -- source lines ---------------------------------------------------------------
#
# DWARF decoding through pyelftools costs milliseconds per compilation unit,
# so --lines results are cached too: per DWARF file (same stat identity as
# above), a JSON object {"vaddr": levels or null} that grows as new
# addresses are looked up.

LINES_VERSION = 1


def lines_entry(path: str) -> Optional[str]:
    """Cache file for the line results of ``path``, or None without a cache."""
    directory = _dir()
    if not directory:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.join(directory, module_key(path, st, (f"lines{LINES_VERSION}",)) + ".lines.json")


def load_lines(entry: Optional[str]) -> dict:
    """{vaddr: levels (tuple of 4-tuples) or None} from ``entry``; {} if
    missing or unreadable."""
    if not entry:
        return {}
    try:
        with open(entry, "rb") as f:
            raw = json.loads(f.read())
        return {int(k): (tuple(tuple(level) for level in v) if v is not None else None)
                for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def save_lines(entry: Optional[str], known: dict) -> None:
    if not entry:
        return
    try:
        data = json.dumps({str(k): v for k, v in known.items()}, separators=(",", ":"))
        _cache.write_atomic(entry, data.encode())
    except (OSError, TypeError, ValueError):
        pass
