"""Symbol resolution (ctprof.symbols) against real programs compiled here.

Each program prints the runtime addresses of its functions (and return
addresses taken on a real call chain), then waits on stdin while the test
reads /proc/PID/maps; the test builds a Session by hand from those and checks
the names a user would see.  No sampler involved, no hard-coded addresses.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import pytest

from ctprof.profile import Frame
from ctprof.session import ProcessInfo, RawStack, Session
from ctprof.symbols import Resolver, TRUNCATED, resolve_session
from ctprof.symbols import demangle as dm
from ctprof.symbols import elf, symcache
from ctprof.symbols.maps import MapTable, parse_maps
from ctprof.symbols.perfmap import PerfMap

from conftest import PROGS, Built

IN_CI = bool(os.environ.get("CI"))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc needed")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test gets an empty symbol cache of its own."""
    monkeypatch.setenv("CTPROF_CACHE_DIR", str(tmp_path / "cache"))


# -- helpers --------------------------------------------------------------------

def skip_or_fail(reason):
    """Skip locally when the environment lacks something; with ``CI`` set
    fail instead, so CI never silently skips."""
    if IN_CI:
        pytest.fail(reason + " (CI is set: this test must run, not skip)")
    pytest.skip(reason)


@pytest.fixture
def compile_prog(tmp_path):
    """``compile_prog(source, name, *flags, shared=False)``: the path of
    tests/progs/SOURCE built by conftest's :class:`Built` (-O2 -pthread -ldl)
    as tmp_path/NAME (module names in frames come from NAME).  One directory
    per test, not the session-wide ``build`` fixture: several tests need the
    same NAME built with different flags, which that shared directory would
    overwrite."""
    built = Built(str(tmp_path))

    def compile(src, name, *flags, shared=False):
        compiler = "c++" if src.endswith(".cpp") else "cc"
        if not shutil.which(compiler):
            skip_or_fail(f"no {compiler} compiler (apt-get install build-essential)")
        return built(src, *flags, name=name, shared=shared)
    return compile


