"""Shared helpers: compile the C programs in tests/progs at test time, run
ctprof on them as a user would (``python -m ctprof ...``), read back the
saved profile."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGS = os.path.join(ROOT, "tests", "progs")
sys.path.insert(0, ROOT)


def ctprof_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if extra:
        env.update(extra)
    return env


class Built:
    """Compiles test programs once per session, keyed by source and flags."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.cache: Dict[Tuple[str, Tuple[str, ...]], str] = {}

    def __call__(self, source: str, *flags: str, name: Optional[str] = None, shared: bool = False) -> str:
        key = (source, flags + (("-shared",) if shared else ()))
        if key in self.cache:
            return self.cache[key]
        stem = name or os.path.splitext(source)[0] + ("-" + "-".join(f.strip("-").replace("=", "_") for f in flags) if flags else "")
        out = os.path.join(self.directory, stem + (".so" if shared else ""))
        compiler = "c++" if source.endswith(".cpp") else "cc"
        cmd = [compiler, "-O2", *flags, "-o", out, os.path.join(PROGS, source)]
        if shared:
            cmd[1:1] = ["-shared", "-fPIC"]
        if "pthread" not in " ".join(flags):
            cmd.append("-pthread")
        cmd.append("-ldl")
        subprocess.run(cmd, check=True, capture_output=True)
        self.cache[key] = out
        return out


@pytest.fixture(scope="session")
def build(tmp_path_factory) -> Built:
    return Built(str(tmp_path_factory.mktemp("progs")))


def ctprof(args: List[str], cwd: str, timeout: float = 120, input: Optional[bytes] = None,
           env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``python -m ctprof ARGS`` and return the completed process."""
    return subprocess.run([sys.executable, "-m", "ctprof", *args], cwd=cwd, capture_output=True,
                          timeout=timeout, input=input, env=ctprof_env(env))


def load_profile(path: str):
    from ctprof.session import load
    return load(path)


def stacks_by_name(profile, metric: str = "samples") -> List[Tuple[Tuple[str, ...], int]]:
    return list(profile.named_stacks(metric))


def share(profile, predicate, metric: str = "samples") -> float:
    """Fraction of the metric's total in stacks for which predicate(names) holds."""
    total = 0
    hit = 0
    for names, value in profile.named_stacks(metric):
        total += value
        if predicate(names):
            hit += value
    return hit / total if total else 0.0


HEAP_ROW_METRICS = ("alloc_count", "alloc_bytes", "leaked_bytes", "reachable_bytes", "peak_bytes")


def heap_rows(profile) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """Each heap row (a stack that allocated) by its frame names: its figures."""
    return {tuple(profile.frames[f].name for f in stack): tuple(profile.values[m][i] for m in HEAP_ROW_METRICS)
            for i, stack in enumerate(profile.stacks) if profile.values["alloc_count"][i]}


def heap_rows_at_the_end(path: str) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    """:func:`heap_rows` of the profile a saved run's raw session resolves
    to now, with nothing made while the program ran."""
    from ctprof import fileformat
    from ctprof.build import build_profile
    _, session = fileformat.load(path)
    return heap_rows(build_profile(session, progress=False))


def has_chain(names, chain) -> bool:
    """True if ``chain`` appears in ``names`` as consecutive frames."""
    n = len(chain)
    return any(tuple(names[i:i + n]) == tuple(chain) for i in range(len(names) - n + 1))


# -- CPython interpreters on this machine (Python-frame tests) -----------------

def _pyenv_root() -> Optional[str]:
    if os.environ.get("PYENV_ROOT"):
        return os.environ["PYENV_ROOT"]
    if shutil.which("pyenv"):
        done = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return None


def python_interpreters(which: str) -> List[str]:
    """Executables for ``which``: "system" (the distribution's python3, first
    on the default PATH ahead of any shims) or a minor version ("3.11")
    installed with pyenv.  Skips, saying what is missing, when there is none."""
    if which == "system":
        found = shutil.which("python3", path=os.defpath)
        if not found:
            pytest.skip(f"no python3 on the default PATH {os.defpath}")
        return [found]
    root = _pyenv_root()
    if not root:
        pytest.skip(f"CPython {which}: pyenv not found (no pyenv on PATH, PYENV_ROOT unset)")
    versions = os.path.join(root, "versions")
    names = sorted(n for n in (os.listdir(versions) if os.path.isdir(versions) else [])
                   if re.fullmatch(re.escape(which) + r"\.\d+", n))
    exes = [os.path.join(versions, n, "bin", "python3") for n in names]
    exes = [e for e in exes if os.access(e, os.X_OK)]
    if not exes:
        pytest.skip(f"no CPython {which} under {versions}")
    return exes
