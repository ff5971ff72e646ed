#!/usr/bin/env python3
"""End to end on real programs no one here wrote: what a user waits for.

Three workloads -- ``g++ -O2 -c`` of a template-heavy C++ file (three
processes, about 3.5 million allocations in cc1plus), ``sqlite3`` building
and indexing a 300,000-row table, and CPython running a script -- each run
plain, under ``ctprof run``, ``ctprof run --mem``, ``perf record -g`` then
``perf report``, and ``heaptrack`` then ``heaptrack_print``, interleaved, in
one run of this script.  Printed per workload: median wall time from start
to the last byte written (for perf and heaptrack the recording, then the
analysis a user runs next), the slowdown against plain, the peak RSS of
the profiler's own process (ctprof's controller, measured inside it with
``getrusage(RUSAGE_SELF)``; for perf and heaptrack their analysis step, as
their recorder's figure includes the program), and the size of what was
written.  Then, for the saved ctprof profiles, the time to save and to load
them again (``ctprof.fileformat``), per million allocation events, next to
format 1's writer (gzip JSON of the deep-copied session) on the same
profile once.

Usage: ``python3 bench/bench_e2e.py [--runs N] [--quick]``.  sqlite3 and
heaptrack are installed with apt-get when missing (root only).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

TEMPLATE_CPP = r"""
#include <algorithm>
#include <functional>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <variant>
#include <vector>
template <int N> struct Fib { static constexpr long value = Fib<N - 1>::value + Fib<N - 2>::value; };
template <> struct Fib<0> { static constexpr long value = 0; };
template <> struct Fib<1> { static constexpr long value = 1; };
template <typename... Ts> std::variant<Ts...> pick(int) { return std::variant<Ts...>{}; }
int main() {
    std::regex r("([a-z]+)\\s*=\\s*(\\d+)");
    std::map<std::string, std::vector<std::tuple<int, double, std::string>>> m;
    std::unordered_map<std::string, std::set<int>> u;
    std::smatch sm;
    std::string s = "abc = 42";
    if (std::regex_search(s, sm, r)) m[sm[1]].emplace_back(std::stoi(sm[2]), 1.0, s);
    auto v = pick<int, double, std::string, std::vector<int>>(1);
    std::ostringstream os;
    os << Fib<80>::value << std::get<0>(v);
    auto f = std::async(std::launch::deferred, [&] { return os.str().size(); });
    std::cout << f.get() << m.size() << u.size() << std::endl;
}
"""

SQLITE_SQL = """
PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, score REAL);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
INSERT INTO t SELECT i, printf('name-%08d-%s', (i * 7919) % {rows}, hex(randomblob(8))), i % 97, (i * 37 % 1000) / 10.0 FROM c;
CREATE INDEX t_name ON t(name);
CREATE INDEX t_grp_score ON t(grp, score);
SELECT count(*), sum(score) FROM t WHERE grp = 5 AND name > 'name-0005';
"""

PYTHON_SCRIPT = r"""
import json, re, collections, random
random.seed(7)
rows = [{"id": i, "name": f"user{i:06d}", "tags": [random.choice("abcdef") * 3 for _ in range(4)],
         "score": random.random()} for i in range({n})]
text = json.dumps(rows)
back = json.loads(text)
words = re.findall(r"user(\d+)", text)
counts = collections.Counter(t for r in back for t in r["tags"])
best = sorted(back, key=lambda r: (-r["score"], r["name"]))[:10]
print(len(words), len(counts), best[0]["name"])
"""

# ctprof's controller runs in this driver so its own peak RSS can be read
# from inside (the program is a separate process: a fork then exec).
RSS_DRIVER = r"""
import resource, runpy, sys
report = sys.argv[1]
sys.argv = ["ctprof"] + sys.argv[2:]
status = 0
try:
    runpy.run_module("ctprof", run_name="__main__", alter_sys=True)
except SystemExit as e:
    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
