"""ctprof: a sampling CPU and heap profiler for native Linux programs."""
from .errors import CtprofError
from .profile import Frame, Profile

__version__ = "0.1.0"
__all__ = ["CtprofError", "Frame", "Profile", "__version__"]
