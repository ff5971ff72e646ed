"""ctprof: a sampling CPU and heap profiler for native Linux programs.

Library API (see ``ctprof.api`` and the README)::

    ctprof.run(argv, hz=99, ...) -> Result        profile a command
    ctprof.attach(pid, duration=...) -> Result    profile a running process
    ctprof.load(path) -> Result                   a saved profile or folded file
    with ctprof.profile(hz=...) as p: ...         profile this Python process
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import AttachError, BuildError, CtprofError, FormatError, OutputError, TargetError, UsageError
from .profile import Frame, Profile

if TYPE_CHECKING:
    from .api import Profiler, Result, attach, load, profile, run

__version__ = "0.1.0"
__all__ = ["CtprofError", "UsageError", "TargetError", "AttachError", "FormatError", "BuildError", "OutputError",
           "Frame", "Profile",
           "Result", "Profiler", "run", "attach", "load", "profile", "__version__"]

# The API is imported at first use (PEP 562), not with the package:
# ``ctprof run`` imports this package too, and every module loaded before
# the program starts delays its start (the API pulls in the session and
# file modules).  Importing the submodule ``ctprof.profile`` above bound the
# name ``profile`` to it; it is dropped so that ``ctprof.profile`` is the
# API's function, as it always was (the submodule is imported first so that
# no later import of it rebinds the name).
globals().pop("profile")
_LAZY = {"Result": "api", "Profiler": "api", "run": "api", "attach": "api", "load": "api", "profile": "api"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ctprof' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
