"""Python frames for the kernel sampler (``ctprof run`` and ``attach``).

A CPython thread's Python frames live in the interpreter's heap, not on the
stack the kernel copies, so they are read from the running process at the
moment of each sample: a reader thread in C (``shim/pyreader.c``, loaded
here with ctypes) watches the perf rings and, for every new sample of a
process registered here, reads that thread's frame chain with
``process_vm_readv`` (and, the first time it meets a code object, its name,
file and line table).  Nothing is added to the program and it is never
stopped; a frame chain changing under the reader ends the walk early.

This module registers each process whose mappings include a supported
interpreter (:mod:`.cpython`), follows forks, execs and exits, and turns
the reader's output into, per sample, a tuple of (code id, instruction
index | entry flag) pairs, and per process the table of code objects the
ids refer to (:attr:`ProcessInfo.python`).  Lines and names are the
symbolizer's job (:mod:`ctprof.symbols.python`).
"""
from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Set, Tuple

from ..errors import BuildError
from . import perf

# The kernel sampler makes a PythonStacks before the program starts; what
# reads an interpreter (cpython, the unwinder's ELF reading) and builds the
# reader is imported when a CPython process turns up.
if TYPE_CHECKING:
    from ..symbols.maps import Mapping
    from . import cpython

_OUT_SAMPLE, _OUT_CODE = 1, 2
_HEAD = struct.Struct("<II")
_SAMPLE = struct.Struct("<IIQIIQQQ")         # pid tid time n pad leaf-frame code-lo code-hi
_CODE = struct.Struct("<IiQ")                # pid firstlineno address
_TEXT = struct.Struct("<II")                 # width nbytes
_WIDTH_CODEC = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}
#: In-process events (heap hooks, the signal sampler) may carry, after their
#: return addresses, this word and the thread's Python frames as (code
#: object address, index | entry flag) pairs (shim/ctprof.h).
PYFRAMES_MARK = 0xFFFFFFFFFFFFF0F0
PYHEAP_MAX_FRAMES = 64
#: ... each index word carrying the code object's fingerprint in bits 33-63
#: (shim/pywalk.c pyw_fingerprint): the address may hold another code object
#: by the time the controller reads it.
PRINT_SHIFT = 33
INDEX_AND_ENTRY = (1 << PRINT_SHIFT) - 1
#: Samples waiting for the drain beyond this many are dropped (a drain that
#: stopped must not grow the controller without bound).
MAX_PENDING = 1_000_000
#: A CPython process's version and the code objects its heap stacks' Python
#: frames name, as read so far ((address, fingerprint) -> entry, absent
#: while not read yet): what the heap collector hands the live frames.
PythonCodes = Tuple[Tuple[int, int], Dict[Tuple[int, int], list]]


def _load():
    from .build import shim_path
    path = shim_path("pyreader")
    lib = ctypes.CDLL(path)
    # Reading one code object is a few microseconds: called with the GIL
    # held (PyDLL), or each call would wait a switch interval (5 ms) to get
    # it back from a busy thread -- hundreds of calls per batch of stacks.
    lib.pyr_code_record = ctypes.PyDLL(path).pyr_code_record
    lib.pyr_add_ring.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.pyr_cursor.argtypes = [ctypes.c_int]
    lib.pyr_cursor.restype = ctypes.c_uint64
    lib.pyr_add_process.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.POINTER(ctypes.c_int64)]
    lib.pyr_remove_process.argtypes = [ctypes.c_int]
    lib.pyr_pending.restype = ctypes.c_size_t
    lib.pyr_take.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.pyr_take.restype = ctypes.c_size_t
    lib.pyr_counts.argtypes = [ctypes.POINTER(ctypes.c_uint64)] * 2
    lib.pyr_set_sample_regs.argtypes = [ctypes.c_int]
    lib.pyr_code_record.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.POINTER(ctypes.c_int64),
                                    ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint32)]
    lib.pyr_code_record.restype = ctypes.c_size_t
    return lib


