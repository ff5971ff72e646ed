"""Per-process CPU time under the kernel sampler: each process is charged
its own CPU, never a child's it only waited for (the figure behind the
"no samples: it used N ms of CPU" note)."""
from __future__ import annotations

from conftest import ctprof, load_profile


def test_waiting_parent_is_not_charged_its_childs_cpu(build, tmp_path):
    prog = build("wait_child.c")
    out = str(tmp_path / "out.ctprof")
    # Three runs: the kernel hands the parent's events to the child at a
    # context switch in most runs here, not all, and each run must be right.
    for _ in range(3):
        proc = ctprof(["run", "-q", "-o", out, "--", prog, "0.5"], cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr.decode()
        own = {}
        for line in proc.stdout.decode().splitlines():
            who, pid, ns = line.split()
            own[who] = (int(pid), int(ns))
        _profile, session = load_profile(out)
        cpu = {pid: sum(p.thread_cpu_ns.values()) for pid, p in session.processes.items()}
        parent_pid, parent_ns = own["parent"]
        child_pid, child_ns = own["child"]
        # The program's clocks and the kernel's task clock count the same
        # scheduler time; the parent's includes its exec, hence the margin.
        assert cpu[parent_pid] <= parent_ns + 20_000_000, (cpu, own)
        assert abs(cpu[child_pid] - child_ns) <= 0.05 * child_ns + 20_000_000, (cpu, own)
        assert "yet none was sampled" not in proc.stderr.decode()
