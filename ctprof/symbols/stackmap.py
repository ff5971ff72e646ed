"""The frame ids of many heap stacks at once, looked up in C.

A memory profile of a large program has 100,000 allocation stacks holding
3 million addresses, of which about 10,000 are distinct.  Each distinct
address is resolved once in Python (:class:`~ctprof.symbols.resolve.Resolver`);
looking every address up and finding the stacks that resolve alike is done
by two functions of the controller's shim (``shim/stackmap.c``): a hash
probe per address instead of a Python step (0.3 s on a g++ compile).
"""
from __future__ import annotations

import ctypes
from array import array
from typing import Callable, Dict, Optional, Sequence, Tuple

from ..errors import BuildError

#: Distinct missing addresses reported per pass (a pass is one walk over
#: every address; a g++ compile's stacks have about 13,000).
MISSING_PER_PASS = 1 << 16

_lib = None
_tried = False


def _library():
    """The controller's shim with the two functions bound; None if it cannot
    be had (no compiler: then the Python loop does the same)."""
    global _lib, _tried
    if not _tried:
        _tried = True
        try:
            from ..capture.build import shim_path
            lib = ctypes.CDLL(shim_path())
        except (BuildError, OSError):
            return None
        vp, size = ctypes.c_void_p, ctypes.c_size_t
        lib.ctprof_map_stacks.argtypes = [vp, vp, size, vp, vp, size, vp, vp, size, vp, vp, size,
                                          ctypes.POINTER(ctypes.c_int)]
        lib.ctprof_map_stacks.restype = ctypes.c_long
        lib.ctprof_first_alike.argtypes = [vp, vp, vp, size, vp]
        lib.ctprof_first_alike.restype = ctypes.c_int
        lib.ctprof_sum_rows.argtypes = [vp, vp, size, ctypes.c_int64, vp, size]
        lib.ctprof_sum_rows.restype = ctypes.c_int
        _lib = lib
    return _lib


#: Addresses let go of that are worth handing back to the system (8 MiB):
#: a trim costs some 0.3 ms, and a build's hundreds of small processes
#: each let go of a few.
GIVE_BACK_WORDS = 1 << 20

_malloc_trim = None


def give_back_memory(words: int) -> None:
    """Hand memory malloc holds free back to the system (glibc's
    ``malloc_trim``) once ``words`` addresses were let go of, if that is
    many.  The stacks' addresses (tens of MiB) may have come from malloc's
    heap rather than a mapping of their own, and the frames built next are
    Python objects, whose allocator maps memory of its own: without this,
    both would count in the controller's peak memory."""
    global _malloc_trim
    if words < GIVE_BACK_WORDS:
        return
    try:
        if _malloc_trim is None:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        _malloc_trim(0)
    except (OSError, AttributeError):        # not glibc
        pass


def _address(a: array) -> int:
    return a.buffer_info()[0]


def _table(table: Dict[int, object]) -> Tuple["array[int]", "array[int]"]:
    """A frame-id table as the C side takes it (single-frame entries only:
    the caller checked there is no other)."""
    return array("Q", table.keys()), array("I", table.values())   # type: ignore[arg-type]


def frame_ids(words: "array[int]", lengths: "array[int]", tables: tuple,
              resolve: Callable[[int, bool], None]) -> Optional["array[int]"]:
    """The frame id of every address of the stacks (``words``, ``lengths``
    as in :class:`~ctprof.session.FlatStacks`), in the same layout: a
    stack's first address looked up in the pcs table, the others in the
    return addresses' (``tables``: a generation's (pcs, returns, [holds an
    entry of several frames]), as ``_FrameIds.tables_of`` keeps them).
    ``resolve(address, is_return)`` is called once for each address in
    neither; it adds the address to its table.  None if the C side is not
    available, ran out of memory, or a table came to hold an entry of
    several frames (inlined frames: the caller's Python loop expands those)."""
    pcs, returns, multi = tables
    lib = _library()
    if lib is None:
        return None
    out = array("I", bytes(4 * len(words)))
    per_pass = min(MISSING_PER_PASS, len(words))          # (each address is reported once)
    missing = array("Q", bytes(16 * per_pass))
    complete = ctypes.c_int(0)
    while True:
        if multi[0]:
            return None
        (pc_keys, pc_ids), (ret_keys, ret_ids) = _table(pcs), _table(returns)
        found = lib.ctprof_map_stacks(_address(words), _address(lengths), len(lengths),
                                      _address(pc_keys), _address(pc_ids), len(pc_keys),
                                      _address(ret_keys), _address(ret_ids), len(ret_keys),
                                      _address(out), _address(missing), per_pass, ctypes.byref(complete))
        if found < 0:
            return None
        if found == 0:
            return out
        known = len(pcs) + len(returns)
        for i in range(0, 2 * found, 2):
            resolve(missing[i], bool(missing[i + 1]))
        if len(pcs) + len(returns) == known:       # (never: resolve() adds each)
            return None


def first_alike(ids: "array[int]", lengths: "array[int]", flags: Sequence[int]) -> Optional["array[int]"]:
    """For each stack, the index of the first with the same ids and flag
    (itself if none before it); None if the C side is not available."""
    lib = _library()
    if lib is None:
        return None
    flags = flags if isinstance(flags, array) and flags.typecode == "B" else array("B", flags)
    first = array("I", bytes(4 * len(lengths)))
    if lib.ctprof_first_alike(_address(ids), _address(lengths), _address(flags), len(lengths), _address(first)) != 0:
        return None
    return first


def summable(source: Sequence[int], row_of: "array[int]") -> bool:
    """Can :func:`sum_rows` sum ``source`` (64-bit integers, one per stack)?"""
    return (isinstance(source, array) and source.typecode == "q" and isinstance(row_of, array)
            and row_of.typecode == "l" and row_of.itemsize == 8 and len(source) == len(row_of)
            and _library() is not None)


def sum_rows(source: Sequence[int], row_of: "array[int]", base: int, rows: int) -> Optional["array[int]"]:
    """Each of ``rows`` rows' sum of the ``source`` values of the stacks
    in it (stack ``i`` is in row ``row_of[i] - base``); None if it cannot
    (see :func:`summable`, or a row out of range)."""
    if not summable(source, row_of):
        return None
    lib = _library()
    out = array("q", bytes(8 * rows))
    if lib.ctprof_sum_rows(_address(source), _address(row_of), len(row_of), base, _address(out), rows) != 0:
        return None
    return out
