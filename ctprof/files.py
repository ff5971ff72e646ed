"""Files: the one way ctprof writes its outputs and opens inputs others can touch.

Profilers run as root, on shared machines, next to files other users may
have planted.  Everything here follows from that:

* :func:`write_atomic` is the only output writer.  The data goes to a
  temporary file created next to the destination with an unpredictable name
  and ``O_CREAT|O_EXCL|O_NOFOLLOW`` (nobody can have planted a link or file
  there in advance), then is renamed onto the destination.  A rename replaces
  a symbolic link planted at the destination instead of writing through it,
  and a reader never sees half a file; on any error the temporary is removed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import sys
from typing import BinaryIO, Callable, Iterator

from .errors import OutputError

#: Attempts at an unused temporary name before giving up (each name has 64
#: random bits, so a second attempt only happens if someone is guessing).
_TEMP_ATTEMPTS = 16


def _describe(err: OSError) -> str:
    """``permission denied`` rather than ``[Errno 13] Permission denied: 'x'``."""
    return (err.strerror or str(err)).lower()


def _temporary_name(path: str) -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")


def _create_temporary(path: str, mode: int) -> "tuple[int, str]":
    """Create and open a fresh temporary file beside ``path``; never one that
    existed before (``O_EXCL``), never through a link (``O_NOFOLLOW``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TEMP_ATTEMPTS):
        tmp = _temporary_name(path)
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"{path}: cannot write: {_describe(err)}") from None
    raise OutputError(f"{path}: cannot write: no unused temporary name in {_TEMP_ATTEMPTS} attempts")


def _trusted_link(path: str, link: os.stat_result) -> bool:
    """Would the kernel's ``protected_symlinks`` rule let us follow this
    link?  Not if it sits in a sticky world-writable directory (``/tmp``)
    and belongs neither to us nor to the directory's owner: such a link may
    have been planted by another user."""
    try:
        parent = os.stat(os.path.dirname(path) or ".")
    except OSError:
        return False
    shared = parent.st_mode & stat.S_ISVTX and parent.st_mode & stat.S_IWOTH
    return not shared or link.st_uid in (os.geteuid(), parent.st_uid)


def special_destination(path: str) -> bool:
    """True if ``path`` is a device, FIFO or socket (``/dev/null``,
    ``/dev/stdout``, a pipe): such a destination is written into, since
    replacing it by a regular file would break it.  A link to one that may
    have been planted by another user does not count: it is replaced."""
    try:
        target = os.stat(path)
    except OSError:
        return False
    if stat.S_ISREG(target.st_mode) or stat.S_ISDIR(target.st_mode):
        return False
    link = os.lstat(path)
    return not stat.S_ISLNK(link.st_mode) or _trusted_link(path, link)


def _open_special(path: str) -> int:
    # O_NONBLOCK so a FIFO nobody reads is an error, not a hang.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        why = "nothing reads this FIFO" if err.errno == errno.ENXIO else _describe(err)
        raise OutputError(f"{path}: cannot write: {why}") from None
    os.set_blocking(fd, True)
    return fd


@contextlib.contextmanager
def atomic_output(path: str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """The binary file :func:`write_atomic` writes, as a context manager:
    the file appears at ``path`` when the ``with`` block ends without an
    error, and not at all otherwise."""
    if os.path.isdir(path) and not os.path.islink(path):
        raise OutputError(f"{path}: is a directory")
    if special_destination(path):
        try:
            with os.fdopen(_open_special(path), "wb") as out:
                yield out
        except OSError as err:
            raise OutputError(f"{path}: cannot write: {_describe(err)}") from None
        return
    fd, tmp = _create_temporary(path, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise OutputError(f"{path}: cannot write: {_describe(err)}") from None
        raise


def write_atomic(path: str, produce: Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """Write a file through ``produce(fileobj)``, all or nothing.

    ``produce`` writes the complete contents to the binary file object it is
    given.  The file appears at ``path`` only once it is complete; a symbolic
    link at ``path`` is replaced, never written through; ``mode`` is the new
    file's permission (less the umask).  A device or FIFO at ``path`` (like
    ``/dev/null``) is written into instead.  Any failure removes the
    temporary file; an ``OSError`` becomes :class:`~ctprof.errors.OutputError`
    with one line, any other error raised by ``produce`` passes through.
    """
    with atomic_output(path, mode) as out:
        produce(out)


def write_output(path: str, produce: Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """:func:`write_atomic`, with ``-`` meaning standard output."""
    if path == "-":
        sys.stdout.flush()
        produce(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        write_atomic(path, produce, mode)
