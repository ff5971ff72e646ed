"""Python frames of a session: code table entries -> frames, merged with
the native frames of the same sample.

A raw stack of a CPython thread carries its Python frames (see
:class:`ctprof.session.RawStack`), grouped by the
``_PyEval_EvalFrameDefault`` call that ran them.  Each group takes the
place of one such native frame, the innermost group the innermost call, as
``py-spy --native`` shows them: the Python caller above, the C extension
and library code it called below.  A frame reads
``module.qualname (file.py:LINE)``, the module being the file's name, as
self-profiling names them.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..profile import Frame
from ..session import Session
from .pylines import LineTable

PYFRAME_ENTRY = 1 << 32
EVAL_FRAME = "_PyEval_EvalFrameDefault"


_PACKAGE_ROOT = re.compile(r"/(?:site-packages|dist-packages|lib/python3\.\d+t?)/(.+)\.py$")


def module_name(filename: str) -> str:
    """The dotted module a code object's file is, as far as its path says:
    ``.../site-packages/pkg/sub.py`` and ``.../lib/python3.11/json/decoder.py``
    are ``pkg.sub`` and ``json.decoder``, ``<frozen importlib._bootstrap>``
    is ``importlib._bootstrap``, anything else its file name without ``.py``."""
    if filename.startswith("<frozen ") and filename.endswith(">"):
        return filename[len("<frozen "):-1]
    m = _PACKAGE_ROOT.search(filename)
    if m:
        dotted = m.group(1).replace("/", ".")
        return dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted
    base = os.path.basename(filename)
    return base[:-3] if base.endswith(".py") else base


class PythonFrames:
    """Frames for the Python frames of every process of ``session``."""

    def __init__(self, session: Session) -> None:
        self.codes: Dict[int, Tuple[Tuple[int, int], list]] = {}
        for pid, proc in session.processes.items():
            doc = proc.python or {}
            version, codes = doc.get("version"), doc.get("codes")
            if isinstance(version, list) and len(version) == 2 and isinstance(codes, list):
                self.codes[pid] = ((int(version[0]), int(version[1])), codes)
        self._tables: Dict[Tuple[int, int], Optional[LineTable]] = {}
        # Memos for merge (a heap profile has tens of thousands of stacks
        # sharing a few hundred Python frames): frame ids of one profile's
        # intern, groups per Python part, and which native ids are the eval loop.
        self._ids: Dict[Tuple[int, int, int], int] = {}
        self._group_memo: Dict[Tuple[int, Tuple[int, ...]], List[List[int]]] = {}
        self._eval_memo: Dict[Tuple[int, ...], bool] = {}

    def use_codes(self, pid: int, version: Tuple[int, int], codes: list) -> None:
        """Name ``pid``'s Python frames from ``codes`` (a code table's
        entries, which may grow meanwhile)."""
        self.codes[pid] = (version, codes)

    def _make(self, pid: int, code_id: int, index: int) -> Frame:
        version, codes = self.codes.get(pid, ((0, 0), []))
        entry = codes[code_id] if 0 <= code_id < len(codes) else None
        if not entry or not entry[0]:
            return Frame("[python frame: code object not read]", "", "python")
        qualname, filename, firstlineno = str(entry[0]), str(entry[1]), int(entry[2])
        line = self._line(pid, code_id, version, entry, index)
        if line is None or line < 0:
            line = firstlineno if firstlineno >= 0 else None
        base = os.path.basename(filename)
        module = module_name(filename)
        where = f"{base}:{line}" if line is not None else base
        return Frame(f"{module}.{qualname} ({where})", module, "python", filename or None, line)

    def _line(self, pid: int, code_id: int, version, entry: list, index: int) -> Optional[int]:
        key = (pid, code_id)
        if key not in self._tables:
            try:
                self._tables[key] = LineTable(version, bytes.fromhex(str(entry[3])), int(entry[2]))
            except ValueError:
                self._tables[key] = None
        table = self._tables[key]
        return table.line(index) if table is not None else None

    def merge(self, pid: int, native: Sequence[Sequence[int]], py: Sequence[int],
              frame_of: Callable[[int], Frame], intern: Callable[[Frame], int]) -> List[int]:
        """Frame ids root first: ``native`` holds, root first, the frame ids
        of each native address (as resolved, root first within it);
        ``frame_of(id)`` gives the frame of an id.  Each
        ``_PyEval_EvalFrameDefault`` frame, innermost first, is replaced by
        the next group of Python frames; groups left over (a native stack
        cut short) go above the root."""
        key = (pid, tuple(py))
        groups = self._group_memo.get(key)
        if groups is None:
            groups = self._group_memo[key] = self._groups(pid, py, intern)
        memo = self._eval_memo
        is_eval = []
        for ids in native:
            flag = memo.get(ids)
            if flag is None:
                flag = memo[ids] = any(frame_of(i).name.startswith(EVAL_FRAME) for i in ids)
            is_eval.append(flag)
        evals = sum(is_eval)
        out: List[int] = []
        for extra in range(len(groups) - 1, evals - 1, -1):
            out.extend(groups[extra])
        k = evals
        for ids, eval_here in zip(native, is_eval):
            if eval_here:
                k -= 1
                if k < len(groups):
                    out.extend(groups[k])
                    continue
            out.extend(ids)
        return out

    def _groups(self, pid: int, py: Sequence[int], intern: Callable[[Frame], int]) -> List[List[int]]:
        """The Python frames as groups, innermost group first, each root first."""
        groups: List[List[int]] = []
        current: List[int] = []
        ids = self._ids
        for i in range(0, len(py) - 1, 2):
            word = py[i + 1]
            key = (pid, py[i], word & 0xFFFFFFFF)
            fid = ids.get(key)
            if fid is None:
                fid = ids[key] = intern(self._make(*key))
            current.append(fid)
            if word & PYFRAME_ENTRY:
                groups.append(current[::-1])
                current = []
        if current:
            groups.append(current[::-1])
        return groups
