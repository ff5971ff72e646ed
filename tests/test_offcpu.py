"""``ctprof run --off-cpu`` / ``attach --off-cpu`` (issue 11): where threads
wait, on one scale with where they compute.  The programs measure their own
phases; the profile must agree, name the reasons, and leave the program's
system calls alone."""
from __future__ import annotations

import math
import os
import subprocess

import pytest

from conftest import ROOT, ctprof, load_profile

PHASE = 0.4
HZ = 199


def run_profile(tmp_path, argv, *options):
    out = str(tmp_path / "off.ctprof")
    proc = ctprof(["run", "--off-cpu", "-o", out, *options, "--", *argv], cwd=str(tmp_path))
    profile = load_profile(out)[0] if os.path.exists(out) else None
    return proc, profile


def seconds(profile, metric, predicate) -> float:
    return sum(v for names, v in profile.named_stacks(metric) if predicate(names)) / 1e6


def measured(stdout: bytes) -> dict:
    return {k: float(v) for k, v in (line.split() for line in stdout.decode().splitlines())}


@pytest.fixture(scope="module")
def phases(build, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offcpu")
    proc, profile = run_profile(tmp, [build("offcpu_phases.c"), str(PHASE)], "--hz", str(HZ))
    assert proc.returncode == 0, proc.stderr.decode()
    return proc, profile, measured(proc.stdout)


def test_waits_have_their_reason_and_their_measured_length(phases):
    proc, profile, truth = phases
    assert truth["eintr"] == 0                          # no wait of the program was cut short
    tolerance = 0.03                                    # scheduling wake-up latency, generous
    # each wait as the program timed it around its blocking call (not the
    # phase: the mutex phase first naps 20 ms, longer on a loaded machine,
    # so that the other thread holds the lock)
    cases = [("phase_sleep", "[off-cpu: nanosleep]", truth["sleep_wait"]),
             ("phase_condvar", "[off-cpu: futex]", truth["condvar_wait"]),
             ("phase_pipe", "[off-cpu: read]", truth["pipe_wait"]),
             ("phase_mutex", "[off-cpu: futex]", truth["mutex_wait"])]
    for function, reason, expected in cases:
        got = seconds(profile, "offcpu", lambda n: function in n and n[-1] == reason)
        assert abs(got - expected) <= tolerance, (function, reason, got, expected)
    # every off-CPU stack ends in exactly one reason frame
    for names, value in profile.named_stacks("offcpu"):
        if value:
            assert names[-1].startswith("[off-cpu: ") and sum(n.startswith("[off-cpu") for n in names) == 1


def test_wall_time_of_computing_is_its_samples_plus_its_preemptions(phases):
    proc, profile, truth = phases
    on_cpu = [v for names, v in profile.named_stacks("samples") if "phase_compute" in names]
    n = sum(on_cpu)
    wall = seconds(profile, "wall", lambda names: "phase_compute" in names)
    period = 1.0 / HZ
    # the samples count CPU time in whole periods; 5 sigma of that count, plus a period
    assert abs(wall - truth["compute"]) <= 5 * math.sqrt(max(n, 1)) * period + period, (wall, truth["compute"], n)


def test_wall_total_is_the_threads_lifetimes(phases):
    """Main lives through all five phases; each helper thread through one."""
    proc, profile, truth = phases
    main_total = sum(truth[k] for k in ("compute", "sleep", "mutex", "condvar", "pipe"))
    main_tid = [t for t in set(profile.tids) if t in set(profile.pids)][0]
    wall_main = sum(v for v, t in zip(profile.values["wall"], profile.tids) if t == main_tid) / 1e6
    assert abs(wall_main - main_total) <= 0.1 + 5 * math.sqrt(truth["compute"] * HZ) / HZ, (wall_main, main_total)


def test_run_prints_time_per_thread_and_top_waits(phases):
    proc, profile, truth = phases
    err = proc.stderr.decode()
    assert "Time per thread" in err and "Top 5 waits" in err and "[off-cpu: futex]" in err
    assert profile.metadata["units"]["wall"] == profile.metadata["units"]["offcpu"] == "microseconds"


def test_svg_colours_and_legend(build, tmp_path):
    proc, profile = run_profile(tmp_path, [build("offcpu_phases.c"), "0.1"], "--metric", "wall",
                                "--svg", str(tmp_path / "wall.svg"))
    assert proc.returncode == 0, proc.stderr.decode()
    svg = (tmp_path / "wall.svg").read_text()
    assert "[off-cpu: nanosleep]" in svg and "off-CPU (waiting)" in svg
    report = ctprof(["report", str(tmp_path / "off.ctprof"), "--metric", "offcpu"], cwd=str(tmp_path))
    assert report.returncode == 0
    assert "Time per thread" in report.stdout.decode()
    assert "[off-cpu: read]" in report.stdout.decode()
    bad = ctprof(["run", "--metric", "offcpu", "--", "true"], cwd=str(tmp_path))
    assert bad.returncode != 0 and "need --off-cpu" in bad.stderr.decode()


def test_attach_off_cpu(build, tmp_path):
    prog = build("offcpu_sleeper.c")
    # lives far past the 1.5 s window (it is killed below): a slow start of
    # ctprof on a loaded machine must not see it exit mid-window
    target = subprocess.Popen([prog, "30"])
    try:
        out = str(tmp_path / "a.ctprof")
        proc = ctprof(["attach", str(target.pid), "--off-cpu", "--duration", "1.5", "-o", out], cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr.decode()
    finally:
        target.kill()
        target.wait()
    profile = load_profile(out)[0]
    slept = seconds(profile, "offcpu", lambda n: "nap" in n and n[-1] == "[off-cpu: nanosleep]")
    assert 1.0 <= slept <= 1.6, slept


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run ctprof as nobody")
def test_unprivileged_user_gets_one_line_and_a_cpu_profile(build, tmp_path):
    from test_attach import _as_nobody, _system_python
    level = open("/proc/sys/kernel/perf_event_paranoid").read().strip()
    if int(level) > 2:
        pytest.skip(f"perf_event_paranoid is {level}: nobody may not use perf events at all here")
    if int(level) < 2:
        pytest.skip(f"perf_event_paranoid is {level}: nobody may record off-CPU time here")
    import shutil
    import tempfile
    public = tempfile.mkdtemp(prefix="ctprof-offcpu-")     # pytest's tmp is 0700
    os.chmod(public, 0o777)
    tmp_path = __import__("pathlib").Path(public)
    prog = str(tmp_path / "phases")
    shutil.copy(build("offcpu_phases.c"), prog)
    env = {"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path)}
    proc = subprocess.run([_system_python(), "-m", "ctprof", "run", "--off-cpu", "-o", str(tmp_path / "n.ctprof"),
                           "--", prog, "0.1"], cwd=str(tmp_path), env=env, preexec_fn=_as_nobody,
                          capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    warnings = [l for l in err.splitlines() if "--off-cpu" in l and "perf_event_paranoid" in l]
    assert len(warnings) == 1 and "sysctl -w kernel.perf_event_paranoid=1" in warnings[0], err
    profile = load_profile(str(tmp_path / "n.ctprof"))[0]
    assert profile.total("samples") > 0
    shutil.rmtree(public, ignore_errors=True)
