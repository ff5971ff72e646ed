"""The shim is compiled at first use into a safe per-user cache."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import venv

import pytest

from conftest import ROOT, ctprof, ctprof_env

BUILD = ("import sys; sys.path.insert(0, %r)\n"
         "from ctprof.capture.build import shim_path\nprint(shim_path())\n") % ROOT


def build_in(cache: str, extra_env=None) -> subprocess.CompletedProcess:
    env = ctprof_env({"CTPROF_CACHE_DIR": cache, **(extra_env or {})})
    return subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True, env=env, timeout=120)


def test_first_use_builds_private_cache(tmp_path):
    cache = str(tmp_path / "cache")
    proc = build_in(cache)
    assert proc.returncode == 0, proc.stderr
    lib = proc.stdout.strip()
    assert lib.startswith(cache) and os.path.exists(lib)
    for d in (cache, os.path.dirname(lib)):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    # a second use reuses the same file
    again = build_in(cache)
    assert again.stdout.strip() == lib
    assert os.stat(lib).st_mtime == os.stat(again.stdout.strip()).st_mtime


def test_concurrent_first_builds_do_not_race(tmp_path):
    cache = str(tmp_path / "cache")
    env = ctprof_env({"CTPROF_CACHE_DIR": cache})
    procs = [subprocess.Popen([sys.executable, "-c", BUILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    leftovers = [n for n in os.listdir(os.path.dirname(paths.pop())) if ".build." in n]
    assert leftovers == []


def test_unsafe_cache_refused(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    proc = build_in(str(cache))
    assert proc.returncode != 0
    assert "writable by group or others" in proc.stderr


def test_cache_owned_by_someone_else_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to create a directory owned by another user")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)
    out = str(tmp_path / "o.ctprof")
    proc = ctprof(["run", "--mem", "-o", out, "--", "true"], cwd=str(tmp_path), env={"CTPROF_CACHE_DIR": str(cache)})
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert err.startswith("ctprof: error: cache directory") and "owned by uid 65534" in err
    assert "Traceback" not in err


def test_no_compiler_is_one_clear_line(tmp_path):
    """The shim (``--mem``, ``--sampler signal``) needs a compiler at first
    use; without one: one line.  The kernel sampler needs none."""
    env = {"CC": "no-such-cc", "CTPROF_CACHE_DIR": str(tmp_path / "c")}
    for option in ("--mem", "--sampler=signal"):
        proc = ctprof(["run", option, "--", "true"], cwd=str(tmp_path), env=env)
        assert proc.returncode == 2
        err = proc.stderr.decode().strip()
        assert len(err.splitlines()) == 1
        assert "no C compiler found" in err and "apt-get install gcc" in err
    proc = ctprof(["run", "-q", "-o", str(tmp_path / "k.ctprof"), "--", "true"], cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr.decode()


def test_pip_install_into_fresh_venv(tmp_path, build):
    """A non-editable install carries the shim sources as package data."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    pip = subprocess.run([py, "-m", "pip", "install", "--no-deps", "-q", ROOT],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    prog = build("chain.c")
    out = str(tmp_path / "v.ctprof")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CTPROF_CACHE_DIR"] = str(tmp_path / "cache")
    run = subprocess.run([str(env_dir / "bin" / "ctprof"), "run", "-o", out, "--", prog, "0.2"],
                         capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "hot_leaf" in run.stderr
    installed = subprocess.run([py, "-c", "import ctprof, os; print(os.path.dirname(ctprof.__file__))"],
                               capture_output=True, text=True, cwd=str(tmp_path), env=env).stdout.strip()
    assert str(env_dir) in installed
    assert os.path.isfile(os.path.join(installed, "_shim", "sampler.c"))
