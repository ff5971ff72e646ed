"""ctprof: a sampling CPU and heap profiler for native Linux programs.

Library API (see ``ctprof.api`` and the README)::

    ctprof.run(argv, hz=99, ...) -> Result        profile a command
    ctprof.attach(pid, duration=...) -> Result    profile a running process
    ctprof.load(path) -> Result                   a saved profile or folded file
    with ctprof.profile(hz=...) as p: ...         profile this Python process
"""
from .api import Profiler, Result, attach, load, profile, run
from .errors import AttachError, BuildError, CtprofError, FormatError, OutputError, TargetError, UsageError
from .profile import Frame, Profile

__version__ = "0.1.0"
__all__ = ["CtprofError", "UsageError", "TargetError", "AttachError", "FormatError", "BuildError", "OutputError",
           "Frame", "Profile",
           "Result", "Profiler", "run", "attach", "load", "profile", "__version__"]