finally:
    with open(report, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.exit(status)
"""


@dataclasses.dataclass
class Measured:
    wall: List[float] = dataclasses.field(default_factory=list)       # seconds, whole tool
    analysis: List[float] = dataclasses.field(default_factory=list)   # seconds, perf report / heaptrack_print
    rss_kb: List[int] = dataclasses.field(default_factory=list)
    size: int = 0


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("sqlite3", "sqlite3"), ("heaptrack", "heaptrack")) if not shutil.which(tool)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"(installing {' '.join(missing)} with apt-get)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True)


def timed(cmd: List[str], cwd: str, env: Dict[str, str], stdout=subprocess.DEVNULL) -> float:
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()[-1500:]}")
    return wall


def analysis_rss(cmd: List[str], cwd: str, env: Dict[str, str]) -> Tuple[float, int]:
    """Wall time and peak RSS (KiB) of an analysis step (no program inside)."""
    report = os.path.join(cwd, "time.txt")
    wall = timed(["/usr/bin/time", "-o", report, "-f", "%M"] + cmd, cwd, env)
    with open(report) as f:
        return wall, int(f.read().split()[-1])


def workloads(tmp: str, quick: bool) -> Dict[str, Tuple[List[str], Callable[[], None]]]:
    """name -> (command, preparation before each run)."""
    src = os.path.join(tmp, "templates.cpp")
    with open(src, "w") as f:
        f.write(TEMPLATE_CPP)
    script = os.path.join(tmp, "work.py")
    with open(script, "w") as f:
        f.write(PYTHON_SCRIPT.replace("{n}", "40000" if quick else "120000"))
    db = os.path.join(tmp, "t.db")
    sql = SQLITE_SQL.replace("{rows}", "50000" if quick else "300000")

    def fresh_db() -> None:
        if os.path.exists(db):
            os.unlink(db)
    python = shutil.which("python3") or sys.executable
    out = {"g++ -O2 -c templates.cpp": (["g++", "-O2", "-c", src, "-o", os.path.join(tmp, "t.o")], lambda: None),
           "python3 work.py": ([os.path.realpath(python), script], lambda: None)}
    if shutil.which("sqlite3"):
        out["sqlite3: build + index"] = (["sqlite3", db, sql], fresh_db)
    else:
        print("sqlite3 is not installed and could not be: that workload is left out")
    return out


def tools(tmp: str) -> Dict[str, Dict[str, object]]:
    """name -> how to run a command under it: record prefix, analysis, output."""
    py = [sys.executable, os.path.join(tmp, "rss_driver.py")]
    with open(py[1], "w") as f:
        f.write(RSS_DRIVER)
    out = {
        "plain": {},
        "ctprof run": {"ctprof": ["run", "-q"], "output": os.path.join(tmp, "cpu.ctprof")},
        "ctprof run --mem": {"ctprof": ["run", "-q", "--mem"], "output": os.path.join(tmp, "mem.ctprof")},
    }
    if shutil.which("perf"):
        data = os.path.join(tmp, "perf.data")
        out["perf record -g + report"] = {"prefix": ["perf", "record", "-q", "-g", "-o", data, "--"],
                                          "analysis": ["perf", "report", "-i", data, "--stdio"], "output": data}
    else:
        print("perf is not installed: left out")
    if shutil.which("heaptrack"):
        base = os.path.join(tmp, "ht")
        out["heaptrack + heaptrack_print"] = {"prefix": ["heaptrack", "-o", base], "heaptrack": base}
    else:
        print("heaptrack is not installed and could not be: left out")
    out["_driver"] = {"py": py}
    return out


def run_once(tool: Dict[str, object], cmd: List[str], tmp: str, env: Dict[str, str], m: Measured,
             driver: List[str]) -> None:
    if "ctprof" in tool:
        output = str(tool["output"])
        report = os.path.join(tmp, "rss.txt")
        full = driver + [report] + list(tool["ctprof"]) + ["-o", output, "--"] + cmd  # type: ignore[operator]
        if os.path.exists(output):
            os.unlink(output)
        m.wall.append(timed(full, tmp, env))
        with open(report) as f:
            m.rss_kb.append(int(f.read()))
        m.size = os.path.getsize(output)
        return
    if "heaptrack" in tool:
        base = str(tool["heaptrack"])
        for old in [p for p in os.listdir(tmp) if p.startswith("ht.")]:
            os.unlink(os.path.join(tmp, old))
        wall = timed(list(tool["prefix"]) + cmd, tmp, env)  # type: ignore[operator]
        trace = next(os.path.join(tmp, p) for p in os.listdir(tmp) if p.startswith("ht."))
        a_wall, rss = analysis_rss(["heaptrack_print", trace], tmp, env)
        m.wall.append(wall + a_wall)
        m.analysis.append(a_wall)
        m.rss_kb.append(rss)
        m.size = os.path.getsize(trace)
        return
    if "prefix" in tool:
        wall = timed(list(tool["prefix"]) + cmd, tmp, env)  # type: ignore[operator]
        a_wall, rss = analysis_rss(list(tool["analysis"]), tmp, env)  # type: ignore[arg-type]
        m.wall.append(wall + a_wall)
        m.analysis.append(a_wall)
        m.rss_kb.append(rss)
        m.size = os.path.getsize(str(tool["output"]))
        return
    m.wall.append(timed(cmd, tmp, env))


def save_v1(path: str, profile, session) -> None:
    """Format 1's writer (ctprof before format 2), for comparison only."""
    doc = {"format": "ctprof-profile", "version": 1,
           "profile": {"frames": [[f.name, f.module, f.category, f.file, f.line, f.inlined] for f in profile.frames],
                       "stacks": [list(s) for s in profile.stacks], "values": profile.values,
                       "pids": profile.pids, "tids": profile.tids, "metadata": profile.metadata},
           "session": None}
    if session is not None:
        data = dataclasses.asdict(session)
        data["processes"] = {str(pid): dataclasses.asdict(p) for pid, p in session.processes.items()}
        data["stacks"] = [[s.pid, s.tid, s.gen, list(s.ips), s.truncated, s.values] for s in session.stacks]
        doc["session"] = data
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=5) as out:
        json.dump(doc, out, separators=(",", ":"))