class CodeTable:
    """One process's code objects in the order first seen: a raw stack's
    Python frame names one by its index here (``ProcessInfo.python``'s
    ``codes``).  Keys are what identifies a code object where it was
    recorded: its address (the reader fingerprints it itself), or (address,
    fingerprint) for events recorded in the program.  A key given a new
    entry gets a new index, so earlier samples keep their names."""

    def __init__(self, version: Tuple[int, int], entries: Sequence[list] = ()) -> None:
        self.version = version
        self.entries: List[list] = list(entries)
        self.ids: Dict[object, int] = {}

    def add(self, key, entry: list) -> None:
        self.ids[key] = len(self.entries)
        self.entries.append(entry)

    def id_of(self, key, entry: Optional[list] = None) -> int:
        """The index of ``key``, added with ``entry`` (or as unnamed) if new."""
        i = self.ids.get(key)
        if i is None:
            self.add(key, entry or ["", "", 0, ""])
            i = len(self.entries) - 1
        return i

    def doc(self) -> Dict[str, object]:
        return {"version": list(self.version), "codes": self.entries}


class PythonStacks:
    """Registers CPython processes with the reader and collects its output.

    ``image_of(mapping)`` returns the bytes of a mapped file as the process
    sees it (:meth:`ctprof.unwinder.Unwinder.image`)."""

    def __init__(self, image_of) -> None:
        self.image_of = image_of
        self.lib = None
        self.failed = ""                                   # why the reader could not load
        self.rings: Dict[int, int] = {}                    # id(EventRing) -> reader index
        self.interpreters: Dict[int, cpython.Interpreter] = {}
        self.codes: Dict[int, CodeTable] = {}              # pid -> its code table
        self.samples: Dict[Tuple[int, int, int], tuple] = {}
        self.looked: Set[Tuple[int, str]] = set()
        self.notes: Dict[int, List[str]] = {}
        self.pthread_tid = -1
        self._gone: Dict[int, cpython.Interpreter] = {}
        self.stale = 0                                     # samples whose frames the controller refused

    @property
    def active(self) -> bool:
        return self.lib is not None

    # -- processes ------------------------------------------------------------
    def mapped(self, pid: int, m: Mapping, rings) -> None:
        """A new executable mapping of ``pid``: register the process if the
        image holds a supported interpreter."""
        from . import cpython
        if pid in self.interpreters or not cpython.may_hold_interpreter(m.path) or (pid, m.path) in self.looked:
            return
        self.looked.add((pid, m.path))
        interp, why = cpython.find_interpreter(self.image_of, m)
        if why:
            self.notes.setdefault(pid, []).append(why)
        if interp is not None:
            self._register(pid, interp, rings)

    def _register(self, pid: int, interp: cpython.Interpreter, rings) -> None:
        from . import cpython
        if not self._start(rings):
            self.notes.setdefault(pid, []).append(self.failed)
            return
        layout = (ctypes.c_int64 * len(cpython.LAYOUT_FIELDS))(*interp.layout(self.pthread_tid))
        if self.lib.pyr_add_process(pid, interp.runtime, interp.code_type, layout) == 0:
            self.interpreters[pid] = interp
            self.codes[pid] = CodeTable(interp.version)

    def forked(self, parent: int, child: int, rings) -> None:
        """A fork child runs the same interpreter at the same addresses."""
        interp = self.interpreters.get(parent)
        if interp is not None and child not in self.interpreters:
            self._register(child, interp, rings)

    def gone(self, pid: int) -> None:
        """``pid`` exec'd another image or exited: stop reading it (its code
        table stays for the profile)."""
        interp = self.interpreters.pop(pid, None)
        if interp is not None:
            self._gone[pid] = interp              # its last samples are still to be unwound
            if self.lib is not None:
                self.lib.pyr_remove_process(pid)
        self.looked = {k for k in self.looked if k[0] != pid}

    # -- the reader -----------------------------------------------------------
    def _start(self, rings) -> bool:
        if self.lib is not None:
            return True
        if self.failed:
            return False
        try:
            lib = _load()
        except (BuildError, OSError) as err:
            self.failed = f"Python frames are off: the frame reader could not be built ({err})"
            return False
        self.pthread_tid = lib.pyr_pthread_tid_offset()
        lib.pyr_set_sample_regs(bin(perf.REGS_MASK).count("1"))
        self.lib = lib
        for ring in rings:
            self.add_ring(ring)
        if lib.pyr_start() != 0:
            self.failed = "Python frames are off: the frame reader thread could not start"
            self.lib = None
            return False
        return True

    def add_ring(self, ring) -> None:
        if self.lib is None or id(ring) in self.rings:
            return
        view = (ctypes.c_char * 1).from_buffer(ring.map)
        address = ctypes.addressof(view)
        del view                                         # no export left: the mmap can close
        index = self.lib.pyr_add_ring(address, ring.data_size)
        if index >= 0:
            self.rings[id(ring)] = index

    def limit(self, ring) -> Optional[int]:
        """How far the drain may consume ``ring`` (None: all of it)."""
        index = self.rings.get(id(ring))
        return None if index is None else self.lib.pyr_cursor(index)

    def collect(self) -> None:
        """Take the reader's output: code objects and per-sample frames."""
        if self.lib is None:
            return
        size = self.lib.pyr_pending()
        if not size:
            return
        buf = ctypes.create_string_buffer(size)
        got = self.lib.pyr_take(buf, size)
        self._parse(buf.raw[:got])

    def stop(self) -> None:
        """Stop the reader thread and take what it left (before the rings close)."""
        if self.lib is not None:
            self.lib.pyr_stop()
            self.collect()
            self.rings.clear()

    def summary_note(self) -> str:
        """One line on the samples left without Python frames because the
        thread had moved on before they could be read (refused by the
        reader, or by the controller once unwound), if any."""
        if self.lib is None:
            return ""
        read_c, stale_c = ctypes.c_uint64(), ctypes.c_uint64()
        self.lib.pyr_counts(ctypes.byref(read_c), ctypes.byref(stale_c))
        read = read_c.value - self.stale
        stale = stale_c.value + self.stale
        if not stale:
            return ""
        return (f"{stale} of {read + stale} samples of Python threads "
                f"({100.0 * stale / (read + stale):.1f}%) show native frames only: the thread had moved "
                f"on to other Python code before its frames could be read")

    def _parse(self, data: bytes) -> None:
        off = 0
        while off + 8 <= len(data):
            rtype, size = _HEAD.unpack_from(data, off)
            if size < 8:
                break
            if rtype == _OUT_SAMPLE:
                self._sample(data, off + 8)
            elif rtype == _OUT_CODE:
                self._code(data, off + 8, off + size)
            off += size

    def _sample(self, data: bytes, off: int) -> None:
        pid, tid, time, n, _pad, leaf, lo, hi = _SAMPLE.unpack_from(data, off)
        codes = self.codes.get(pid)
        if codes is None or len(self.samples) >= MAX_PENDING:
            return
        words = struct.unpack_from(f"<{2 * n}Q", data, off + _SAMPLE.size)
        pairs = []
        for i in range(0, len(words), 2):
            pairs.append(codes.id_of(words[i]))
            pairs.append(words[i + 1])
        self.samples[(pid, tid, time)] = (tuple(pairs), (leaf, lo, hi))

    def _code(self, data: bytes, off: int, end: int) -> None:
        pid, address, entry = parse_code(data, off, end)
        codes = self.codes.get(pid)
        if codes is not None and entry:
            codes.add(address, entry)

    def frames_of(self, pid: int, tid: int, time: int) -> Tuple[tuple, Optional[tuple]]:
        """The Python frames read for one sample (``()`` if none) and what
        confirms them: (innermost frame address, its code's instruction range)."""
        return self.samples.pop((pid, tid, time), ((), None))

    def eval_ranges(self, pid: int) -> Tuple[Tuple[int, int], ...]:
        interp = self.interpreters.get(pid) or self._gone.get(pid)
        return interp.eval_ranges if interp is not None else ()

    def confirmed(self, check: tuple, values: List[int]) -> bool:
        """Were the frames read those running at the sample?  The innermost
        eval-loop activation held the innermost frame's address and an
        instruction pointer into its code (``values``: its registers)."""
        leaf, lo, hi = check
        ok = leaf in values and any(map(range(lo, hi).__contains__, values))   # a C loop: per sample
        if not ok:
            self.stale += 1
        return ok

    def process_doc(self, pid: int) -> Dict[str, object]:
        """What :attr:`ProcessInfo.python` holds for ``pid``."""
        codes = self.codes.get(pid)
        return codes.doc() if codes is not None else {}


