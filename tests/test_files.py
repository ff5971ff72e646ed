"""Files, inputs and limits (issue 10): nothing planted is followed, no
profile is lost, no traceback.

Each test plays a careless or a hostile local user: symbolic links and FIFOs
planted where ctprof reads or writes, outputs it cannot write, inputs it can
only read once, names full of terminal escapes.  CI runs as root, so the
"another user" cases run ctprof (or plant files) as ``nobody``.
"""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import pytest

from conftest import ROOT, ctprof, ctprof_env, load_profile

from ctprof import files
from ctprof.errors import OutputError

NOBODY = 65534
FOLDED = "main;parse;lex 30\nmain;parse 20\nmain;render 50\n"


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``ctprof: error: ...`` line a refusal must print."""
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("ctprof: error:")]
    assert len(lines) == 1, err
    return lines[0]


def listing(directory) -> list:
    return sorted(os.listdir(directory))


# -- running ctprof as another user -------------------------------------------

def _as_nobody():
    os.setgid(NOBODY)
    os.setgroups([])
    os.setuid(NOBODY)


def _nobody_can_reach(path: str) -> bool:
    while path not in ("/", ""):
        if not os.stat(path).st_mode & 0o001:
            return False
        path = os.path.dirname(path)
    return True


def ctprof_as_nobody(args, cwd: str, **kw) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        pytest.skip("needs root to run ctprof as user nobody")
    python = next((p for p in (sys.executable, "/usr/bin/python3")
                   if os.access(p, os.X_OK) and _nobody_can_reach(os.path.dirname(p))), None)
    if python is None or not _nobody_can_reach(ROOT):
        pytest.skip(f"user nobody cannot reach a Python interpreter or {ROOT}")
    env = {"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd}
    return subprocess.run([python, "-m", "ctprof", *args], cwd=cwd, env=env, preexec_fn=_as_nobody,
                          capture_output=True, timeout=120, **kw)


@pytest.fixture
def public_dir():
    """A directory every user can enter (pytest's own tmp is 0700)."""
    path = tempfile.mkdtemp(prefix="ctprof-files-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- the one output writer ------------------------------------------------------

def test_writer_never_follows_a_link_at_any_name_it_could_pick(tmp_path, monkeypatch):
    """Links planted at the destination and at the first temporary names the
    writer will draw (the random source is made predictable here, as an
    attacker would wish): the victim is never written, the destination link
    is replaced by the new file, no temporary is left."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    dest = tmp_path / "out.svg"
    draws = iter(["planted1", "planted2", "planted3", "fresh"])
    monkeypatch.setattr(files, "_random_token", lambda: next(draws))
    for token in ("planted1", "planted2", "planted3"):
        os.symlink(victim, tmp_path / f".out.svg.{token}.tmp")
    os.symlink(victim, dest)
    files.write_atomic(str(dest), lambda out: out.write(b"<svg/>\n"))
    assert victim.read_text() == "precious\n"
    assert not dest.is_symlink() and dest.read_bytes() == b"<svg/>\n"
    assert stat.S_IMODE(dest.stat().st_mode) & 0o022 == 0
    assert listing(tmp_path) == [".out.svg.planted1.tmp", ".out.svg.planted2.tmp", ".out.svg.planted3.tmp",
                                 "out.svg", "victim"]


def test_writer_leaves_nothing_when_producing_fails(tmp_path):
    dest = tmp_path / "out.pb.gz"
    dest.write_bytes(b"the previous version\n")

    def fail(out):
        out.write(b"half a file")
        raise ValueError("renderer broke")

    with pytest.raises(ValueError):
        files.write_atomic(str(dest), fail)
    assert dest.read_bytes() == b"the previous version\n"
    assert listing(tmp_path) == ["out.pb.gz"]
    os.chmod(dest, 0o600)  # made private by its owner: stays private when replaced
    files.write_atomic(str(dest), lambda out: out.write(b"new\n"))
    assert dest.read_bytes() == b"new\n" and stat.S_IMODE(dest.stat().st_mode) == 0o600
    with pytest.raises(OutputError, match="is a directory"):
        files.write_atomic(str(tmp_path), lambda out: out.write(b"x"))
    with pytest.raises(OutputError, match=r"missing/x: cannot write: no such file or directory"):
        files.write_atomic(str(tmp_path / "missing" / "x"), lambda out: out.write(b"x"))


@pytest.mark.parametrize("command", [
    ["svg", "in.folded"],
    ["folded", "in.folded"],
    ["export", "in.folded", "--format", "pprof"],
    ["export", "in.folded", "--format", "speedscope"],
    ["diff", "in.folded", "in.folded"],
])
def test_commands_replace_a_planted_link_instead_of_writing_through_it(tmp_path, command):
    """Another user's link in a shared (sticky, world-writable) directory,
    pointing at a file of root's, and links at the old predictable
    temporary names OUT.tmpPID: nothing of root's is overwritten."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    victim = tmp_path / "root-file"
    victim.write_text("root's data\n")
    (shared / "in.folded").write_text(FOLDED)
    out = shared / "out"
    os.symlink(victim, out)
    for pid in range(os.getpid(), os.getpid() + 200):
        os.symlink(victim, shared / f"out.tmp{pid}")
    if os.geteuid() == 0:
        for name in os.listdir(shared):
            os.lchown(shared / name, NOBODY, NOBODY)
    proc = ctprof(command + ["-o", "out"], cwd=str(shared))
    assert proc.returncode == 0, proc.stderr.decode()
    assert victim.read_text() == "root's data\n"
    assert not out.is_symlink() and out.stat().st_size > 0
    assert not [n for n in os.listdir(shared) if n.startswith(".out")]


def test_export_write_failure_keeps_the_previous_file(tmp_path):
    """A write that fails half way (here the file size limit, `ulimit -f`)
    leaves the old file as it was and no temporary: one error line."""
    big = "".join(f"main;f{i};g{i};h{i} {i + 1}\n" for i in range(20000))
    (tmp_path / "in.folded").write_text(big)
    (tmp_path / "out.json").write_text("old\n")
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    proc = subprocess.run([sys.executable, "-m", "ctprof", "export", "in.folded", "--format", "speedscope",
                           "-o", "out.json"], cwd=str(tmp_path), env=ctprof_env(), preexec_fn=limit,
                          capture_output=True, timeout=120)
    assert proc.returncode == 2
    assert "out.json: cannot write: file too large" in one_error_line(proc)
    assert (tmp_path / "out.json").read_text() == "old\n"
    assert listing(tmp_path) == ["in.folded", "out.json"]


def test_fifo_output_nobody_reads_is_an_error_not_a_hang(tmp_path):
    (tmp_path / "in.folded").write_text(FOLDED)
    os.mkfifo(tmp_path / "pipe")
    proc = ctprof(["svg", "in.folded", "-o", "pipe"], cwd=str(tmp_path), timeout=30)
    assert proc.returncode == 2
    assert "pipe: cannot write: nothing reads this FIFO" in one_error_line(proc)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode)


# -- outputs of run, checked before the program starts -------------------------

@pytest.mark.parametrize("options,message", [
    (["-o", "missing/p.ctprof"], "-o missing/p.ctprof: directory missing does not exist"),
    (["-o", "adir"], "-o adir: is a directory"),
    (["--svg", "adir"], "--svg adir: is a directory"),
    (["--folded", "afile/x.folded"], "afile is not a directory"),
    (["-o", "same", "--folded", "same"], "--folded same: the same file as -o same"),
    (["-o", "p.ctprof", "--svg", "./p.ctprof"], "--svg ./p.ctprof: the same file as -o p.ctprof"),
    (["-o", "touch"], "-o touch: is the program being profiled"),
    (["--top", "0"], "--top 0: must be at least 1"),
    (["--top", "-3"], "--top -3: must be at least 1"),
    (["--threads", ",,,"], "--threads needs a thread id"),
])
def test_run_refuses_bad_outputs_before_the_program_runs(tmp_path, options, message):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    shutil.copy(shutil.which("touch"), tmp_path / "touch")
    before = listing(tmp_path)
    proc = ctprof(["run", *options, "--", "./touch", "marker"], cwd=str(tmp_path))
    assert proc.returncode == 2
    assert message in one_error_line(proc)
    assert not (tmp_path / "marker").exists(), "the program ran"
    assert listing(tmp_path) == before
    assert os.access(tmp_path / "touch", os.X_OK)


def test_run_refuses_a_read_only_directory_before_the_program_runs(public_dir):
    """As user nobody: -o in a directory nobody may not write, and the
    default name in a current directory nobody may not write."""
    readonly = os.path.join(public_dir, "ro")
    os.mkdir(readonly, 0o755)
    work = os.path.join(public_dir, "work")
    os.mkdir(work, 0o777)
    os.chmod(work, 0o777)
    proc = ctprof_as_nobody(["run", "-o", os.path.join(readonly, "p.ctprof"), "--", "touch", "marker"], cwd=work)
    assert proc.returncode == 2
    assert f"cannot write in {readonly}: permission denied" in one_error_line(proc)
    assert not os.path.exists(os.path.join(work, "marker"))
    proc = ctprof_as_nobody(["run", "--svg", "g.svg", "--", "touch", os.path.join(work, "marker")], cwd=readonly)
    assert proc.returncode == 2
    assert "--svg g.svg: cannot write in .: permission denied" in one_error_line(proc)
    proc = ctprof_as_nobody(["run", "--", "touch", os.path.join(work, "marker")], cwd=readonly)
    assert proc.returncode == 2
    assert one_error_line(proc) == ("ctprof: error: the profile cannot be saved in the current directory: "
                                    "cannot write in .: permission denied (use -o)")
    assert not os.path.exists(os.path.join(work, "marker"))
    assert os.listdir(readonly) == [] and os.listdir(work) == []


def test_profile_saved_to_a_fallback_when_its_directory_vanished(tmp_path):
    """The directory of -o and --svg disappears while the program runs: the
    profile is saved in the current directory and the user is told; ctprof
    still exits with the program's status."""
    (tmp_path / "out").mkdir()
    proc = ctprof(["run", "-q", "-o", "out/p.ctprof", "--svg", "out/p.svg", "--",
                   "sh", "-c", "rmdir out; exit 7"], cwd=str(tmp_path))
    err = proc.stderr.decode()
    assert proc.returncode == 7, err
    assert "Traceback" not in err
    assert "ctprof: error: out/p.ctprof: cannot write: no such file or directory" in err
    assert "ctprof: the profile was saved to p.ctprof instead" in err
    assert "out/p.svg: cannot write" in err
    profile, _ = load_profile(str(tmp_path / "p.ctprof"))
    assert profile.metadata["command"] == ["sh", "-c", "rmdir out; exit 7"]
    assert listing(tmp_path) == ["p.ctprof"]


def test_concurrent_default_named_runs_never_share_a_file(tmp_path):
    """Runs started together in one directory, the default names: each
    profile is a file of its own (the names are reserved with O_EXCL)."""
    runs = [subprocess.Popen([sys.executable, "-m", "ctprof", "run", "-q", "--", "sh", "-c", f"exit {i}"],
                             cwd=str(tmp_path), env=ctprof_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for i in range(4)]
    named = []
    for i, run in enumerate(runs):
        _, err = run.communicate(timeout=120)
        assert run.returncode == i, err.decode()
        named += [l.split("profile: ", 1)[1] for l in err.decode().splitlines() if "profile: " in l]
    assert len(named) == 4 and len(set(named)) == 4, named
    assert sorted(named) == listing(tmp_path)
    statuses = set()
    for name in named:
        profile, session = load_profile(str(tmp_path / name))
        statuses.add(session.exit_status if session else profile.metadata.get("exit_status"))
    assert statuses == {0, 1, 2, 3}


def test_run_cleans_up_its_reserved_name_when_the_program_cannot_start(tmp_path):
    proc = ctprof(["run", "--", "./no-such-program"], cwd=str(tmp_path))
    assert proc.returncode == 127 and "program not found" in one_error_line(proc)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("sampler", ["kernel", "signal"])
def test_an_executable_fifo_as_the_program_is_refused_not_waited_on(tmp_path, sampler):
    os.mkfifo(tmp_path / "prog", 0o755)
    proc = ctprof(["run", "--sampler", sampler, "--", "./prog"], cwd=str(tmp_path), timeout=30)
    assert proc.returncode == 127
    assert "cannot run ./prog: not a regular file" in one_error_line(proc)


# -- inputs other users can touch: /tmp/perf-PID.map --------------------------

def _run_planting(build, tmp_path, *mode, sampler="signal", timeout=60):
    prog = build("files_plant.c", "-g")
    proc = ctprof(["run", "--sampler", sampler, "--hz", "499", "-o", "p.ctprof", "--", prog, *mode],
                  cwd=str(tmp_path), timeout=timeout)
    err = proc.stderr.decode()
    perf_map = next(l.split(": ", 1)[1] for l in err.splitlines() if l.startswith("perf map: "))
    try:
        os.lstat(perf_map)
        os.unlink(perf_map)
    except FileNotFoundError:
        pass
    return proc, err, perf_map


def _profile_bytes(path) -> bytes:
    """Every byte the saved profile holds, its zlib sections unpacked (the
    raw file is compressed: a string could not be found in it anyway).
    Read by the layout documented in ctprof/fileformat.py, not by its loader."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89CTPROF\n", data[:8]
    out, pos, names = [data], 12, []
    while pos < len(data):
        length = data[pos]
        names.append(data[pos + 1:pos + 1 + length])
        pos += 1 + length + 1 + 8
        stored = int.from_bytes(data[pos:pos + 8], "little")
        pos += 8
        if stored:                                   # an empty section stores nothing
            out.append(zlib.decompress(data[pos:pos + stored]))
        pos += stored
    assert names[-1] == b"end" and b"strings" in names, names
    return b"".join(out)


@pytest.mark.parametrize("kind,sampler", [("symlink", "kernel"), ("symlink", "signal"), ("hardlink", "kernel")])
def test_perf_map_planted_as_a_link_to_a_private_file_is_not_read(build, tmp_path, kind, sampler):
    """A root-only file, reached through a symbolic or a hard link at
    /tmp/perf-PID.map: its contents never reach the (0644) profile."""
    secret = tmp_path / "secret"
    secret.write_text("ffff0000 10 TOP_SECRET_LINE\n")
    os.chmod(secret, 0o600)
    proc, err, perf_map = _run_planting(build, tmp_path, kind, str(secret), sampler=sampler)
    assert proc.returncode == 0, err
    why = "a symbolic link" if kind == "symlink" else "it has 2 hard links"
    assert f"note: ignored {perf_map}: {why}" in err
    assert b"TOP_SECRET" not in _profile_bytes(tmp_path / "p.ctprof")
    profile, session = load_profile(str(tmp_path / "p.ctprof"))
    assert all(p.perf_map is None for p in session.processes.values())
    assert any("hot_function" in f.name for f in profile.frames)


def test_perf_map_planted_as_a_fifo_does_not_hang(build, tmp_path):
    """A FIFO nobody writes at /tmp/perf-PID.map: ctprof ends when the
    program ends, says why the map was ignored, and leaves no session
    directory behind."""
    prog = build("files_plant.c", "-g")
    start = time.monotonic()
    run = subprocess.Popen([sys.executable, "-m", "ctprof", "run", "--sampler", "signal", "-o", "p.ctprof", "--",
                            prog, "fifo"],
                           cwd=str(tmp_path), env=ctprof_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err_bytes = run.communicate(timeout=60)
    finally:
        run.kill()
    err = err_bytes.decode()
    perf_map = next(l.split(": ", 1)[1] for l in err.splitlines() if l.startswith("perf map: "))
    os.unlink(perf_map)
    assert run.returncode == 0, err
    assert time.monotonic() - start < 50
    assert f"note: ignored {perf_map}: not a regular file" in err
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"ctprof-{run.pid}-")] \
        if os.path.isdir("/dev/shm") else True


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to user nobody")
def test_perf_map_of_another_user_is_ignored(build, tmp_path):
    proc, err, perf_map = _run_planting(build, tmp_path, "nobody")
    assert proc.returncode == 0, err
    assert f"note: ignored {perf_map}: owned by uid {NOBODY}, not by the program's user (uid 0)" in err
    profile, session = load_profile(str(tmp_path / "p.ctprof"))
    assert all(p.perf_map is None for p in session.processes.values())
    assert b"jit_nobody_function" not in _profile_bytes(tmp_path / "p.ctprof")
    assert any("hot_function" in f.name for f in profile.frames)


@pytest.mark.parametrize("sampler", ["kernel", "signal"])
def test_perf_map_of_the_program_itself_is_kept(build, tmp_path, sampler):
    proc, err, perf_map = _run_planting(build, tmp_path, "own", sampler=sampler)
    assert proc.returncode == 0, err
    assert "ignored" not in err
    _, session = load_profile(str(tmp_path / "p.ctprof"))
    assert [p.perf_map for p in session.processes.values()] == ["7f0000001000 100 jit_own_function\n"]


def test_read_shared_file_accepts_only_a_plain_file_of_the_user(tmp_path):
    good = tmp_path / "good.map"
    good.write_text("1000 10 jitted\n")
    assert files.read_shared_file(str(good), os.geteuid()) == ("1000 10 jitted\n", None)
    assert files.read_shared_file(str(tmp_path / "none"), os.geteuid()) == (None, None)
    text, note = files.read_shared_file(str(good), os.geteuid() + 1)
    assert text is None and "owned by uid" in note
    text, note = files.read_shared_file(str(good), os.geteuid(), limit=4)
    assert text is None and note.endswith("larger than 0 MiB")


def test_stale_session_directories_are_removed_by_a_new_run(build, tmp_path):
    """A controller killed with SIGKILL leaves its directory in /dev/shm;
    the next run removes it (and leaves a live controller's alone)."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm on this machine")
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"/dev/shm/ctprof-{gone.pid}-12345-test"
    me = str(os.getpid())
    live = f"/dev/shm/ctprof-{me}-{files._start_ticks(me)}-test"
    for path in (stale, live):
        os.makedirs(path, 0o700)
        open(os.path.join(path, "1.ring"), "w").close()
    try:
        # The in-process sampler keeps its rings in a session directory.
        proc = ctprof(["run", "--sampler", "signal", "-q", "-o", "p.ctprof", "--", "true"], cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr.decode()
        assert not os.path.exists(stale)
        assert os.path.isdir(live)
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


@pytest.mark.parametrize("sampler", ["kernel", "signal"])
def test_a_fifo_in_place_of_a_mapped_file_does_not_hang_symbols(build, tmp_path, sampler):
    """The program's file is replaced by a FIFO before ctprof reads its
    symbols: the run ends and the samples are kept.  (The resolver's stat
    and the non-blocking open of files.open_regular both guard this.)"""
    shutil.copy(build("files_plant.c", "-g"), tmp_path / "prog")
    proc = ctprof(["run", "--sampler", sampler, "--hz", "499", "-o", "p.ctprof", "--", "./prog", "replace-self"],
                  cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "prog").st_mode)
    profile, _ = load_profile(str(tmp_path / "p.ctprof"))
    assert profile.total("samples") > 0


# -- input streams ----------------------------------------------------------------

def test_report_reads_a_fifo_once(tmp_path):
    (tmp_path / "in.folded").write_text(FOLDED)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "w") as f:
            f.write(FOLDED)

    writer = threading.Thread(target=feed)
    writer.start()
    proc = ctprof(["report", "pipe", "--top", "3"], cwd=str(tmp_path), timeout=30)
    writer.join(timeout=10)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "(100 samples in all)" in proc.stdout.decode()


def test_process_substitution_and_stdin(tmp_path):
    """`report <(cat x.folded)` (a pipe under /dev/fd) and `-` (stdin), for
    folded text and for a saved profile alike."""
    (tmp_path / "in.folded").write_text(FOLDED)
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is needed for <(...)")
    proc = subprocess.run([bash, "-c", f"{sys.executable} -m ctprof report <(cat in.folded) --top 2"],
                          cwd=str(tmp_path), env=ctprof_env(), capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "(100 samples in all)" in proc.stdout.decode()
    proc = ctprof(["folded", "-"], cwd=str(tmp_path), input=FOLDED.encode())
    assert proc.returncode == 0 and proc.stdout.decode().splitlines() == sorted(FOLDED.splitlines())
    assert ctprof(["export", "in.folded", "--format", "folded", "-o", "p.folded"], cwd=str(tmp_path)).returncode == 0
    from ctprof import session
    from ctprof.render import load_any
    session.save(str(tmp_path / "p.ctprof"), load_any(str(tmp_path / "in.folded")))
    proc = ctprof(["report", "-", "--top", "1"], cwd=str(tmp_path), input=(tmp_path / "p.ctprof").read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    assert "(100 samples in all)" in proc.stdout.decode()


def test_empty_input_is_refused(tmp_path):
    (tmp_path / "empty").write_text("")
    proc = ctprof(["svg", "empty", "-o", "g.svg"], cwd=str(tmp_path))
    assert proc.returncode == 2 and "empty: empty file" in one_error_line(proc)
    assert listing(tmp_path) == ["empty"]


def test_unreadable_input_says_permission_denied(public_dir):
    private = os.path.join(public_dir, "private")
    os.mkdir(private, 0o700)
    with open(os.path.join(private, "in.folded"), "w") as f:
        f.write(FOLDED)
    with open(os.path.join(public_dir, "mine.folded"), "w") as f:
        f.write(FOLDED)
    os.chmod(os.path.join(public_dir, "mine.folded"), 0o600)
    for path in (os.path.join(private, "in.folded"), "mine.folded"):
        proc = ctprof_as_nobody(["report", path], cwd=public_dir)
        assert proc.returncode == 2
        assert one_error_line(proc) == f"ctprof: error: {path}: permission denied"
    proc = ctprof_as_nobody(["report", "nothing.folded"], cwd=public_dir)
    assert one_error_line(proc) == "ctprof: error: nothing.folded: no such file"


# -- the terminal ----------------------------------------------------------------

def test_control_characters_never_reach_the_terminal(build, tmp_path):
    """Names are the program's: an escape sequence in a function name (from
    folded input) or a thread name is printed escaped."""
    lines = ["main;\x1b]2 owned\x07\x1b[2Jevil 40"] + [f"main;f{i} 1" for i in range(60)]
    (tmp_path / "esc.folded").write_text("\n".join(lines) + "\n")
    proc = ctprof(["report", "esc.folded", "--top", "1"], cwd=str(tmp_path))
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "\x1b" not in out and "\x07" not in out
    assert "\\e]2 owned\\x07\\e[2Jevil" in out
    prog = build("files_plant.c", "-g")
    proc = ctprof(["run", "-o", "p.ctprof", "--", prog, "name", "\x1b[31mred"], cwd=str(tmp_path))
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "\x1b" not in err and "/\\e[31mred:" in err
    proc = ctprof(["report", "nothing\x1b[2J"], cwd=str(tmp_path))
    assert one_error_line(proc) == "ctprof: error: nothing\\e[2J: no such file"


def test_program_path_with_a_newline_resolves_symbols(build, tmp_path):
    """/proc/PID/maps prints a newline in a path as \\012: decoded, the
    program's own functions are named."""
    odd = tmp_path / "two\nlines"
    odd.mkdir()
    shutil.copy(build("files_plant.c", "-g"), odd / "prog")
    proc = ctprof(["run", "--hz", "499", "-o", "p.ctprof", "--", str(odd / "prog")], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode()
    profile, _ = load_profile(str(tmp_path / "p.ctprof"))
    assert any(f.name == "hot_function" for f in profile.frames), [f.name for f in profile.frames][:20]


def test_parse_maps_decodes_newline_escape():
    from ctprof.symbols.maps import parse_maps
    line = "00400000-00401000 r-xp 00000000 08:01 42   /tmp/two\\012lines/prog (deleted)\n"
    (m,) = parse_maps(line)
    assert m.path == "/tmp/two\nlines/prog" and m.deleted


# -- small lies --------------------------------------------------------------------

@pytest.mark.parametrize("compiler,reason", [
    ("/bin/true", "it wrote no shared library"),
    ("false", "it exited with status 1 and printed nothing"),
])
def test_a_compiler_that_is_not_one_gets_one_clear_line(tmp_path, compiler, reason):
    proc = ctprof(["run", "--sampler", "signal", "--", "true"], cwd=str(tmp_path),
                  env={"CC": compiler, "CTPROF_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "compiling the shim with" in line and reason in line
    assert not [n for n in listing(tmp_path) if n.endswith(".ctprof")]


def test_sigterm_note_says_the_program_ignored_it(build, tmp_path):
    """SIGTERM to ctprof while the program ignores TERM (and INT): the note
    says what happened, not that the program was stopped."""
    prog = build("files_plant.c", "-g")
    run = subprocess.Popen([sys.executable, "-m", "ctprof", "run", "-o", "p.ctprof", "--", prog, "ignore-term"],
                           cwd=str(tmp_path), env=ctprof_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.stdout.readline() == b"ready\n"       # ctprof is past its start-up
    time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    err = err.decode()
    assert run.returncode == 0, err
    assert "which handled or ignored it and exited by itself with status 0" in err
    assert "was stopped" not in err
