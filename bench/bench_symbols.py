#!/usr/bin/env python3
"""Benchmark symbol resolution (ctprof.symbols) against addr2line.

Generates a C program with 100,000 functions (built once, kept in
``$TMPDIR/ctprof-bench-symbols``), runs it so it is mapped like a real target
(PIE, ASLR) together with libc, libm and libstdc++, picks 20,000 unique
addresses inside functions of those four modules (chosen with ``nm``, not
with ctprof's own parser), and times in fresh interpreters:

- cold: ``resolve_session`` with an empty symbol cache (CTPROF_CACHE_DIR=tmp)
- warm: the same with the cache the cold run wrote
- ``addr2line -f -e`` on the same addresses (ELF virtual addresses), per module

Prints a table of medians.  Targets: cold < 3 s, warm < 0.3 s.
Usage: python bench/bench_symbols.py [--runs N] [--functions N] [--addresses N]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ctprof.symbols import elf  # noqa: E402
from ctprof.symbols.maps import parse_maps  # noqa: E402

CHILD = r"""
import json, sys, time
sys.path.insert(0, %(root)r)
t0 = time.perf_counter()
from ctprof.session import ProcessInfo, RawStack, Session
from ctprof.symbols import resolve_session
t1 = time.perf_counter()
spec = json.load(open(sys.argv[1]))
pid = spec["pid"]
sess = Session(processes={pid: ProcessInfo(pid=pid, exe=spec["exe"], maps=[spec["maps"]])},
               stacks=[RawStack(pid, i, 0, (ip,), False, {"samples": 1}) for i, ip in enumerate(spec["ips"])])
t2 = time.perf_counter()
prof = resolve_session(sess, progress=False)
t3 = time.perf_counter()
# one thread per address, so no two rows merge and names stay in order
names = [prof.frames[s[-1]].name for s in prof.stacks]
json.dump({"import": t1 - t0, "resolve": t3 - t2, "names": names,
           "stats": prof.metadata.get("symbol_stats"),
           "warnings": prof.metadata.get("symbol_warnings")}, open(sys.argv[2], "w"))