def parse_code(data: bytes, off: int, end: int) -> Tuple[int, int, Optional[list]]:
    """(pid, address, [qualname, filename, firstlineno, line table hex]) of
    the code record whose body starts at ``off`` (entry None if cut short)."""
    pid, firstlineno, address = _CODE.unpack_from(data, off)
    off += _CODE.size
    texts = []
    for _ in range(3):
        if off + 8 > end:
            return pid, address, None
        width, nbytes = _TEXT.unpack_from(data, off)
        texts.append((width, data[off + 8:off + 8 + nbytes]))
        off += 8 + ((nbytes + 7) & ~7)
    if off > end:
        return pid, address, None
    (qw, qualname), (fw, filename), (_lw, linetable) = texts
    return pid, address, [_decode(qw, qualname), _decode(fw, filename), firstlineno, linetable.hex()]


def _python_part(words: Sequence[int]):
    """(where PYFRAMES_MARK is, the (code object key, index word) pairs
    after it) of an in-process event's words; (len(words), []) if none."""
    try:
        cut = words.index(PYFRAMES_MARK)
    except ValueError:
        return len(words), []
    rest = words[cut + 1:]
    return cut, [((rest[i], rest[i + 1] >> PRINT_SHIFT), rest[i + 1]) for i in range(0, len(rest) - 1, 2)]


