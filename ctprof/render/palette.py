"""Colours: by frame category, varied by a stable hash of the name.

The same name gets the same colour in every run and every graph (no random
numbers).  CPU graphs: the program's own code warm (red/orange/yellow),
shared libraries cool (blue/aqua), kernel purple, JIT green, Python yellow,
off-CPU waits deep blue, unknown grey.  Memory graphs use their own greens and teals so a heap graph
is never mistaken for a CPU graph.  Differential graphs: red grew, blue
shrank, white unchanged.
"""
from __future__ import annotations

import zlib
from typing import Tuple

from ..profile import Frame

#: Search highlight (as flamegraph.pl).
HIGHLIGHT = "#e600e6"

# (base r, g, b), (range r, g, b): colour = base + range * hash fraction
_CPU = {
    "program": ((205, 0, 0), (50, 230, 55)),       # flamegraph.pl "hot"
    "library": ((50, 120, 190), (60, 100, 65)),     # blues and aquas
    "kernel": ((150, 90, 200), (50, 50, 55)),       # purples
    "jit": ((50, 190, 50), (60, 60, 60)),           # greens
    "python": ((200, 190, 40), (55, 60, 60)),       # yellows
    "offcpu": ((20, 40, 170), (40, 60, 60)),        # deep blues: off-CPU flame graphs' cold palette
    "unknown": ((150, 150, 150), (50, 0, 0)),       # greys (r range copied to g, b)
    "root": ((210, 210, 210), (0, 0, 0)),
}
_MEMORY = {
    "program": ((0, 170, 60), (90, 70, 80)),        # greens
    "library": ((0, 150, 150), (60, 80, 80)),       # teals
    "kernel": ((120, 150, 90), (40, 40, 40)),
    "jit": ((120, 190, 0), (60, 50, 40)),
    "python": ((150, 200, 50), (60, 50, 60)),
    "unknown": ((150, 160, 150), (50, 0, 0)),
    "root": ((210, 220, 210), (0, 0, 0)),
}


def name_hash(name: str) -> Tuple[float, float, float]:
    """Three stable fractions in [0, 1) from ``name``.  Template arguments
    and parameter lists are ignored so ``f<int>`` and ``f<long>`` look
    alike."""
    key = name
    for stop in ("(", "<"):
        i = key.find(stop)
        if i > 0:
            key = key[:i]
    h = zlib.crc32(key.encode("utf-8", "surrogatepass"))
    h2 = zlib.crc32(key[::-1].encode("utf-8", "surrogatepass"))
    return ((h & 0xFFFF) / 65536.0, (h >> 16) / 65536.0, (h2 & 0xFFFF) / 65536.0)


def _hex(r: float, g: float, b: float) -> str:
    return "#%02x%02x%02x" % (max(0, min(255, int(r))), max(0, min(255, int(g))), max(0, min(255, int(b))))


def frame_colour(frame: Frame, memory: bool = False, root: bool = False) -> str:
    """Fill colour (``#rrggbb``) for ``frame``."""
    table = _MEMORY if memory else _CPU
    category = "root" if root else frame.category
    (br, bg, bb), (rr, rg, rb) = table.get(category, table["unknown"])
    v1, v2, v3 = name_hash(frame.name)
    if category in ("unknown", "root"):
        grey = br + rr * v1
        return _hex(grey, grey, grey + (5 if memory else 0))
    return _hex(br + rr * v1, bg + rg * v2, bb + rb * v3)


def diff_colour(delta: float) -> str:
    """Differential colour: ``delta`` in [-1, 1] (share of the total gained,
    scaled so the largest change is 1).  Positive is red (grew), negative blue
    (shrank), zero white."""
    delta = max(-1.0, min(1.0, delta))
    fade = 255 - int(round(200 * abs(delta)))
    if delta > 0:
        return _hex(255, fade, fade)
    if delta < 0:
        return _hex(fade, fade, 255)
    return "#ffffff"
