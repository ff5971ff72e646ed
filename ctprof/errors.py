"""Typed errors.  The library raises these; the command line turns them into
one clear line on stderr and a non-zero exit status (never a traceback)."""


class CtprofError(Exception):
    """Base of every error ctprof reports to the user.  ``str(err)`` is the
    one-line message; ``exit_status`` is what the CLI exits with."""

    exit_status = 2


class UsageError(CtprofError):
    """Bad arguments: an invalid rate, an unknown metric, a missing file."""


class TargetError(CtprofError):
    """The program to profile cannot be run under the shim (missing, not
    executable, static, setuid)."""

    exit_status = 127


class BuildError(CtprofError):
    """The C shim could not be compiled (no compiler, compile failure) or its
    cache directory is unsafe."""


class FormatError(CtprofError):
    """An input file (profile, folded stacks) is malformed.  The message names
    the file and, where it applies, the line."""


class AttachError(CtprofError):
    """A running process cannot be attached to (missing, not permitted)."""


class OutputError(CtprofError):
    """An output file cannot be written (missing or read-only directory, a
    directory in the way, a full disk).  The message names the file."""