"""


def build_program(nfuncs: int) -> str:
    work = os.path.join(tempfile.gettempdir(), f"ctprof-bench-symbols-{nfuncs}")
    exe = os.path.join(work, "bigprog")
    if os.path.exists(exe):
        return exe
    os.makedirs(work, exist_ok=True)
    rng = random.Random(42)
    parts = 4
    objs, procs = [], []
    per = (nfuncs + parts - 1) // parts
    for p in range(parts):
        src = os.path.join(work, f"part{p}.c")
        with open(src, "w") as f:
            for i in range(p * per, min(nfuncs, (p + 1) * per)):
                body = " + ".join(f"x * {rng.randrange(1, 99)}" for _ in range(rng.randint(1, 4)))
                f.write(f"int func_{i:06d}(int x) {{ return {body} + {rng.randrange(1000)}; }}\n")
        obj = src[:-2] + ".o"
        objs.append(obj)
        procs.append(subprocess.Popen(["cc", "-O0", "-c", src, "-o", obj]))
    main = os.path.join(work, "main.cpp")
    with open(main, "w") as f:
        f.write("#include <cmath>\n#include <string>\n#include <unistd.h>\n"
                "int main(int argc, char **) {\n"
                "  std::string s(argc + 40, 'x');\n"
                "  volatile double d = std::sqrt((double)s.size());\n"
                "  char c; while (read(0, &c, 1) > 0) {}\n"
                "  return (int)d == 0; }\n")
    procs.append(subprocess.Popen(["c++", "-O2", "-c", main, "-o", main[:-4] + ".o"]))
    print(f"building {nfuncs} functions (once, in {work}) ...", file=sys.stderr)
    if any(p.wait() for p in procs):
        raise SystemExit("compile failed")
    subprocess.run(["c++", "-o", exe + ".tmp", main[:-4] + ".o", *objs,
                    "-Wl,--no-as-needed", "-lm", "-lstdc++"], check=True)
    os.replace(exe + ".tmp", exe)
    return exe


def nm_functions(path: str, dynamic: bool):
    """(vaddr, size) of defined function symbols with a size, per nm."""
    cmd = ["nm", "--defined-only", "-S"] + (["-D"] if dynamic else []) + [path]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    seen = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "TtWi":
            va, size = int(parts[0], 16), int(parts[1], 16)
            if size > 1:
                seen[va] = size
    return sorted(seen.items())


def runtime_address(maps, path: str, loads, vaddr: int):
    for p_offset, p_vaddr, p_filesz, _memsz in loads:
        if p_vaddr <= vaddr < p_vaddr + p_filesz:
            off = vaddr - p_vaddr + p_offset
            for m in maps:
                if m.path == path and m.offset <= off < m.offset + (m.end - m.start):
                    return m.start + off - m.offset
    return None


def pick_addresses(maps_text: str, exe: str, total: int, rng: random.Random):
    maps = parse_maps(maps_text)
    wanted = {"program": exe}
    for m in maps:
        base = os.path.basename(m.path)
        for key in ("libc.so", "libm.so", "libstdc++.so"):
            if base.startswith(key) and key not in wanted:
                wanted[key] = m.path
    shares = {"program": 0.7, "libc.so": 0.1, "libm.so": 0.1, "libstdc++.so": 0.1}
    picked = {}   # path -> list of (runtime, vaddr)
    for key, path in wanted.items():
        with open(path, "rb") as f:
            loads = elf.parse(f.read()).loads
        funcs = nm_functions(path, dynamic=key != "program")
        n = min(int(total * shares[key]), len(funcs) * 4)
        chosen = set()
        out = []
        tries = 0
        while len(out) < n and tries < n * 20:
            tries += 1
            va, size = funcs[rng.randrange(len(funcs))]
            va += rng.randrange(size)
            if va in chosen:
                continue
            rt = runtime_address(maps, path, loads, va)
            if rt is None:
                continue
            chosen.add(va)
            out.append((rt, va))
        picked[path] = out
    return picked


def run_child(spec_path: str, cache: str) -> dict:
    out = spec_path + ".out"
    env = dict(os.environ, CTPROF_CACHE_DIR=cache)
    subprocess.run([sys.executable, "-c", CHILD % {"root": ROOT}, spec_path, out], env=env, check=True)
    with open(out) as f:
        return json.load(f)


def time_addr2line(picked) -> float:
    t0 = time.perf_counter()
    for path, pairs in picked.items():
        data = "\n".join(f"{va:#x}" for _rt, va in pairs) + "\n"
        subprocess.run(["addr2line", "-f", "-e", path], input=data, capture_output=True, text=True,
                       check=True)
    return time.perf_counter() - t0


def addr2line_names(path, pairs):
    data = "\n".join(f"{va:#x}" for _rt, va in pairs) + "\n"
    out = subprocess.run(["addr2line", "-f", "-C", "-e", path], input=data, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return out[0::2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--functions", type=int, default=100_000)
    ap.add_argument("--addresses", type=int, default=20_000)
    args = ap.parse_args()
    if not shutil.which("addr2line") or not shutil.which("nm"):
        raise SystemExit("needs binutils (nm, addr2line)")
    exe = build_program(args.functions)
    target = subprocess.Popen([exe], stdin=subprocess.PIPE)
    try:
        time.sleep(0.2)
        with open(f"/proc/{target.pid}/maps") as f:
            maps_text = f.read()
        picked = pick_addresses(maps_text, exe, args.addresses, random.Random(7))
    finally:
        target.stdin.close()
        target.wait()
    ips = [rt for pairs in picked.values() for rt, _va in pairs]
    target_pid = target.pid
    work = tempfile.mkdtemp(prefix="ctprof-bench-")
    try:
        spec = os.path.join(work, "spec.json")
        with open(spec, "w") as f:
            json.dump({"pid": target_pid, "exe": exe, "maps": maps_text, "ips": ips}, f)
        cold, warm, a2l, a2l_exe = [], [], [], []
        result = None
        for i in range(args.runs):
            cache = os.path.join(work, f"cache{i}")
            r = run_child(spec, cache)
            cold.append(r["resolve"])
            r2 = run_child(spec, cache)
            warm.append(r2["resolve"])
            assert r2["names"] == r["names"], "warm and cold disagree"
            result = r2
            a2l.append(time_addr2line(picked))
            a2l_exe.append(time_addr2line({exe: picked[exe]}))
        # agreement with addr2line on the generated executable
        names = dict(zip(ips, result["names"]))
        theirs = addr2line_names(exe, picked[exe])
        agree = sum(1 for (rt, _va), t in zip(picked[exe], theirs) if names[rt] == t)
        named = sum(1 for n in result["names"] if "+0x" not in n and not n.startswith("["))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(xs):
        return statistics.median(xs)
    counts = {os.path.basename(p): len(v) for p, v in picked.items()}
    print(f"\nsymbol resolution benchmark: {len(ips)} unique addresses "
          f"({', '.join(f'{k} {v}' for k, v in counts.items())}); {args.runs} runs, medians")
    print(f"{'what':44} {'addresses':>9} {'median s':>9} {'min s':>8}")
    rows = [("ctprof resolve_session, cold (empty cache)", len(ips), cold),
            ("ctprof resolve_session, warm (disk cache)", len(ips), warm),
            ("addr2line -f -e, all four modules", len(ips), a2l),
            ("addr2line -f -e, generated executable only", len(picked[exe]), a2l_exe)]
    for what, n, xs in rows:
        print(f"{what:44} {n:9d} {med(xs):9.3f} {min(xs):8.3f}")
    print(f"targets: cold < 3 s ({'ok' if med(cold) < 3 else 'MISSED'}), "
          f"warm < 0.3 s ({'ok' if med(warm) < 0.3 else 'MISSED'})")
    print(f"named: {named}/{len(ips)}; agreement with addr2line on the executable: "
          f"{agree}/{len(picked[exe])}; modules {result['stats']}; warnings {len(result['warnings'])}")


if __name__ == "__main__":
    main()
