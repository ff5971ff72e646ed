"""C++ (and Rust legacy) demangling through libstdc++'s ``__cxa_demangle``.

Loaded with ctypes on first use; each result buffer is released with libc
``free``.  Results are cached per process.  Without libstdc++ names stay as
they are.  Rust legacy names (``_ZN...17h<16 hex>E``) are Itanium-mangled, so
``__cxa_demangle`` decodes them; we then drop the ``::h<hash>`` suffix and
undo Rust's ``$LT$``-style escapes.  Rust v0 names (``_R...``), which
``__cxa_demangle`` does not know, go to the pure-Python :mod:`.rustv0`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import re
from typing import Dict, Iterable, List, Optional

from . import rustv0

_lib = None
_free = None
_loaded = False
_cache: Dict[str, str] = {}

_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")
_RUST_ESCAPES = {"$SP$": "@", "$BP$": "*", "$RF$": "&", "$LT$": "<", "$GT$": ">",
                 "$LP$": "(", "$RP$": ")", "$C$": ","}
_RUST_ESC = re.compile(r"\$(SP|BP|RF|LT|GT|LP|RP|C|u[0-9a-f]{1,6})\$")


def _load() -> bool:
    global _lib, _free, _loaded
    if _loaded:
        return _lib is not None
    _loaded = True
    for name in ("libstdc++.so.6", ctypes.util.find_library("stdc++")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            fn = lib.__cxa_demangle
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_void_p
        fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.POINTER(ctypes.c_int)]
        libc = ctypes.CDLL(None)
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free.restype = None
        _lib, _free = fn, libc.free
        return True
    return False


def available() -> bool:
    """True if ``__cxa_demangle`` could be loaded."""
    return _load()


def _rust_unescape(name: str) -> str:
    def sub(m: "re.Match[str]") -> str:
        code = m.group(1)
        if code.startswith("u"):
            try:
                return chr(int(code[1:], 16))
            except ValueError:
                return m.group(0)
        return _RUST_ESCAPES["$" + code + "$"]
    # rustc prefixes a path component that starts with an escape with "_".
    name = re.sub(r"(^|::)_\$", r"\1$", name)
    name = _RUST_ESC.sub(sub, name)
    return name.replace("..", "::")


def _cxa(raw: str) -> Optional[str]:
    status = ctypes.c_int(0)
    try:
        buf = _lib(raw.encode("utf-8", "surrogateescape"), None, None, ctypes.byref(status))
    except (ValueError, TypeError):
        return None
    if not buf:
        return None
    try:
        if status.value != 0:
            return None
        return ctypes.string_at(buf).decode("utf-8", "replace")
    finally:
        _free(buf)


def demangle(raw: str) -> str:
    """The human form of ``raw``; ``raw`` itself if it is not mangled."""
    out = _cache.get(raw)
    if out is not None:
        return out
    out = raw
    if raw.startswith("_Z") and _load():
        # Linkers append "@VERSION" to some names; demangle the name part.
        base, at, version = raw.partition("@")
        d = _cxa(base)
        if d is not None:
            if base.startswith("_ZN") and _RUST_HASH.search(d):
                d = _rust_unescape(_RUST_HASH.sub("", d))
            out = d + (at + version if at else "")
    elif raw.startswith("_R"):
        out = rustv0.demangle_v0(raw) or raw
    _cache[raw] = out
    return out


def demangle_many(names: Iterable[str]) -> List[str]:
    """Demangle a batch (one library load, shared cache)."""
    return [demangle(n) for n in names]
