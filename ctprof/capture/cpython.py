"""Which CPython a process runs, and where its frames are: layouts by version.

Python frames are read without the interpreter's headers, so each
supported minor version has its byte offsets here (x86-64, release builds,
the default build with the GIL).  They were taken with ``offsetof`` from
each version's own headers; ``tests/test_python_frames.py`` compiles the
same probe against every interpreter's headers it finds and checks this
table, so a drift is a failing test, not a wrong profile.

A process is recognised by the image that holds ``_PyRuntime`` (the
``python3.X`` executable, or ``libpython3.X.so`` when the interpreter is
built shared, as pyenv does); its version comes from ``Py_Version`` (3.11+)
or the file name.  Debug (``Py_REF_DEBUG``) and free-threaded (``3.13t``)
builds lay their objects out differently: they are named and left with
native frames only.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

# The ELF reading is imported where an image is read: ``run`` calls
# layouts_env() before the program starts (the shim's environment), and
# the symbols package is a good part of what ctprof imports.
if TYPE_CHECKING:
    from ..symbols import elf as _elf
    from ..symbols.maps import Mapping

#: The order of shim/pywalk.h's ``enum pyw_field``.
LAYOUT_FIELDS = (
    "version", "runtime_interpreters_head", "interp_next", "interp_threads_head", "tstate_next",
    "tstate_thread_id", "tstate_native_thread_id", "tstate_frame", "cframe_current_frame",
    "frame_back", "frame_code", "frame_lasti", "frame_instr", "frame_owner", "frame_is_entry",
    "code_adaptive", "code_name", "code_qualname", "code_filename", "code_firstlineno",
    "code_linetable", "runtime_autotss", "pthread_tid", "unicode_state", "unicode_length",
    "unicode_ascii_data", "unicode_compact_data", "bytes_size", "bytes_data", "code_code",
)

_COMMON = {"interp_next": 0, "tstate_next": 8, "pthread_tid": -1, "unicode_state": 32,
           "unicode_length": 16, "bytes_size": 16, "bytes_data": 32}
_NO_3_11 = {"code_code": 48, "tstate_native_thread_id": -1, "cframe_current_frame": -1, "frame_instr": -1,
            "frame_owner": -1, "frame_is_entry": -1, "code_adaptive": -1, "code_qualname": -1,
            "unicode_ascii_data": 48, "unicode_compact_data": 72}

LAYOUTS: Dict[Tuple[int, int], Dict[str, int]] = {
    (3, 9): {**_COMMON, **_NO_3_11, "version": 0x0309,
             "runtime_interpreters_head": 32, "interp_threads_head": 8, "tstate_thread_id": 176,
             "tstate_frame": 24, "frame_back": 24, "frame_code": 32, "frame_lasti": 104,
             "code_name": 112, "code_filename": 104, "code_firstlineno": 40, "code_linetable": 120,
             "runtime_autotss": 584},
    (3, 10): {**_COMMON, **_NO_3_11, "version": 0x030A,
              "runtime_interpreters_head": 32, "interp_threads_head": 8, "tstate_thread_id": 176,
              "tstate_frame": 24, "frame_back": 24, "frame_code": 32, "frame_lasti": 96,
              "code_name": 112, "code_filename": 104, "code_firstlineno": 40, "code_linetable": 120,
              "runtime_autotss": 584},
    (3, 11): {**_COMMON, "version": 0x030B, "code_code": -1,
              "runtime_interpreters_head": 40, "interp_threads_head": 16, "tstate_thread_id": 152,
              "tstate_native_thread_id": 160, "tstate_frame": 56, "cframe_current_frame": 8,
              "frame_back": 48, "frame_code": 32, "frame_lasti": -1, "frame_instr": 56,
              "frame_owner": -1, "frame_is_entry": 68, "code_adaptive": 184, "code_name": 120,
              "code_qualname": 128, "code_filename": 112, "code_firstlineno": 72, "code_linetable": 136,
              "runtime_autotss": 592, "unicode_ascii_data": 48, "unicode_compact_data": 72},
    (3, 12): {**_COMMON, "version": 0x030C, "code_code": -1,
              "runtime_interpreters_head": 40, "interp_threads_head": 72, "tstate_thread_id": 136,
              "tstate_native_thread_id": 144, "tstate_frame": 56, "cframe_current_frame": 0,
              "frame_back": 8, "frame_code": 0, "frame_lasti": -1, "frame_instr": 56,
              "frame_owner": 70, "frame_is_entry": -1, "code_adaptive": 192, "code_name": 120,
              "code_qualname": 128, "code_filename": 112, "code_firstlineno": 68, "code_linetable": 136,
              "runtime_autotss": 1544, "unicode_ascii_data": 40, "unicode_compact_data": 56},
    (3, 13): {**_COMMON, "version": 0x030D, "code_code": -1, "interp_next": 7264,
              "runtime_interpreters_head": 632, "interp_threads_head": 7344, "tstate_thread_id": 152,
              "tstate_native_thread_id": 160, "tstate_frame": 72, "cframe_current_frame": -1,
              "frame_back": 8, "frame_code": 0, "frame_lasti": -1, "frame_instr": 56,
              "frame_owner": 70, "frame_is_entry": -1, "code_adaptive": 200, "code_name": 120,
              "code_qualname": 128, "code_filename": 112, "code_firstlineno": 68, "code_linetable": 136,
              "runtime_autotss": 2160, "unicode_ascii_data": 40, "unicode_compact_data": 56},
}
SUPPORTED = "CPython 3.9 to 3.13 (x86-64 release builds)"
#: The evaluation loop: each of its activations runs one or more Python frames.
EVAL_FRAME = "_PyEval_EvalFrameDefault"

#: The file name of an image that may hold an interpreter.
_IMAGE_NAME = re.compile(r"^(?:lib)?python(\d)\.(\d+)([a-z]*)(?:\.so(?:\.[\d.]+)?)?$")


@dataclass
class Interpreter:
    """One CPython image mapped into a process."""

    version: Tuple[int, int]
    runtime: int                 # address of _PyRuntime in the process
    code_type: int               # address of PyCode_Type (0 if not found)
    path: str
    #: where _PyEval_EvalFrameDefault (and its .cold part) lies in the process
    eval_ranges: Tuple[Tuple[int, int], ...] = ()

    def layout(self, pthread_tid: int) -> List[int]:
        values = dict(LAYOUTS[self.version], pthread_tid=pthread_tid)
        return [values[name] for name in LAYOUT_FIELDS]


def layouts_env() -> str:
    """Every layout, for the preloaded shim (shim/pylocal.c picks the one of
    the interpreter it finds itself in): ``0x30b:v,v,...;...``."""
    return ";".join(f"{LAYOUTS[v]['version']:#x}:" + ",".join(str(x) for x in Interpreter(v, 0, 0, "").layout(-1))
                    for v in sorted(LAYOUTS))


def may_hold_interpreter(path: str) -> bool:
    """Could the image at ``path`` be (or contain) a CPython interpreter?"""
    return bool(_IMAGE_NAME.match(os.path.basename(path)))


def _data_symbols(data, info: _elf.ElfFile, wanted: Tuple[str, ...]) -> Dict[str, Tuple[int, int]]:
    """name -> (value, size) of the symbols in ``wanted`` (any type)."""
    from ..symbols import elf as _elf
    found: Dict[str, Tuple[int, int]] = {}
    targets = {w.encode(): w for w in wanted}
    for section in info.sections:
        if section.type not in (_elf.SHT_SYMTAB, _elf.SHT_DYNSYM) or not 0 <= section.link < len(info.sections):
            continue
        strsec = info.sections[section.link]
        strtab = bytes(data[strsec.offset:strsec.offset + strsec.size])
        raw = data[section.offset:section.offset + section.size - section.size % 24]
        for st_name, _info, _other, shndx, value, size in struct.iter_unpack("<IBBHQQ", raw):
            if not value or shndx == 0 or st_name >= len(strtab):
                continue
            end = strtab.find(b"\0", st_name)
            name = targets.get(strtab[st_name:end])
            if name and name not in found:
                found[name] = (value, size)
        if len(found) == len(wanted):
            break
    return found


def _file_bytes_at(data, info: _elf.ElfFile, vaddr: int, size: int) -> Optional[bytes]:
    for p_offset, p_vaddr, p_filesz, _memsz in info.loads:
        if p_vaddr <= vaddr and vaddr + size <= p_vaddr + p_filesz:
            off = p_offset + vaddr - p_vaddr
            return bytes(data[off:off + size])
    return None


def find_interpreter(image_of: Callable[[Mapping], object], mapping: Mapping) -> Tuple[Optional[Interpreter], str]:
    """The interpreter in the file behind the executable ``mapping``, read
    through ``image_of`` (:meth:`ctprof.unwinder.Unwinder.image`: the file
    as the process sees it), or (None, why not: "" when it simply holds no
    interpreter)."""
    if not may_hold_interpreter(mapping.path):
        return None, ""
    data = image_of(mapping)
    if data is None:
        return None, ""
    try:
        return inspect_image(data, mapping)
    except (ValueError, struct.error, IndexError, OSError):
        return None, ""
    finally:
        data.close()


def inspect_image(data, mapping: Mapping) -> Tuple[Optional[Interpreter], str]:
    """The interpreter in the image ``data`` mapped at ``mapping`` (an
    executable mapping of it), or (None, why not: "" when the image simply
    holds no interpreter)."""
    from ..symbols import elf as _elf
    from ..unwinder import load_vaddr
    info = _elf.parse(data)
    if not info.is64 or info.endian != "<":
        return None, ""
    syms = _data_symbols(data, info, ("_PyRuntime", "PyCode_Type", "Py_Version", "_Py_GetRefTotal",
                                      EVAL_FRAME, EVAL_FRAME + ".cold"))
    if "_PyRuntime" not in syms:
        return None, ""
    m = _IMAGE_NAME.match(os.path.basename(mapping.path))
    version: Optional[Tuple[int, int]] = (int(m.group(1)), int(m.group(2))) if m else None
    if "Py_Version" in syms:
        raw = _file_bytes_at(data, info, syms["Py_Version"][0], 4)
        if raw:
            hexversion = struct.unpack("<I", raw)[0]
            version = (hexversion >> 24, (hexversion >> 16) & 0xFF)
    name = f"Python {version[0]}.{version[1]}" if version else "a Python interpreter of unknown version"
    if version not in LAYOUTS:
        return None, f"{name} ({mapping.path}) is not supported ({SUPPORTED}): native frames only"
    if (m and "t" in m.group(3)) or "_Py_GetRefTotal" in syms:
        kind = "free-threaded" if m and "t" in m.group(3) else "debug"
        return None, f"{name} ({mapping.path}) is a {kind} build, not supported: native frames only"
    va = load_vaddr(info, mapping.offset, mapping.end - mapping.start)
    bias = mapping.start - (va if va is not None else mapping.offset)
    code_type = syms.get("PyCode_Type", (0, 0))[0]
    evals = tuple((bias + v, bias + v + max(size, 1)) for v, size in
                  (syms[n] for n in (EVAL_FRAME, EVAL_FRAME + ".cold") if n in syms))
    return Interpreter(version, bias + syms["_PyRuntime"][0], bias + code_type if code_type else 0,
                       mapping.path, evals), ""
