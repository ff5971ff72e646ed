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


_CONTROL = {c: f"\\x{c:02x}" for c in list(range(0x20)) + list(range(0x7f, 0xa0))}
_CONTROL.update({0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r", 0x1b: "\\e"})
_CONTROL_KEEP_LINES = {c: v for c, v in _CONTROL.items() if c != 0x0a}


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` safe for a terminal: control characters (escape sequences
    that could rewrite the screen, carriage returns, and line breaks unless
    ``keep_newlines``) shown as ``\\e``, ``\\n``, ``\\x07``...  Symbol names,
    thread names and paths come from the program and the file system, and
    may hold anything."""
    return text.translate(_CONTROL_KEEP_LINES if keep_newlines else _CONTROL)
