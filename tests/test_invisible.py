"""The default sampler leaves the program exactly as it is (issue 13).

Each program is compiled at test time and run twice, plain and under
``ctprof run`` (the kernel sampler, the default); what it does, prints and
returns must be the same, and the profile must still hold its work."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ctprof, has_chain, load_profile, share

PERF = shutil.which("perf")


def run_profile(tmp_path, argv, *options, timeout=120, name="out.ctprof"):
    out = str(tmp_path / name)
    proc = ctprof(["run", "-o", out, *options, "--", *argv], cwd=str(tmp_path), timeout=timeout)
    profile = load_profile(out)[0] if os.path.exists(out) else None
    return proc, profile


def plain(argv, timeout=60):
    return subprocess.run(argv, capture_output=True, timeout=timeout)


def names_in(profile):
    return {f.name.split(".")[0] for f in profile.frames}


def calls(names, function) -> bool:
    """``function`` is in the stack (gcc's clones such as ``f.constprop.0`` count)."""
    return any(n == function or n.startswith(function + ".") for n in names)


def at_least(expected: float) -> float:
    """A lower bound 5 standard deviations under a Poisson expectation."""
    return expected - 5 * math.sqrt(max(expected, 1.0))


def test_default_sampler_is_the_kernel(build, tmp_path):
    proc, profile = run_profile(tmp_path, [build("chain.c"), "0.3"])
    assert proc.returncode == 0, proc.stderr.decode()
    assert profile.metadata["timer"] == ["perf_event task-clock (kernel sampler)"]
    assert "LD_PRELOAD" not in proc.stderr.decode()


def test_shell_script_that_execs_survives(tmp_path):
    """A wrapper that ends in exec (pyenv's shims do): never killed by a
    signal of ours, at a high rate, run after run."""
    script = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; exec /bin/true"
    for _ in range(10):
        proc, profile = run_profile(tmp_path, ["/bin/sh", "-c", script], "--hz", "999", "-q")
        assert proc.returncode == 0, proc.stderr.decode()
        assert profile.metadata["exit_status"] == 0


def test_program_that_reexecs_itself(build, tmp_path):
    prog = build("inv_reexec.c")
    for _ in range(3):
        proc, profile = run_profile(tmp_path, [prog, "6", "0.05"], "--hz", "1000")
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"re-exec done" in proc.stdout
        # seven images of one process, each computed 0.05 s: all sampled
        images = profile.metadata["processes"]
        assert len(images) == 1
        assert profile.total("samples") >= at_least(7 * 0.05 * 1000)
        assert share(profile, lambda n: calls(n, "image_work")) > 0.9


def test_system_calls_never_interrupted(build, tmp_path):
    prog = build("inv_syscalls.c")
    base = plain([prog, "1.0"])
    assert base.returncode == 0 and base.stdout.strip() == b"eintr=0 short=0", base.stdout
    proc, profile = run_profile(tmp_path, [prog, "1.0"], "--hz", "1000")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.strip() == base.stdout.strip()
    assert profile.total("samples") > 100


def test_program_that_closes_all_descriptors_keeps_its_output(build, tmp_path):
    prog = build("inv_closefds.c")
    base_out = tmp_path / "plain.txt"
    base = plain([prog, str(base_out)])
    assert base.returncode == 0
    out = tmp_path / "profiled.txt"
    proc, profile = run_profile(tmp_path, [prog, str(out)], "--hz", "999")
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.read_text() == base_out.read_text() and out.read_text().count("\n") == 1000
    # every descriptor the program could open without us, it opens with us
    assert proc.stdout == base.stdout, (proc.stdout, base.stdout)
    assert profile.total("samples") > 0


def test_sixteen_kib_thread_stack(build, tmp_path):
    prog = build("inv_smallstack.c")
    assert plain([prog, "0.3"]).returncode == 0
    for hz in ("99", "1000"):
        proc, profile = run_profile(tmp_path, [prog, "0.3"], "--hz", hz)
        assert proc.returncode == 0, proc.stderr.decode()
        assert share(profile, lambda n: calls(n, "small_stack_work")) > 0.8


def test_ucontext_coroutines(build, tmp_path):
    prog = build("inv_coro.c")
    assert plain([prog, "0.3"]).returncode == 0
    for _ in range(4):
        proc, profile = run_profile(tmp_path, [prog, "0.4"], "--hz", "4000")
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"switches ok" in proc.stdout
        assert "coroutine_work" in names_in(profile)


@pytest.mark.parametrize("mode", ["wait", "fd"])
def test_blocked_signals_see_no_signal_of_ours(build, tmp_path, mode):
    prog = build("inv_sigblock.c")
    assert plain([prog, mode]).returncode == 0
    proc, profile = run_profile(tmp_path, [prog, mode], "--hz", "999")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert b"got SIGUSR1" in proc.stdout
    # two threads of 0.4 s of CPU each
    assert profile.total("samples") >= at_least(0.8 * 999)
    assert share(profile, lambda n: calls(n, "blocked_work")) > 0.8


def test_jit_frames_and_exceptions_do_not_deadlock(build, tmp_path):
    prog = build("inv_jit_throw.cpp")
    assert plain([prog, "0.3"]).returncode == 0
    proc, profile = run_profile(tmp_path, [prog, "1.0"], "--hz", "4000", timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"caught ok" in proc.stdout
    assert profile.total("samples") > 1000


def test_siglongjmp_out_of_the_programs_handler(build, tmp_path):
    prog = build("inv_longjmp.c")
    proc, profile = run_profile(tmp_path, [prog, "1.0"], "--hz", "499")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"jumps ok" in proc.stdout
    assert profile.total("samples") >= at_least(1.0 * 499)
    assert share(profile, lambda n: calls(n, "jumpy_work")) > 0.8


def test_daemon_followed_to_its_end(build, tmp_path):
    prog = build("inv_daemon.c")
    proc, profile = run_profile(tmp_path, [prog, "0.5"], "--hz", "499")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"following" in proc.stderr
    daemon = [(s, v) for s, v in profile.named_stacks("samples") if calls(s, "daemon_work")]
    assert sum(v for s, v in daemon) >= at_least(0.5 * 499)
    assert all(calls(s, "main") for s, v in daemon)
    assert len(profile.metadata["processes"]) >= 2


def test_killed_program_is_reported(build, tmp_path):
    prog = build("die.c")
    proc, profile = run_profile(tmp_path, [prog, "segv"], "--hz", "499")
    assert proc.returncode == 128 + 11
    assert b"killed by SIGSEGV" in proc.stderr
    assert profile.metadata["exit_status"] == 128 + 11


def test_dlopen_loop_costs_no_maps_per_call(build, tmp_path):
    """Mappings come from the kernel's MMAP2 records: 3000 dlopen/dlclose
    pairs add maps generations only when a sample needs one."""
    lib = build("plugin.c", shared=True, name="libplugin")
    prog = build("inv_dlopen_loop.c")
    proc, profile = run_profile(tmp_path, [prog, lib, "3000"], "--hz", "99")
    assert proc.returncode == 0, proc.stderr.decode()
    from ctprof.session import load
    _profile, session = load(str(tmp_path / "out.ctprof"))
    if session is not None:
        gens = sum(len(p.maps) for p in session.processes.values())
        assert gens <= profile.total("samples") + 2


def test_short_threads_against_perf(build, tmp_path):
    """Short threads are followed by inherited events, as perf record
    follows them: ctprof's share of their function matches perf's on the
    same program, and the threads too short to be sampled are named."""
    prog = build("inv_short_threads.c")
    proc, profile = run_profile(tmp_path, [prog, "200", "0.2"], "--hz", "1000")
    assert proc.returncode == 0, proc.stderr.decode()
    ours = share(profile, lambda n: calls(n, "short_work"))
    n = profile.total("samples")
    assert n >= at_least(0.2 * 1000)
    assert b"got no sample" in proc.stderr
    if PERF is None:
        pytest.fail("perf is not installed (apt-get install linux-perf)")
    data = str(tmp_path / "perf.data")
    rec = subprocess.run([PERF, "record", "-q", "-F", "1000", "-o", data, prog, "200", "0.2"],
                         capture_output=True, timeout=60)
    assert rec.returncode == 0, rec.stderr
    script = subprocess.run([PERF, "script", "-i", data, "-F", "ip,sym"], capture_output=True, timeout=60,
                            text=True)
    syms = [line.split()[-1] for line in script.stdout.splitlines() if len(line.split()) >= 2]
    assert syms, script.stderr
    theirs = sum(1 for s in syms if s.startswith("short_work")) / len(syms)
    # binomial spread of both estimates, 5 sigma
    sigma = math.sqrt(max(ours * (1 - ours), 0.01) / n) * 2
    assert abs(ours - theirs) <= 5 * sigma + 0.02, (ours, theirs)
