"""Compile the C shim at first use and cache it per user.

The library is keyed by a hash of its sources, the compiler (path and
version) and the flags, so editing a source or switching compilers builds a
new one and never reuses a stale one.  It is built under a temporary name
and renamed into place, so two first runs at once never see half a file.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from typing import Dict, List, Optional

from ..cache import cache_dir
from ..errors import BuildError

# ctprof/_shim is a symlink to the top-level shim/ in the source tree; an
# installed package carries the files themselves there as package data.
SHIM_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_shim")
# -Wl,-z,now: every symbol the shim uses is bound at load time, so the
# sampling handler never runs the lazy-binding resolver (which needs a few
# KiB of stack, more than a thread with a 16 KiB stack may have left).
# -static-libgcc with --exclude-libs: the heap hooks' last-resort unwinder
# (libgcc's _Unwind_Backtrace) is a private copy inside the shim, exported
# to no one.  libgcc_s is then not loaded into a C program at all (its
# pages were 100 KiB of the program's RSS), and the copy never takes the
# lock of the program's libgcc_s, which that one holds while it allocates
# (sorting a JIT's registered frames) -- the hook would wait on it forever.
CFLAGS = ["-O2", "-g", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden",
          "-ftls-model=initial-exec", "-fno-omit-frame-pointer", "-Wall", "-Wl,-z,now",
          "-static-libgcc", "-Wl,--exclude-libs,ALL"]
LIBS = ["-ldl"]  # no libm: its pages would count in the profiled program's RSS (heap.c has its own ln)


#: Which C files go into each build of the shim.  "cpu" is preloaded by
#: ``ctprof run``; "mem" adds the heap hooks (``--mem``: CPU-only runs must
#: not pay for them); "self" is loaded into Python with ctypes for
#: self-profiling.  Headers are always hashed.  "cpu" is also the
#: controller's own copy (ring drain, heap consumer, and stackmap.c: the
#: symbols stage's lookup of many heap stacks' addresses at once).
COMMON_SOURCES = ("util.c", "ring.c", "cfi.c", "unwind.c", "sampler.c", "maps.c", "preload.c", "collect.c",
                  "pylocal.c", "pywalk.c")
VARIANTS = {
    "cpu": COMMON_SOURCES + ("stackmap.c",),
    "mem": COMMON_SOURCES + ("heap.c", "heaphooks.c"),
    "self": COMMON_SOURCES + ("selfprof.c",),
    # The controller's Python-frame reader (capture/pystacks.py), never preloaded.
    "pyreader": ("pyreader.c", "pywalk.c"),
}
VARIANT_FLAGS = {"cpu": [], "mem": ["-DCTPROF_HEAP=1"], "self": ["-DCTPROF_SELF=1"], "pyreader": []}


def shim_sources(variant: str = "cpu") -> List[str]:
    """The C sources of ``variant`` plus every header, as paths."""
    names = VARIANTS.get(variant)
    if names is None:
        raise BuildError(f"unknown shim variant {variant!r}")
    try:
        headers = sorted(n for n in os.listdir(SHIM_DIR) if n.endswith(".h"))
    except OSError:
        headers = []
    paths = [os.path.join(SHIM_DIR, n) for n in list(names) + headers]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing or not headers:
        raise BuildError(f"shim sources missing in {SHIM_DIR} ({', '.join(os.path.basename(m) for m in missing) or 'headers'}); "
                         f"the installation is incomplete")
    return paths


def find_compiler() -> str:
    """``$CC`` else ``cc``; a clear error if neither exists."""
    cc = os.environ.get("CC") or "cc"
    path = shutil.which(cc.split()[0]) if cc.split() else None
    if not path:
        raise BuildError(f"no C compiler found ('{cc}'): ctprof compiles a small shim at first use; "
                         f"install one (Debian/Ubuntu: apt-get install gcc) or set CC")
    return path


#: ``cc --version``'s answer per compiler file as os.stat sees it (path,
#: device, inode, size, mtime), for this process only: ``run --mem`` asks
#: for three variants before the program starts, and each asked the
#: compiler again.  A compiler replaced since is another file: asked anew.
_identities: Dict[tuple, str] = {}


def _compiler_identity(cc: str) -> str:
    try:
        st = os.stat(cc)
        key: Optional[tuple] = (cc, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key in _identities:
        return _identities[key]
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    identity = out.stdout.splitlines()[0] if out.stdout else ""
    if key is not None and out.returncode == 0:
        _identities[key] = identity
    return identity


def shim_key(cc: str, sources: List[str], flags: List[str]) -> str:
    h = hashlib.sha256()
    for path in sources:
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(cc.encode() + b"\0" + _compiler_identity(cc).encode() + b"\0")
    h.update(" ".join(flags + LIBS).encode())
    return h.hexdigest()[:20]


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _build_failure(proc: "Optional[subprocess.CompletedProcess]") -> str:
    """One line saying why a compile produced no library: the compiler's
    first error line, or what it did instead (``CC=false`` says nothing,
    ``CC=/bin/true`` succeeds without writing anything)."""
    if proc is None:
        return "it ran for more than 300 s"
    lines = [l.strip() for l in (proc.stderr + "\n" + proc.stdout).splitlines() if l.strip()]
    first = next((l for l in lines if "error" in l), lines[0] if lines else "")
    if first:
        return first[:300]
    if proc.returncode != 0:
        return f"it exited with status {proc.returncode} and printed nothing (is it a C compiler? set CC)"
    return "it wrote no shared library (is it a C compiler? set CC)"


def shim_path(variant: str = "cpu", cc: Optional[str] = None, extra_flags: Optional[List[str]] = None) -> str:
    """Path of the compiled shim ``variant``, building it if needed.
    ``extra_flags`` (e.g. ``-I`` for Python headers) join the cache key."""
    sources = shim_sources(variant)
    cc = cc or find_compiler()
    flags = CFLAGS + VARIANT_FLAGS[variant] + list(extra_flags or [])
    key = shim_key(cc, sources, flags)
    directory = cache_dir("shim")
    target = os.path.join(directory, f"libctprof-{variant}-{key}.so")
    if os.path.exists(target):
        return target
    tmp = f"{target}.build.{os.getpid()}"
    cmd = [cc] + flags + ["-o", tmp] + [s for s in sources if s.endswith(".c")] + LIBS
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except OSError as err:
        raise BuildError(f"cannot run the C compiler {cc}: {err.strerror}") from None
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0 or not _is_elf(tmp):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise BuildError(f"compiling the shim with {cc} failed: {_build_failure(proc)}")
    os.chmod(tmp, 0o700)
    os.replace(tmp, target)  # atomic: a concurrent build just replaces an identical file
    return target
