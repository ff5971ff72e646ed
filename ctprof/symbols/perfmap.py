"""The perf map convention for JIT code: ``/tmp/perf-PID.map``.

One symbol per line, ``START SIZE name`` with START and SIZE in hex (with or
without ``0x``), written by Node ``--perf-basic-prof``, Python 3.12
``-X perf``, LuaJIT and others.  Later lines win where entries overlap (a
JIT that reuses memory appends the new code).
"""
from __future__ import annotations

import bisect
from typing import List, Optional, Tuple


class PerfMap:
    def __init__(self, text: str) -> None:
        entries: List[Tuple[int, int, str, int]] = []
        for seq, line in enumerate((text or "").splitlines()):
            parts = line.strip().split(None, 2)
            if len(parts) < 3:
                continue
            try:
                start, size = int(parts[0], 16), int(parts[1], 16)
            except ValueError:
                continue
            if size <= 0:
                continue
            entries.append((start, start + size, parts[2], seq))
        entries.sort()
        self._entries = entries
        self._starts = [e[0] for e in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, addr: int) -> Optional[str]:
        """The name of the newest entry covering ``addr``, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        best = None
        # Overlaps are rare: look at a few entries starting at or before addr
        # and keep the newest one that covers it.
        for j in range(i, max(i - 16, -1), -1):
            _start, end, name, seq = self._entries[j]
            if addr < end and (best is None or seq > best[1]):
                best = (name, seq)
        return best[0] if best else None