class Running:
    """A test program running until closed: its printed addresses and maps."""

    def __init__(self, *argv):
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.pid = self.proc.pid
        self.addrs = {}
        self.lists = {}
        self.wait_ready()

    def wait_ready(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line == "READY":
                return
            key, _, value = line.partition(" ")
            if key == "error":
                raise AssertionError(line)
            v = int(value, 16) if value not in ("(nil)", "") else 0
            self.addrs[key] = v
            self.lists.setdefault(key, []).append(v)
        raise AssertionError(f"program exited early (status {self.proc.wait()})")

    def maps(self):
        with open(f"/proc/{self.pid}/maps") as f:
            return f.read()

    def send(self, text):
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def session_for(pid, maps, stacks, exe="", perf_map=None):
    """A Session with one process and ``stacks``: list of (gen, ips leaf first)."""
    if isinstance(maps, str):
        maps = [maps]
    proc = ProcessInfo(pid=pid, exe=exe, maps=list(maps), perf_map=perf_map)
    raw = [RawStack(pid, pid, gen, tuple(ips), False, {"samples": 1}) for gen, ips in stacks]
    return Session(processes={pid: proc}, stacks=raw)


def names(frames):
    return [f.name for f in frames]


def nm_addr(path, symbol):
    out = subprocess.run(["nm", path], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == symbol:
            return int(parts[0], 16)
    raise AssertionError(f"{symbol} not in nm {path}")


def libc_debug_file(maps_text):
    """(libc path, debug file path or None) for the libc in ``maps_text``."""
    for m in parse_maps(maps_text):
        if os.path.basename(m.path).startswith("libc.so"):
            with open(m.path, "rb") as f:
                info = elf.parse(f.read())
            if not info.build_id:
                return m.path, None
            cand = f"/usr/lib/debug/.build-id/{info.build_id[:2]}/{info.build_id[2:]}.debug"
            return m.path, cand if os.path.exists(cand) else None
    raise AssertionError("no libc in maps")


# -- real programs: C ---------------------------------------------------------------

@pytest.mark.parametrize("pie", [True, False], ids=["pie", "no-pie"])
def test_call_chain_names(compile_prog, pie):
    flags = ["-fPIE", "-pie"] if pie else ["-fno-pie", "-no-pie"]
    exe = compile_prog("sym_basic.c", "sym_basic", *flags)
    with Running(exe) as p:
        a = p.addrs
        maps = p.maps()
        # leaf = an instruction inside sym_leaf; the rest are return addresses
        ips = [a["sym_leaf"] + 1, a["ra_leaf"], a["ra_mid"], a["ra_main"]]
        sess = session_for(p.pid, maps, [(0, ips), (0, [a["getpid"]])], exe=exe)
        prof = resolve_session(sess)
    stacks = [[prof.frames[i] for i in s] for s in prof.stacks]
    chain = stacks[0]
    assert names(chain)[1:] == ["main", "sym_mid", "sym_leaf"]
    assert chain[0].module.startswith("libc.so")
    assert chain[0].category == "library"
    for f in chain[1:]:
        assert f.module == "sym_basic" and f.category == "program"
    assert names(stacks[1]) == ["getpid"]
    assert stacks[1][0].module.startswith("libc.so")
    if not pie:
        assert a["sym_leaf"] == nm_addr(exe, "sym_leaf")   # really not relocated
    assert prof.pids == [p.pid, p.pid] and prof.values["samples"] == [1, 1]


def test_program_category_without_exe(compile_prog):
    """Without ProcessInfo.exe the first executable file mapping is the program."""
    exe = compile_prog("sym_basic.c", "sym_basic")
    with Running(exe) as p:
        sess = session_for(p.pid, p.maps(), [(0, [p.addrs["sym_leaf"]])], exe="")
        frames = Resolver(sess).frames(p.pid, 0, [p.addrs["sym_leaf"]])
    assert frames == [Frame("sym_leaf", "sym_basic", "program")]


def test_stripped_program_keeps_library_names(compile_prog, tmp_path):
    full = compile_prog("sym_basic.c", "full")
    exe = str(tmp_path / "sym_stripped")
    shutil.copy(full, exe)
    subprocess.run(["strip", exe], check=True)
    with Running(exe) as p:
        a = p.addrs
        ips = [a["sym_leaf"], a["ra_leaf"], a["ra_mid"]]
        sess = session_for(p.pid, p.maps(), [(0, ips), (0, [a["getpid"]])], exe=exe)
        r = Resolver(sess, group_functions=False)
        chain = r.frames(p.pid, 0, ips)
        libc = r.frames(p.pid, 0, [a["getpid"]])
        grouped = Resolver(sess).frames(p.pid, 0, ips)
    bias = a["sym_leaf"] - nm_addr(full, "sym_leaf")
    # Program frames: module + ELF virtual address of the ip (what addr2line -e takes).
    assert names(chain) == [f"sym_stripped+{ip - bias:#x}" for ip in reversed(ips)]
    # Grouped (the default): module + the start of the function holding the
    # address (return addresses at ip - 1), as the unstripped file's symbols say.
    out = subprocess.run(["nm", "--defined-only", full], capture_output=True, text=True, check=True).stdout
    starts = sorted(int(l.split()[0], 16) for l in out.splitlines() if l.split()[1] in "tT")
    expected = []
    for k, ip in enumerate(ips):
        look = ip - bias - (1 if k else 0)
        expected.append(f"sym_stripped+{max(s for s in starts if s <= look):#x}")
    assert names(grouped) == expected[::-1]
    assert all(f.category == "program" for f in chain)
    assert names(libc) == ["getpid"]
    assert any("sym_stripped" in w and "no symbols" in w for w in r.warnings)


def test_unstripped_O2_static_functions(compile_prog):
    """.symtab (not only .dynsym) of an -O2 program: local functions resolve."""
    exe = compile_prog("sym_lines.c", "sym_o2")
    with Running(exe) as p:
        a = p.addrs
        sess = session_for(p.pid, p.maps(), [])
        chain = Resolver(sess).frames(p.pid, 0, [a["record"], a["ra_direct"]])
    assert names(chain) == ["outer", "record"]
    assert chain[0].file is None   # lines were not asked for


def test_call_to_abort_is_last_instruction(compile_prog):
    exe = compile_prog("sym_abort.c", "sym_abort", "-fno-toplevel-reorder", "-falign-functions=1")
    with Running(exe) as p:
        bt = p.lists["bt"]
        sess = session_for(p.pid, p.maps(), [(0, bt)], exe=exe)
        r = Resolver(sess)
        # The return address into ends_in_abort is the first byte past it:
        # looked up as is it would be charged to whatever follows.
        end = [ip for ip in bt if ip > p.addrs["ends_in_abort"] and ip - p.addrs["ends_in_abort"] < 64]
        assert end, "no return address into ends_in_abort in the backtrace"
        naive = r.resolve(p.pid, 0, end[0], is_return=False)
        assert naive[0].name != "ends_in_abort"   # precondition: the call is the last instruction
        chain = names(r.frames(p.pid, 0, bt))
    i = chain.index("ends_in_abort")
    assert chain[i - 1] == "main"
    assert chain[i + 1] == "abort"
    assert chain.count("main") == 1


# -- C++ -------------------------------------------------------------------------------

def test_cxx_template_namespace_demangled(compile_prog):
    exe = compile_prog("sym_cxx.cpp", "sym_cxx", "-Wno-pmf-conversions")
    with Running(exe) as p:
        sess = session_for(p.pid, p.maps(), [(0, [p.addrs["run"] + 2])], exe=exe)
        prof = resolve_session(sess)
        raw = resolve_session(sess, demangle=False)
    assert names(prof.frames) == ["ns::Box<int>::run(std::vector<int, std::allocator<int> > const&)"]
    assert prof.frames[0].category == "program"
    assert names(raw.frames) == ["_ZN2ns3BoxIiE3runERKSt6vectorIiSaIiEE"]


def test_demangle_unit():
    if not dm.available():
        skip_or_fail("libstdc++ not loadable (apt-get install libstdc++6)")
    assert dm.demangle("_ZN2ns3BoxIiE3runERKSt6vectorIiSaIiEE") == \
        "ns::Box<int>::run(std::vector<int, std::allocator<int> > const&)"
    assert dm.demangle("main") == "main"
    assert dm.demangle("_Znot_valid") == "_Znot_valid"
    # Rust legacy: hash suffix dropped, escapes undone
    assert dm.demangle("_ZN4core3fmt5write17h0123456789abcdefE") == "core::fmt::write"
    assert dm.demangle("_ZN66_$LT$alloc..vec..Vec$LT$T$GT$$u20$as$u20$core..ops..drop..Drop$GT$"
                       "4drop17h1234567890abcdefE") == "<alloc::vec::Vec<T> as core::ops::drop::Drop>::drop"
    assert dm.demangle("_ZN3foo17h0123456789abcdefE") == "foo"     # __cxa_demangle: foo::h0123456789abcdef
    # C++ names that merely look like it keep their ::h part: a function (has
    # a parameter list) and a component that is not 16 lower-case hex digits
    assert dm.demangle("_ZN3foo17h0123456789abcdefEv") == "foo::h0123456789abcdef()"
    assert dm.demangle("_ZN3foo17h0123456789ABCDEFE") == "foo::h0123456789ABCDEF"
    assert dm.demangle_many(["_ZN3foo3barEv", "_ZN3foo3barEv"]) == ["foo::bar()", "foo::bar()"]


# -- dlopen and generations ----------------------------------------------------------------

def _replace_mapping(maps_text, old_path, new_path, new_inode):
    out = []
    for line in maps_text.splitlines():
        if line.endswith(old_path):
            parts = line.split()
            parts[4] = str(new_inode)
            parts[5] = new_path
            line = " ".join(parts)
        out.append(line)
    return "\n".join(out) + "\n"


def _load_bias(maps_text, path):
    """Runtime address minus ELF vaddr for a library whose first mapping has offset 0."""
    m = [m for m in parse_maps(maps_text) if m.path == path][0]
    assert m.offset == 0
    return m.start


def test_dlopen_generations(compile_prog):
    alpha = compile_prog("sym_plugin.c", "libsym_alpha", "-DPLUGIN_FN=plugin_alpha", shared=True)
    omega = compile_prog("sym_plugin.c", "libsym_omega", "-DPLUGIN_FN=plugin_omega", shared=True)
    host = compile_prog("sym_dlopen.c", "sym_dlopen")
    with Running(host, alpha) as p:
        gen0 = p.maps()
        p.send("load\n")
        p.wait_ready()
        gen1 = p.maps()
        addr = p.addrs["plugin_alpha"]
    assert "libsym_alpha.so" not in gen0 and "libsym_alpha.so" in gen1
    # gen 2: the plugin was dlclosed and another library mapped at the same place
    gen2 = _replace_mapping(gen1, alpha, omega, os.stat(omega).st_ino)
    # gen 3: same, but the maps name a file that has been replaced since (inode differs)
    gen3 = _replace_mapping(gen1, alpha, omega, os.stat(alpha).st_ino)
    sess = session_for(p.pid, [gen0, gen1, gen2, gen3],
                       [(0, [addr]), (1, [addr]), (2, [addr]), (3, [addr + 1])], exe=host)
    r = Resolver(sess)
    got = [r.frames(p.pid, s.gen, s.ips) for s in sess.stacks]
    # gen 0 predates the dlopen: found in the nearest later snapshot
    assert names(got[0]) == ["plugin_alpha"]
    assert names(got[1]) == ["plugin_alpha"]
    assert got[1][0].module == "libsym_alpha.so" and got[1][0].category == "library"
    assert names(got[2]) == ["plugin_omega"]
    assert got[2][0].module == "libsym_omega.so"
    # replaced file: no symbols trusted, module+offset and one warning
    assert got[3][0].name.startswith("libsym_omega.so+0x")
    assert any("replaced" in w for w in r.warnings)
    # through resolve_session: gen 0 and gen 1 give the same stack, merged
    prof = resolve_session(sess)
    assert sorted(zip([names(prof.frames[i] for i in s) for s in prof.stacks], prof.values["samples"])) == \
        [(["libsym_omega.so+%#x" % (addr + 1 - _load_bias(gen3, omega))], 1),
         (["plugin_alpha"], 2), (["plugin_omega"], 1)]
    assert any("replaced" in w for w in prof.metadata["symbol_warnings"])


# -- libc debug file (libc6-dbg) --------------------------------------------------------------

def test_libc_static_function_via_build_id_debug_file(compile_prog):
    exe = compile_prog("sym_basic.c", "sym_basic")
    with Running(exe) as p:
        maps = p.maps()
        ra_main = p.addrs["ra_main"]
    libc, debug = libc_debug_file(maps)
    with open(libc, "rb") as f:
        own = elf.parse(f.read())
    if own.section(".symtab") is not None:
        pytest.skip(f"{libc} is not stripped; the debug-file path is not needed")
    sess = session_for(p.pid, maps, [], exe=exe)
    # Without debug files: __libc_start_call_main is static, not in .dynsym.
    bare = Resolver(sess, debug_dirs=(), use_cache=False).frames(p.pid, 0, [0, ra_main])[0]
    assert bare.name.startswith("libc.so.6+0x") and bare.category == "library"
    if debug is None:
        skip_or_fail("libc debug file not installed (Debian: apt-get install libc6-dbg)")
    named = Resolver(sess).frames(p.pid, 0, [0, ra_main])[0]
    assert named.name == "__libc_start_call_main"
    assert named.module == "libc.so.6"


# -- perf map, pseudo mappings, unknown ---------------------------------------------------------

def test_perf_map_and_pseudo_mappings():
    maps = ("555555554000-555555556000 r-xp 00000000 00:00 0 [heap]\n"
            "7f0000000000-7f0000010000 r-xp 00000000 00:00 0 \n"
            "7f1000000000-7f1000001000 r-xp 00000000 00:01 77 /memfd:jit (deleted)\n"
            "7ffff7fc1000-7ffff7fc3000 r-xp 00000000 00:00 0 [vdso]\n")
    perf = ("7f0000001000 100 LuaJIT::trace_1\n"
            "0x7f0000002000 0x80 py::work:/srv/app.py\n"
            "garbage line\n")
    pid = 4242
    ips = [0x7f0000001010, 0x7f0000002041, 0x7f0000005000, 0x555555554010,
           0x7f1000000010, 0x7ffff7fc1100, 0x1234]
    sess = session_for(pid, maps, [(0, [ip]) for ip in ips], perf_map=perf)
    r = Resolver(sess)
    got = [r.frames(pid, 0, [ip])[0] for ip in ips]
    assert got[0] == Frame("LuaJIT::trace_1", "[jit]", "jit")
    assert got[1].name == "py::work:/srv/app.py" and got[1].category == "jit"
    assert got[2] == Frame("[anon]+0x5000", "[anon]", "unknown")
    assert got[3].name == "[heap]+0x10"
    assert got[4].name == "memfd:jit+0x10"
    assert got[5].category == "kernel" and got[5].module == "[vdso]"
    assert got[6] == Frame("[unknown] 0x1234", "", "unknown")
    # a return address just past a perf-map entry belongs to that entry (ip - 1)
    assert r.frames(pid, 0, [0x7f0000001010, 0x7f0000001100])[0].name == "LuaJIT::trace_1"
    pm = PerfMap("10 10 a\n18 4 b\n")
    assert pm.lookup(0x19) == "b" and pm.lookup(0x1c) == "a" and pm.lookup(0x20) is None


def test_own_vdso_named():
    """The running interpreter's own vdso: frames get __vdso_* names."""
    with open("/proc/self/maps") as f:
        maps = f.read()
    vdso = [m for m in parse_maps(maps) if m.path == "[vdso]"]
    if not vdso:
        pytest.skip("no [vdso] mapping")
    mod = elf.load_module("", data=__import__("ctypes").string_at(vdso[0].start, vdso[0].end - vdso[0].start),
                          debug_dirs=())
    if not len(mod.table):
        pytest.skip("vdso has no symbols")
    start = mod.table.starts[0]
    sess = session_for(os.getpid(), maps, [])
    f = Resolver(sess).frames(os.getpid(), 0, [vdso[0].start + start - mod.loads[0][1] + mod.loads[0][0]])[0]
    assert f.category == "kernel" and f.module == "[vdso]"
    assert f.name == dm.demangle(mod.table.name(0))


def test_truncated_and_merge():
    maps = "7f0000000000-7f0000010000 r-xp 00000000 00:00 0 \n"
    perf = "7f0000001000 100 jitted\n"
    pid = 7
    proc = ProcessInfo(pid=pid, maps=[maps], perf_map=perf)
    stacks = [RawStack(pid, 8, 0, (0x7f0000001001,), True, {"samples": 2}),
              RawStack(pid, 8, 0, (0x7f0000001002,), True, {"samples": 3}),   # same name -> merged
              RawStack(pid, 9, 0, (0x7f0000001002,), False, {"samples": 1})]
    prof = resolve_session(Session(processes={pid: proc}, stacks=stacks))
    rows = [([prof.frames[i] for i in s], v, t)
            for s, v, t in zip(prof.stacks, prof.values["samples"], prof.tids)]
    assert rows == [([TRUNCATED, Frame("jitted", "[jit]", "jit")], 5, 8),
                    ([Frame("jitted", "[jit]", "jit")], 1, 9)]
    assert prof.metadata["symbol_warnings"] == []


def test_maps_parser():
    t = MapTable("00400000-00401000 r-xp 00000000 fe:01 12 /usr/bin/x\n"
                 "bad line\n"
                 "7f0000000f00-7f0000000f10 r-xp 00001000 fe:01 13 /lib/a b.so (deleted)\n")
    assert t.find(0x400000).path == "/usr/bin/x"
    assert t.find(0x401000) is None
    m = t.find(0x7f0000000f05)
    assert m.path == "/lib/a b.so" and m.deleted and m.module == "a b.so"
    assert m.file_offset(0x7f0000000f05) == 0x1005
    assert t.main_executable() == "/usr/bin/x"


# -- source lines and inlining ------------------------------------------------------------------

def _marker_line(src, marker):
    with open(os.path.join(PROGS, src)) as f:
        for n, line in enumerate(f, 1):
            if f"/* {marker} */" in line:
                return n
    raise AssertionError(marker)


def test_lines_and_inlined_frames(compile_prog, monkeypatch):
    exe = compile_prog("sym_lines.c", "sym_lines", "-g")
    with Running(exe) as p:
        a = p.addrs
        sess = session_for(p.pid, p.maps(), [(0, [a["record"], a["ra_direct"]]),
                                              (0, [a["record"], a["ra_inline"]])], exe=exe)
        prof = resolve_session(sess, lines=True)
    # the second run answers from the line cache without opening DWARF
    from ctprof.symbols import lines as lines_mod

    def no_dwarf(*args, **kwargs):
        raise AssertionError("DWARF parsed although cached")
    monkeypatch.setattr(lines_mod, "LineInfo", no_dwarf)
    again = resolve_session(sess, lines=True)
    assert again.frames == prof.frames and again.stacks == prof.stacks
    direct, inline = ([prof.frames[i] for i in s] for s in prof.stacks)
    src = "sym_lines.c"
    assert names(direct) == ["outer", "record"]
    assert os.path.basename(direct[0].file) == src
    assert direct[0].line == _marker_line(src, "MARK_DIRECT")
    assert not direct[0].inlined
    assert os.path.basename(direct[1].file) == src   # the leaf's own line
    # the call inside the inlined helper: outer (at the helper's call site),
    # then helper as its own inlined frame, then record
    assert names(inline) == ["outer", "helper", "record"]
    assert inline[0].line == _marker_line(src, "MARK_OUTER") and not inline[0].inlined
    assert inline[1].line == _marker_line(src, "MARK_INLINE") and inline[1].inlined
    assert os.path.basename(inline[1].file) == src


# -- cache ---------------------------------------------------------------------------------------

def test_second_resolution_uses_disk_cache(compile_prog, monkeypatch):
    exe = compile_prog("sym_basic.c", "sym_basic")
    with Running(exe) as p:
        a = p.addrs
        ips = [a["sym_leaf"], a["ra_leaf"], a["ra_mid"], a["ra_main"]]
        sess = session_for(p.pid, p.maps(), [(0, ips), (0, [a["getpid"]])], exe=exe)
    first = Resolver(sess)
    want = names(first.frames(p.pid, 0, ips)) + names(first.frames(p.pid, 0, [a["getpid"]]))
    assert first.stats["modules"] >= 2 and first.stats["modules_cached"] == 0
    cache = os.path.join(os.environ["CTPROF_CACHE_DIR"], "symbols")
    assert os.stat(cache).st_mode & 0o777 == 0o700
    assert all(os.stat(os.path.join(cache, f)).st_mode & 0o777 == 0o600 for f in os.listdir(cache))

    def no_parsing(*args, **kwargs):
        raise AssertionError("ELF parsed although cached")
    monkeypatch.setattr(elf, "load_module", no_parsing)
    monkeypatch.setattr(elf, "parse", no_parsing)
    second = Resolver(sess)
    got = names(second.frames(p.pid, 0, ips)) + names(second.frames(p.pid, 0, [a["getpid"]]))
    assert got == want and want[1:4] == ["main", "sym_mid", "sym_leaf"]
    assert second.stats["modules_cached"] == second.stats["modules"] >= 2
    monkeypatch.undo()
    monkeypatch.setenv("CTPROF_CACHE_DIR", os.path.dirname(cache))
    # A corrupt cache entry is a miss, not an error.
    for f in os.listdir(cache):
        with open(os.path.join(cache, f), "r+b") as fh:
            fh.truncate(20)
    third = Resolver(sess)
    assert names(third.frames(p.pid, 0, ips)) == want[:4]
    assert third.stats["modules_cached"] == 0


def test_cache_roundtrip_identical(tmp_path):
    mod = elf.load_module("/proc/self/exe")
    back = symcache.decode(symcache.encode(mod))
    assert back is not None
    assert list(back.table.starts) == list(mod.table.starts)
    assert back.table.blob == mod.table.blob and back.loads == [tuple(x) for x in mod.loads]


# -- robustness ----------------------------------------------------------------------------------

def _check_loader(path):
    try:
        mod = elf.load_module(path, debug_dirs=())
    except elf.ElfError:
        return
    for va in (0, 0x1000, 0x1139, 2**63):
        mod.table.lookup(va)
        mod.vaddr(va)


def test_fuzz_mutated_elf_files(compile_prog, tmp_path):
    exe = compile_prog("sym_basic.c", "sym_basic")
    with open(exe, "rb") as f:
        good = f.read()
    rng = random.Random(1234)
    target = str(tmp_path / "mutant")
    info = elf.parse(good)
    symtab = info.section(".symtab")
    hot = [(0, 64), (symtab.offset, symtab.offset + symtab.size)]
    for i in range(400):
        data = bytearray(good)
        kind = i % 4
        if kind == 0:
            data = data[:rng.randrange(len(data))]
        elif kind == 1:   # flip bytes in the ELF header / program headers
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(0, 0x200)] ^= 1 << rng.randrange(8)
        elif kind == 2:   # flip bytes in the symbol table or header fields
            lo, hi = hot[rng.randrange(len(hot))]
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(lo, hi)] = rng.randrange(256)
        else:             # random damage anywhere, including the section headers
            for _ in range(rng.randint(1, 50)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data[-rng.randrange(1, 200):] = b""
        with open(target, "wb") as f:
            f.write(data)
        _check_loader(target)
    # the whole resolver on a mapping of a broken or non-ELF file, each once
    for content in (b"", b"\x7fELF", b"not an elf at all" * 100, good[:4096]):
        with open(target, "wb") as f:
            f.write(content)
        maps = f"7f0000000000-7f0000010000 r-xp 00000000 00:00 0 {target}\n"
        r = Resolver(session_for(1, maps, []), use_cache=False)
        assert r.frames(1, 0, [0x7f0000000123, 0x7f0000000456])[0].name.startswith("mutant+0x")
        assert len(r.warnings) == 1


def test_unreadable_deleted_and_missing(tmp_path):
    maps = ("7f0000000000-7f0000001000 r-xp 00000000 fe:01 99 /nonexistent/libgone.so\n"
            "7f0000001000-7f0000002000 r-xp 00002000 fe:01 98 /usr/lib/libold.so (deleted)\n"
            f"7f0000002000-7f0000003000 r-xp 00000000 fe:01 97 {tmp_path}\n"
            "7f0000003000-7f0000004000 r-xp 00000000 00:05 5 /dev/zero\n")
    r = Resolver(session_for(3, maps, []))
    got = [r.frames(3, 0, [ip])[0] for ip in (0x7f0000000010, 0x7f0000000020, 0x7f0000001010,
                                               0x7f0000002010, 0x7f0000003010)]
    assert names(got) == ["libgone.so+0x10", "libgone.so+0x20", "libold.so+0x2010",
                          f"{os.path.basename(str(tmp_path))}+0x10", "zero+0x10"]
    assert len(r.warnings) == 4                  # once per module
    assert any("deleted" in w for w in r.warnings)
    # an unknown pid or generation never raises either
    assert r.frames(99, 5, [0x10])[0].name == "[unknown] 0x10"


def test_symbol_size_is_honoured(compile_prog):
    """An address in the padding after a function is not that function."""
    exe = compile_prog("sym_basic.c", "sym_basic")
    out = subprocess.run(["nm", "-S", "--defined-only", "-n", exe], check=True, capture_output=True,
                         text=True).stdout
    syms = [(int(p[0], 16), int(p[1], 16), p[3]) for p in (l.split() for l in out.splitlines())
            if len(p) == 4 and p[2] in "Tt"]
    gap = None
    for (a, size, name), (b, _s, _n) in zip(syms, syms[1:]):
        if name == "sym_leaf" and a + size < b:
            gap = (a, size, name)
    if gap is None:
        pytest.skip("sym_leaf is not followed by padding in this build")
    with Running(exe) as p:
        bias = p.addrs["sym_leaf"] - gap[0]
        r = Resolver(session_for(p.pid, p.maps(), [], exe=exe))
        last = r.frames(p.pid, 0, [bias + gap[0] + gap[1] - 1])[0]
        past = r.frames(p.pid, 0, [bias + gap[0] + gap[1]])[0]
    assert last.name == "sym_leaf"
    assert past.name == f"sym_basic+{gap[0] + gap[1]:#x}"


def test_progress_only_when_asked_or_tty(monkeypatch, capsys):
    from ctprof.symbols import resolve as resolve_mod
    maps = "7f0000000000-7f0000010000 r-xp 00000000 00:00 0 \n"
    sess = session_for(5, maps, [(0, [0x7f0000000000 + i]) for i in range(600)])
    monkeypatch.setattr(resolve_mod._Progress, "DELAY_S", 0.0)
    resolve_session(sess, progress=False)
    assert capsys.readouterr().err == ""
    resolve_session(sess)            # stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""
    resolve_session(sess, progress=True)
    err = capsys.readouterr().err
    assert "resolved 600 addresses" in err and err.endswith("\n")
    assert capsys.readouterr().out == ""


def test_lines_without_debug_info_keep_names(compile_prog):
    """lines=True on a program without DWARF: names as usual, no file/line."""
    exe = compile_prog("sym_lines.c", "sym_nodwarf")
    with Running(exe) as p:
        a = p.addrs
        sess = session_for(p.pid, p.maps(), [(0, [a["record"], a["ra_inline"]])], exe=exe)
        prof = resolve_session(sess, lines=True)
    frames = [prof.frames[i] for i in prof.stacks[0]]
    assert names(frames)[-2:] == ["outer", "record"]
    assert all(f.line is None for f in frames)