def code_addresses(words: Sequence[int]) -> List[Tuple[int, int]]:
    """The code objects of an in-process event's Python frames, as
    (address, fingerprint) pairs."""
    return [key for key, _ in _python_part(words)[1]]


def split_python(words: Tuple[int, ...], code_id) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """An in-process event's words as (return addresses, Python frames with
    each code object replaced by ``code_id((address, fingerprint))``)."""
    cut, pairs = _python_part(words)
    if not pairs and cut == len(words):
        return words, ()
    py: List[int] = []
    for key, word in pairs:
        py.append(code_id(key))
        py.append(word & INDEX_AND_ENTRY)
    return words[:cut], tuple(py)


class CodeReader:
    """The code objects of one live process, read on demand: heap events
    and in-process samples carry the Python frames the program recorded
    (shim/pylocal.c), as code object addresses that must be named while the
    process lives."""

    RETRY_SECONDS = 1.0

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.interp: Optional[cpython.Interpreter] = None
        self.layout = None
        self.entries: Dict[Tuple[int, int], list] = {}   # (address, fingerprint) -> entry
        self.table: Optional[CodeTable] = None           # what raw stacks index, once found
        self.lib = None
        self._next_look = 0.0
        self._buf = None

    def found(self, now: float) -> bool:
        """Is the process a supported CPython?  (Looked for again at most
        every RETRY_SECONDS until it is: the interpreter may come with an exec.)"""
        if self.interp is not None:
            return True
        if now < self._next_look:
            return False
        self._next_look = now + self.RETRY_SECONDS
        from ..symbols.maps import parse_maps
        from ..unwinder import Unwinder
        from . import cpython
        try:
            with open(f"/proc/{self.pid}/maps") as f:
                maps = parse_maps(f.read())
        except OSError:
            return False
        images = Unwinder(root=f"/proc/{self.pid}/root", map_files=f"/proc/{self.pid}/map_files")
        for m in maps:
            interp = cpython.find_interpreter(images.image, m)[0] if m.executable else None
            if interp is not None:
                try:
                    self.lib = _load()
                except (BuildError, OSError):
                    return False
                self.interp = interp
                self.table = CodeTable(interp.version)
                self.layout = (ctypes.c_int64 * len(cpython.LAYOUT_FIELDS))(*interp.layout(-1))
                self._buf = ctypes.create_string_buffer(1 << 18)
                return True
        return False

    def learn(self, keys) -> None:
        """Read the code objects of ``keys`` ((address, fingerprint) pairs)
        not read before; one whose fingerprint differs now is gone (its
        address holds another object) and stays unnamed."""
        if self.interp is None:
            return
        now_print = ctypes.c_uint32()
        for key in keys:
            if key in self.entries:
                continue
            address, recorded = key
            n = self.lib.pyr_code_record(self.pid, address, self.interp.code_type, self.layout,
                                         self._buf, len(self._buf), ctypes.byref(now_print))
            entry = None
            if n and now_print.value == recorded:
                _pid, _addr, entry = parse_code(self._buf.raw[:n], 8, n)
            self.entries[key] = entry or ["", "", 0, ""]

    def code_id(self, key: Tuple[int, int]) -> int:
        """The index in :attr:`table` of the code object ``key`` ((address,
        fingerprint)), added on first use."""
        return self.table.id_of(key, self.entries.get(key))

    def table_doc(self) -> Dict[str, object]:
        """What :attr:`ProcessInfo.python` holds (the table, filled as raw
        stacks are made)."""
        return self.table.doc() if self.table is not None else {}


def _decode(width: int, raw: bytes) -> str:
    codec = _WIDTH_CODEC.get(width)
    return raw.decode(codec, "replace") if codec else ""
