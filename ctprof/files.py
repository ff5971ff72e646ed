"""Files: the one way ctprof writes its outputs and opens inputs others can touch.

Profilers run as root, on shared machines, next to files other users may
have planted.  Everything here follows from that:

* :func:`write_atomic` is the only output writer.  The data goes to a
  temporary file created next to the destination with an unpredictable name
  and ``O_CREAT|O_EXCL|O_NOFOLLOW`` (nobody can have planted a link or file
  there in advance), then is renamed onto the destination.  A rename replaces
  a symbolic link planted at the destination instead of writing through it,
  and a reader never sees half a file; on any error the temporary is removed.
* :func:`check_outputs` refuses, before a program runs, every output that
  could only fail after it; :func:`reserve_new_file` takes a default name
  atomically; :func:`fallback_directories` is where a profile goes if its own
  path fails anyway.
* :func:`read_shared_file` reads what sits in ``/tmp`` (perf maps) without
  following links or blocking, only from the program's own user.
* :func:`open_input` opens an input once, so pipes and FIFOs are streams.
* :func:`private_session_dir` names session directories after their
  controller and removes those of controllers that are gone.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional

from .errors import OutputError, UsageError

#: Attempts at an unused temporary name before giving up (each name has 64
#: random bits, so a second attempt only happens if someone is guessing).
_TEMP_ATTEMPTS = 16


def _describe(err: OSError) -> str:
    """``permission denied`` rather than ``[Errno 13] Permission denied: 'x'``."""
    return (err.strerror or str(err)).lower()


def _random_token() -> str:
    """16 hex digits from os.urandom, as ``secrets.token_hex(8)`` makes them
    (importing secrets -- hmac, OpenSSL's hashlib, random -- delayed the
    start of every ``ctprof run``)."""
    return os.urandom(8).hex()


def _temporary_name(path: str) -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.{_random_token()}.tmp")


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
    try:
        # A file being replaced keeps any permission its owner took away
        # (a profile made private stays private).
        existing = os.lstat(path)
        if stat.S_ISREG(existing.st_mode):
            mode &= stat.S_IMODE(existing.st_mode)
    except OSError:
        pass
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


# -- outputs of run/attach: checked before the program starts ------------------

def _parent(path: str) -> str:
    return os.path.dirname(path) or "."


def check_output(path: str, what: str = "output") -> None:
    """Refuse now an output that could only fail after a long run: its
    directory missing, not a directory or not writable, a directory at the
    path itself, or a file another user owns in a shared directory (which a
    rename may not replace).  ``-`` (standard output), devices and FIFOs
    pass."""
    if path == "-" or special_destination(path):
        return
    if os.path.isdir(path):
        raise OutputError(f"{what} {path}: is a directory")
    parent = _parent(path)
    why = directory_unwritable(parent)
    if why:
        raise OutputError(f"{what} {path}: {why}")
    try:
        existing = os.lstat(path)
        parent_st = os.stat(parent)
    except OSError:
        return
    shared = parent_st.st_mode & stat.S_ISVTX
    if shared and os.geteuid() != 0 and existing.st_uid not in (os.geteuid(), parent_st.st_uid):
        raise OutputError(f"{what} {path}: belongs to another user in a shared directory")


def directory_unwritable(directory: str) -> Optional[str]:
    """Why files cannot be created in ``directory`` (``directory x does not
    exist``, ``cannot write in x: permission denied``...), or None."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return f"directory {directory} does not exist"
    except NotADirectoryError:
        return f"{directory} is not a directory"
    except OSError as err:
        return f"{directory}: {_describe(err)}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory"
    # The honest test: create a file as the writer will (root passes every
    # permission check, but not a read-only mount).
    tmp = os.path.join(directory, f".ctprof-probe.{_random_token()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        return f"cannot write in {directory}: {_describe(err)}"
    os.close(fd)
    os.unlink(tmp)
    return None


def _identity(path: str) -> "tuple[int, int, str]":
    """What names one directory entry, whatever the spelling of its path."""
    st = os.stat(_parent(path))
    return st.st_dev, st.st_ino, os.path.basename(path)


def check_outputs(outputs: Dict[str, Optional[str]], program: Optional[str] = None) -> None:
    """:func:`check_output` for each ``{option: path}`` given, and no two
    the same file, and none the program itself."""
    seen: Dict[object, str] = {}
    for what, path in outputs.items():
        if not path:
            continue
        check_output(path, what)
        if path == "-" or special_destination(path):
            continue
        key = _identity(path)
        if key in seen:
            raise OutputError(f"{what} {path}: the same file as {seen[key]}")
        seen[key] = f"{what} {path}"
        if program and (key == _identity(program) or _same_file(path, program)):
            raise OutputError(f"{what} {path}: is the program being profiled")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def reserve_new_file(directory: str, stem: str, suffix: str, mode: int = 0o644) -> str:
    """Create an empty ``STEM SUFFIX`` (or ``STEM-2 SUFFIX``, ``-3``...) in
    ``directory`` that did not exist before, atomically (``O_EXCL``), and
    return its path: two runs started in the same second never get the same
    name.  The file is replaced by :func:`write_atomic` later."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for n in range(1, 10000):
        name = f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}"
        path = name if directory in ("", ".") else os.path.join(directory, name)
        try:
            os.close(os.open(path, flags, mode))
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"cannot create {path}: {_describe(err)}") from None
    raise OutputError(f"cannot create {stem}{suffix} in {directory}: every name is taken")


def fallback_directories(failed: str) -> List[str]:
    """Where to save a profile whose own path failed after the run: the
    current directory, the home directory, the temporary directory."""
    import tempfile
    candidates = [".", os.path.expanduser("~"), tempfile.gettempdir()]
    failed_dir = os.path.realpath(_parent(failed))
    return [d for d in candidates if os.path.isdir(d) and os.path.realpath(d) != failed_dir]


# -- inputs in shared directories ----------------------------------------------

#: Largest perf map (or other shared-directory input) read; JIT maps of big
#: runtimes reach a few MiB.
SHARED_INPUT_LIMIT = 64 << 20


def read_shared_file(path: str, owner_uid: int, limit: int = SHARED_INPUT_LIMIT) -> "tuple[Optional[str], Optional[str]]":
    """Read a file that sits where any user can create files (``/tmp``),
    as perf reads ``/tmp/perf-PID.map``: ``(text, None)`` if it is a regular
    file owned by ``owner_uid`` with a single link and at most ``limit``
    bytes, else ``(None, note)`` with a one-line reason (``(None, None)`` if
    there is no such file).  Never follows a symbolic link (another user may
    plant one to a private file) and never blocks (a FIFO is refused, not
    waited on)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None, None
    except OSError as err:
        why = "a symbolic link" if err.errno == errno.ELOOP else _describe(err)
        return None, f"ignored {path}: {why}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"ignored {path}: not a regular file"
        if st.st_uid != owner_uid:
            return None, f"ignored {path}: owned by uid {st.st_uid}, not by the program's user (uid {owner_uid})"
        if st.st_nlink != 1:
            return None, f"ignored {path}: it has {st.st_nlink} hard links"
        if st.st_size > limit:
            return None, f"ignored {path}: larger than {limit >> 20} MiB"
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            return None, f"ignored {path}: larger than {limit >> 20} MiB"
        return b"".join(chunks).decode("utf-8", errors="replace"), None
    except OSError as err:
        return None, f"ignored {path}: {_describe(err)}"
    finally:
        os.close(fd)


def process_uid(pid: int, default: int) -> int:
    """The user a process runs as, or ``default`` if it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return default


def process_state(pid: int) -> Optional[str]:
    """The state letter of ``pid`` (``/proc/PID/stat``: R, S, D, Z, X, ...),
    None if it cannot be read (no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    state = text[text.rfind(b")") + 2:text.rfind(b")") + 3]
    return state.decode("ascii", "replace") or None


def process_running(pid: int) -> bool:
    """Is ``pid`` alive (not a zombie)?"""
    return process_state(pid) not in (None, "Z", "X")


# -- session directories --------------------------------------------------------

def _start_ticks(pid: str) -> Optional[str]:
    """Field 22 of ``/proc/PID/stat`` (when the process started): with the
    pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _remove_stale_sessions(base: str, prefix: str) -> None:
    """Remove our own session directories whose controller is gone (killed
    with SIGKILL, or the machine lost power), so they do not pile up in
    ``/dev/shm`` forever.  Only directories this user owns, named after a
    controller (pid and start time) that no longer runs."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    import shutil
    for name in names:
        parts = name[len(prefix):].split("-", 2)
        if not name.startswith(prefix) or len(parts) != 3 or not parts[0].isdigit():
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            continue
        if _start_ticks(parts[0]) == parts[1]:
            continue  # its controller still runs
        shutil.rmtree(path, ignore_errors=True)  # fd-based: never follows a link out


def private_session_dir(base: Optional[str], prefix: str = "ctprof-") -> str:
    """A new private (0700) directory in ``base`` named after this
    controller (``ctprof-PID-STARTTICKS-random``), after removing the ones
    left by controllers that no longer exist."""
    import tempfile
    base = base or tempfile.gettempdir()
    _remove_stale_sessions(base, prefix)
    me = str(os.getpid())
    return tempfile.mkdtemp(prefix=f"{prefix}{me}-{_start_ticks(me) or 0}-", dir=base)


# -- inputs ---------------------------------------------------------------------

def open_input(path: str) -> "io.BufferedReader":
    """Open an input for reading, once: ``-`` is standard input, and a FIFO
    or ``<(...)`` is read as the stream it is (never opened twice, which
    would lose what the first open read).  Errors are one line:
    ``no such file``, ``permission denied``, ``is a directory``.  The
    returned reader supports ``peek`` for sniffing the format."""
    if path == "-":
        raw = sys.stdin.buffer
        return raw if hasattr(raw, "peek") else io.BufferedReader(raw)  # type: ignore[arg-type]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except NotADirectoryError:
        raise UsageError(f"{path}: no such file (a part of the path is not a directory)") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a profile") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read: {_describe(err)}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path}: is a directory, not a profile")
    return os.fdopen(fd, "rb")  # type: ignore[return-value]


def is_stream(fileobj: BinaryIO) -> bool:
    """True for a pipe, FIFO, socket or terminal: something that can be
    read only once, from the start."""
    try:
        return not stat.S_ISREG(os.fstat(fileobj.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return True


def open_regular(path: str) -> int:
    """A read-only descriptor of ``path`` if it is a regular file, else
    ``OSError``.  For files named by others (the paths of a process's
    mappings, which may have been replaced since): opened ``O_NONBLOCK`` so
    a FIFO put there is refused instead of waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd
