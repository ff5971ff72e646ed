"""One way to pause Python's cyclic garbage collector around bulk work."""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def paused_collector() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block.

    For the stages that build or walk 100,000 stacks after a run (heap
    stacks into raw stacks, resolution, saving, loading): they create no
    reference cycles, and the collector's passes over the growing heap
    would otherwise cost a third of their time.  Reference counting still
    frees everything as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
