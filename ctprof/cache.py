"""The per-user cache directory (compiled shim, symbol tables).

Created 0700.  A directory owned by someone else or writable by group/others
is refused: anything loaded from it (a shared library!) would be under
another user's control.
"""
from __future__ import annotations

import os
import stat

from .errors import BuildError


def cache_root() -> str:
    """``$CTPROF_CACHE_DIR``, else ``$XDG_CACHE_HOME/ctprof``, else ``~/.cache/ctprof``."""
    explicit = os.environ.get("CTPROF_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ctprof")


def _check_safe(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise BuildError(f"cache directory {path} is not a plain directory; remove it or set CTPROF_CACHE_DIR")
    if st.st_uid != os.geteuid():
        raise BuildError(f"cache directory {path} is owned by uid {st.st_uid}, not you; "
                         f"remove it or set CTPROF_CACHE_DIR")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BuildError(f"cache directory {path} is writable by group or others "
                         f"(mode {stat.S_IMODE(st.st_mode):o}); run 'chmod 700 {path}' or set CTPROF_CACHE_DIR")


def cache_dir(*parts: str) -> str:
    """A safe cache subdirectory, created 0700 if missing."""
    path = cache_root()
    for part in ("",) + parts:
        if part:
            path = os.path.join(path, part)
        try:
            os.makedirs(path, mode=0o700, exist_ok=False)
        except FileExistsError:
            pass
        except OSError as err:
            raise BuildError(f"cannot create cache directory {path}: {err.strerror}") from None
        _check_safe(path)
    return path


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) through the one output writer,
    :func:`ctprof.files.write_atomic`: a reader never sees half a file and
    two writers never collide.  Raises ``OSError`` (a cache write may fail
    quietly: callers catch it)."""
    from .errors import OutputError
    from .files import write_atomic as write
    try:
        write(path, lambda f: f.write(data), mode=0o600)
    except OutputError as err:
        raise OSError(str(err)) from None