def load_v1(path: str) -> None:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        json.load(f)


def save_load_figures(path: str, tmp: str, runs: int, with_v1: bool) -> Dict[str, float]:
    """:func:`measure_save_load` in a child process: a process that loaded a
    big profile passes its peak RSS on to every program it starts (the
    kernel records the old image's high-water mark at exec), which would
    inflate the next runs' figures."""
    cmd = [sys.executable, os.path.abspath(__file__), "--figures", path, "--runs", str(runs)]
    if not with_v1:
        cmd.append("--no-v1")
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measuring {path} failed:\n{proc.stderr[-1500:]}")
    return json.loads(proc.stdout)


def measure_save_load(path: str, tmp: str, runs: int, with_v1: bool) -> Dict[str, float]:
    from ctprof import fileformat
    # wall and CPU seconds: the CPU figure is the one to trust on a machine
    # shared with other work
    loads, saves, views = [], [], []
    copy = os.path.join(tmp, "copy.ctprof")

    def clock() -> Tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def since(start: Tuple[float, float]) -> Tuple[float, float]:
        wall, cpu = clock()
        return wall - start[0], cpu - start[1]
    for _ in range(max(3, runs)):
        start = clock()
        fileformat.load(path, with_session=False)   # what report/svg/export/diff do
        views.append(since(start))
        start = clock()
        profile, session = fileformat.load(path)
        loads.append(since(start))
        start = clock()
        fileformat.save(copy, profile, session)
        saves.append(since(start))
    allocs = sum(profile.values.get("alloc_count", []))
    out = {"allocs": allocs, "raw_stacks": len(session.stacks) if session else 0,
           "raw_frames": sum(len(s.ips) for s in session.stacks) if session else 0,
           "stacks": len(profile.stacks), "size": os.path.getsize(path),
           "save": statistics.median(w for w, _ in saves), "load": statistics.median(w for w, _ in loads),
           "view": statistics.median(w for w, _ in views), "save_cpu": statistics.median(c for _, c in saves),
           "load_cpu": statistics.median(c for _, c in loads), "view_cpu": statistics.median(c for _, c in views)}
    if with_v1:
        v1 = os.path.join(tmp, "v1.ctprof")
        start = time.perf_counter()
        save_v1(v1, profile, session)
        out["v1_save"] = time.perf_counter() - start
        start = time.perf_counter()
        load_v1(v1)
        out["v1_load"] = time.perf_counter() - start
        out["v1_size"] = os.path.getsize(v1)
    return out


