"""``ctprof attach PID`` (issue 6): programs started on their own, attached to
with ``python -m ctprof attach``, checked on what a user would see."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ROOT, ctprof, has_chain, load_profile, share

CHAIN = ("main", "level_one", "level_two", "level_three", "hot_leaf")


def complete_share(profile) -> float:
    """Share of main-thread samples whose stack runs from main down to the
    deepest chain function it contains with every level in between."""
    def ok(names):
        for depth in range(len(CHAIN), 1, -1):
            if CHAIN[depth - 1] in names:
                return has_chain(names, CHAIN[:depth])
        return "main" in names
    main = share(profile, lambda n: "worker" not in n and "worker_leaf" not in n)
    return share(profile, lambda n: "worker" not in n and "worker_leaf" not in n and ok(n)) / main


def start(prog, *args, **kw):
    return subprocess.Popen([prog, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def attach(tmp_path, pid, *options, timeout=60):
    out = str(tmp_path / "attach.ctprof")
    proc = ctprof(["attach", str(pid), "-o", out, *options], cwd=str(tmp_path), timeout=timeout)
    profile = load_profile(out)[0] if os.path.exists(out) else None
    return proc, profile


@pytest.mark.parametrize("flags", [(), ("-fno-omit-frame-pointer",)], ids=["O2", "O2-frame-pointers"])
def test_attach_finds_complete_chains_and_new_threads(build, tmp_path, flags):
    prog = build("attach_work.c", *flags)
    # The worker thread starts 2.0 s in, while ctprof is attached (its own
    # start-up takes well under that, even on a loaded machine).
    target = start(prog, 6.0, 0, 2.0)
    try:
        time.sleep(0.2)
        proc, profile = attach(tmp_path, target.pid, "--duration", "3.0", "--hz", "499")
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"Traceback" not in proc.stderr
    finally:
        out, _ = target.communicate(timeout=30)
    assert target.returncode == 0 and b"result" in out
    assert profile.total("samples") > 300
    assert complete_share(profile) >= 0.95, complete_share(profile)
    assert share(profile, lambda n: n[-1] == "hot_leaf") > 0.4
    # the chain runs on to the C runtime's entry points above main
    assert share(profile, lambda n: "main" in n and "_start" in n or "worker_leaf" in n) > 0.95
    # the thread started during the attach was found and sampled
    worker = share(profile, lambda n: "worker_leaf" in n)
    assert worker > 0.1, worker
    assert share(profile, lambda n: "worker_leaf" in n and "start_thread" in n) > 0.9 * worker
    assert len(set(profile.tids)) == 2
    assert profile.metadata["command"][0] == prog


def test_detach_leaves_the_process_as_it_was(build, tmp_path):
    prog = build("attach_work.c")
    # long enough to outlive the attach on a loaded machine
    plain = start(prog, 4.0, 3, 0.3)
    plain_out, plain_err = plain.communicate(timeout=30)
    target = start(prog, 4.0, 3, 0.3)
    time.sleep(0.1)
    proc, profile = attach(tmp_path, target.pid, "--duration", "0.8", "--hz", "999")
    assert proc.returncode == 0, proc.stderr.decode()
    # detached: the process runs on, unaware
    assert target.poll() is None
    out, err = target.communicate(timeout=30)
    assert (out, err, target.returncode) == (plain_out, plain_err, plain.returncode) == (out, b"", 3)
    assert b"rt_default=31/31 itimer_prof=0 blocked=0" in out
    assert profile.total("samples") > 100


def test_process_exiting_during_attach_keeps_samples(build, tmp_path):
    prog = build("attach_work.c")
    target = start(prog, 2.5, 5)
    time.sleep(0.1)
    t0 = time.monotonic()
    proc, profile = attach(tmp_path, target.pid, "--duration", "20", "--hz", "499")
    target.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert f"process {target.pid} exited during the attach" in err
    # the samples follow the CPU it used while attached (start-up of ctprof
    # on a loaded machine eats into the 2.5 s)
    expected = profile.metadata["cpu_s"] * 499
    assert profile.total("samples") > 20 and abs(profile.total("samples") - expected) <= 5 * expected ** 0.5 + 5
    assert share(profile, lambda n: "hot_leaf" in n) > 0.8


def test_attach_missing_process(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    proc = ctprof(["attach", str(gone.pid), "--duration", "1"], cwd=str(tmp_path))
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert err.startswith("ctprof: error: no such process") and err.count("\n") == 1, err
    proc = ctprof(["attach", "notapid"], cwd=str(tmp_path))
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr and b"PID must be" in proc.stderr
    assert not os.listdir(tmp_path)


def _system_python() -> str:
    """A Python `nobody` can run (ours may live under /root)."""
    for cand in (sys.executable, "/usr/bin/python3"):
        if cand and os.access(cand, os.X_OK):
            path = os.path.dirname(cand)
            ok = True
            while path not in ("/", ""):
                if not os.stat(path).st_mode & 0o001:
                    ok = False
                    break
                path = os.path.dirname(path)
            if ok:
                return cand
    pytest.skip("no Python interpreter that user nobody can run")


def _as_nobody():
    os.setgid(65534)
    os.setgroups([])
    os.setuid(65534)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run processes as nobody")
def test_attach_to_another_users_process(build, tmp_path):
    """What a user sees attaching to someone else's process: ctprof runs as
    `nobody` against a root-owned program.  (Root itself may attach to
    anyone, which the second half checks: root attaching to a `nobody`
    process works.)"""
    prog = build("attach_work.c")
    target = start(prog, 3.0)
    try:
        python = _system_python()
        env = {"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        # a directory nobody may write in, so the output is not what fails
        scratch = tempfile.mkdtemp(prefix="ctprof-nobody-")
        os.chmod(scratch, 0o1777)
        proc = subprocess.run([python, "-m", "ctprof", "attach", str(target.pid), "--duration", "1"],
                              cwd=scratch, env=env, preexec_fn=_as_nobody, capture_output=True, timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)
        err = proc.stderr.decode()
        assert proc.returncode != 0
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"ctprof: error: cannot attach to process {target.pid}")
        assert "permission denied" in err
        assert "belongs to root (uid 0) and you are nobody (uid 65534)" in err
    finally:
        target.kill()
        target.wait()

    # Root attaching to a process of `nobody`: allowed (CAP_SYS_PTRACE/CAP_PERFMON).
    public = tempfile.mkdtemp(prefix="ctprof-attach-")   # pytest's tmp is 0700
    os.chmod(public, 0o755)
    shutil.copy(prog, os.path.join(public, "prog"))
    target = start(os.path.join(public, "prog"), 6.0, preexec_fn=_as_nobody)
    try:
        time.sleep(0.1)
        proc, profile = attach(tmp_path, target.pid, "--duration", "0.5", "--hz", "499")
        assert proc.returncode == 0, proc.stderr.decode()
        assert share(profile, lambda n: "hot_leaf" in n) > 0.8
        assert profile.metadata["threads"]
    finally:
        target.kill()
        target.wait()
        shutil.rmtree(public, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may attach to any process")
def test_attach_to_init_is_refused_for_users(tmp_path):
    proc = ctprof(["attach", "1", "--duration", "1"], cwd=str(tmp_path))
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "permission denied" in err and err.count("\n") == 1, err


def test_attach_follows_short_threads(build, tmp_path):
    """Threads that live 3 ms each are followed by the kernel from the
    thread that starts them (no polling of /proc/PID/task to miss them):
    nearly all the CPU they use is in the profile, under their function."""
    prog = build("attach_short.c")
    target = start(prog, 6.0)
    try:
        time.sleep(0.2)
        proc, profile = attach(tmp_path, target.pid, "--duration", "2.0", "--hz", "999")
        assert proc.returncode == 0, proc.stderr.decode()
    finally:
        target.kill()
        target.wait()
    assert profile.total("samples") > 200          # 0.2 s of CPU: a busy machine gives less than 2 s
    assert share(profile, lambda n: any(f.startswith("short_thread_work") for f in n)) > 0.8
    assert len(set(profile.tids)) > 50


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a mount namespace needs root and unshare")
def test_attach_to_another_mount_namespace(build, tmp_path):
    """The program's binary exists only inside its own mount namespace: it
    is read through /proc/PID/root, so the stacks are whole and named."""
    prog = build("attach_work.c")
    private = tmp_path / "private"
    private.mkdir()
    script = f"mount -t tmpfs tmpfs {private} && cp {prog} {private}/prog && exec {private}/prog 6.0"
    target = start("unshare", "-m", "--propagation", "private", "sh", "-c", script)
    try:
        # wait for the exec of the copy (mount and cp come first; a fixed sleep
        # attached to sh or cp on a loaded machine)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{target.pid}/exe") == f"{private}/prog":
                    break
            except OSError:
                pass
            time.sleep(0.02)
        else:
            pytest.fail("the program never started inside its mount namespace")
        assert not os.path.exists(private / "prog")      # not visible from here
        proc, profile = attach(tmp_path, target.pid, "--duration", "1.0", "--hz", "499")
        assert proc.returncode == 0, proc.stderr.decode()
    finally:
        target.kill()
        target.wait()
    assert share(profile, lambda n: has_chain(n, CHAIN)) > 0.5
    assert b"cannot read" not in proc.stderr


def test_attach_to_a_deleted_binary(build, tmp_path):
    """A program whose file was deleted (an upgrade replaced it) is unwound
    and named through /proc/PID/map_files while it runs."""
    copy = str(tmp_path / "doomed")
    shutil.copy(build("attach_work.c"), copy)
    target = start(copy, 6.0)
    try:
        time.sleep(0.2)
        os.unlink(copy)
        proc, profile = attach(tmp_path, target.pid, "--duration", "1.0", "--hz", "499")
        assert proc.returncode == 0, proc.stderr.decode()
    finally:
        target.kill()
        target.wait()
    assert complete_share(profile) >= 0.95
    assert share(profile, lambda n: has_chain(n, CHAIN)) > 0.5
    assert b"deleted" in proc.stderr                     # and the user is told