def mib(kb: float) -> str:
    return f"{kb / 1024:.0f} MiB"


def size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs per tool (default 3)")
    ap.add_argument("--quick", action="store_true", help="smaller sqlite and Python inputs, one run")
    ap.add_argument("--no-v1", action="store_true", help="skip format 1's writer (slow on big profiles)")
    ap.add_argument("--figures", metavar="PROFILE", help=argparse.SUPPRESS)  # internal: one profile's save/load
    args = ap.parse_args()
    if args.figures:
        print(json.dumps(measure_save_load(args.figures, os.path.dirname(os.path.abspath(args.figures)),
                                           args.runs, not args.no_v1)))
        return 0
    runs = 1 if args.quick else args.runs
    ensure_tools()
    tmp = tempfile.mkdtemp(prefix="ctprof-bench-e2e-")
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        loads = workloads(tmp, args.quick)
        ways = tools(tmp)
        driver = ways.pop("_driver")["py"]  # type: ignore[index]
        # warm the shim build, symbol caches and page cache
        for cmd, prepare in loads.values():
            prepare()
            run_once(ways["ctprof run --mem"], cmd, tmp, env, Measured(), driver)  # type: ignore[arg-type]
        print(f"## End to end on real programs (2 cores; medians of {runs} interleaved runs)\n")
        for name, (cmd, prepare) in loads.items():
            results = {tool: Measured() for tool in ways}
            for _ in range(runs):
                for tool, how in ways.items():
                    prepare()
                    run_once(how, cmd, tmp, env, results[tool], driver)  # type: ignore[arg-type]
            plain = statistics.median(results["plain"].wall)
            print(f"### {name}\n")
            print("| tool | wall s | slowdown | own peak RSS | written | of which analysis s |")
            print("|---|---|---|---|---|---|")
            for tool, m in results.items():
                wall = statistics.median(m.wall)
                rss = mib(statistics.median(m.rss_kb)) if m.rss_kb else "-"
                if tool.startswith(("perf", "heaptrack")) and m.rss_kb:
                    rss += " (analysis)"
                analysis = f"{statistics.median(m.analysis):.2f}" if m.analysis else "-"
                print(f"| {tool} | {wall:.2f} | {wall / plain:.2f}x | {rss} | "
                      f"{size(m.size) if m.size else '-'} | {analysis} |")
            if name.startswith("g++") and "heaptrack + heaptrack_print" in results:
                print("\n(heaptrack follows only the process it starts, the g++ driver, not cc1plus: "
                      "its row records a fraction of the allocations ctprof --mem records)")
            print()
            for tool in ("ctprof run --mem", "ctprof run"):
                fig = save_load_figures(str(ways[tool]["output"]), tmp, runs,
                                        with_v1=not args.no_v1 and tool.endswith("--mem"))
                per_m = (f"{fig['save_cpu'] / fig['allocs'] * 1e6:.2f} / {fig['load_cpu'] / fig['allocs'] * 1e6:.2f}"
                         if fig["allocs"] else "-")
                line = (f"{tool}: profile {size(fig['size'])}, {fig['stacks']:,} stacks, {fig['raw_stacks']:,} raw "
                        f"stacks of {fig['raw_frames']:,} addresses, {fig['allocs']:,} allocations; "
                        f"save {fig['save']:.3f} s ({fig['save_cpu']:.3f} s CPU), "
                        f"load {fig['load']:.3f} s ({fig['load_cpu']:.3f} s CPU; without the raw session, "
                        f"as the renderers load it, {fig['view']:.3f} s, {fig['view_cpu']:.3f} s CPU)"
                        + (f"; CPU s per million allocations, save / load: {per_m}" if fig["allocs"] else ""))
                if "v1_save" in fig:
                    line += (f"; format 1 on the same profile: {size(int(fig['v1_size']))}, "
                             f"save {fig['v1_save']:.2f} s, load {fig['v1_load']:.2f} s")
                print(line)
            print()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
