"""Rust v0 symbol names (``_R...``) in human form.

The demangler (:mod:`ctprof.symbols.rustv0`) is checked three ways: against
binutils' ``c++filt`` over every v0 symbol of a real Rust release binary
built here with ``rustc -C symbol-mangling-version=v0 -O``; on hand-written
names covering the grammar (punycode, const generics, fn pointers with
binders, ``dyn`` with associated types, shims, bad input); and end to end:
the binary's profile shows ``crate::module::function`` names, never ``_R``,
with the shares the program measures itself.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess

import pytest

from conftest import PROGS, ctprof, load_profile
from ctprof.symbols.demangle import demangle
from ctprof.symbols.rustv0 import demangle_v0


def _rustc() -> str:
    rustc = shutil.which("rustc")
    if not rustc:
        pytest.skip("rustc is not installed (https://rustup.rs); the Rust tests need it to build a v0-mangled binary")
    return rustc


@pytest.fixture(scope="module")
def rust_binary(tmp_path_factory) -> str:
    """tests/progs/rust_hot.rs built as a release binary with v0 names."""
    rustc = _rustc()
    out = str(tmp_path_factory.mktemp("rust") / "rust_hot")
    res = subprocess.run([rustc, "-C", "symbol-mangling-version=v0", "-O", "-g", "-o", out,
                          os.path.join(PROGS, "rust_hot.rs")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"rustc failed:\n{res.stderr[-3000:]}"
    return out


def _v0_symbols(path: str):
    from ctprof.symbols import elf
    mod = elf.load_module(path, debug_dirs=())
    names = {mod.table.name(i) for i in range(len(mod.table))}
    return sorted(n for n in names if n.startswith("_R"))


def _cplusfilt(names):
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt:
        pytest.skip("c++filt (binutils) is not installed; it is the reference for v0 names")
    res = subprocess.run([cxxfilt], input="\n".join(names) + "\n", capture_output=True, text=True, check=True)
    out = res.stdout.splitlines()
    if out and out[0] == names[0]:
        pytest.skip("this c++filt does not demangle Rust v0 names (binutils >= 2.36 does)")
    return out


def test_every_v0_symbol_of_a_release_binary_matches_cplusfilt(rust_binary):
    names = _v0_symbols(rust_binary)
    assert len(names) > 200, f"only {len(names)} v0 symbols: was the binary built with v0 mangling?"
    # c++filt drops a ".suffix" (".0", ".llvm.123"); we keep it, so hand it
    # the names without one and compare those.
    plain = [n.split(".")[0] for n in names]
    reference = _cplusfilt(plain)
    assert len(reference) == len(plain)
    mismatches = [(raw, demangle_v0(raw, verbose=True), ref) for raw, ref in zip(plain, reference)
                  if demangle_v0(raw, verbose=True) != ref]
    assert not mismatches, "differs from c++filt:\n" + "\n".join(f"{r}\n  ours   {o}\n  c++filt {c}"
                                                                  for r, o, c in mismatches[:10])
    # The binary really exercised the grammar.
    text = "\n".join(reference)
    for feature in ("{closure#", "{shim:vtable#", " as ", "::<", "dyn ", "größe::maß", "Grid<4: usize>", "&'a"):
        assert feature in text, f"no {feature!r} among the binary's names"


def test_default_form_drops_crate_hashes_and_constant_types(rust_binary):
    for raw in _v0_symbols(rust_binary):
        verbose = demangle_v0(raw, verbose=True)
        short = demangle_v0(raw)
        assert short is not None and not short.startswith("_R")
        expected = re.sub(r": (?:[iu](?:8|16|32|64|128|size)|bool|char)\b", "", re.sub(r"\[[0-9a-f]+\]", "", verbose))
        assert short == expected, raw


HAND_WRITTEN = [
    # the name from the issue, as perf shows it
    ("_RNvNvNtCslNYArtu3iFV_5alloc3fmt6format12format_inner", "alloc::fmt::format::format_inner"),
    # a crate whose name starts with a digit: "_" separates length and bytes
    ("_RNvC6_123foo3bar", "123foo::bar"),
    # nested closures; B5_ is a backref to the crate
    ("_RNCNCNgCs6DXkGYLi8lr_2cc5spawn00B5_", "cc::spawn::{closure#0}::{closure#0}"),
    # inherent impl with const generics (unsigned, negative signed, bool, char)
    ("_RMC0INtC8arrayvec8ArrayVechKj7b_E", "<arrayvec::ArrayVec<u8, 123>>"),
    ("_RMCs4fqI2P2rA04_13const_genericINtB0_6SignedKanb_E", "<const_generic::Signed<-11>>"),
    ("_RMCs4fqI2P2rA04_13const_genericINtB0_4BoolKb0_E", "<const_generic::Bool<false>>"),
    ("_RMCs4fqI2P2rA04_13const_genericINtB0_4CharKc76_E", "<const_generic::Char<'v'>>"),
    # dyn Trait with an associated type binding; instantiating crate not printed
    ("_RINbNbCskIICzLVDPPb_5alloc5alloc8box_freeDINbNiB4_5boxed5FnBoxuEp6OutputuEL_ECs1iopQbuBiw2_3std",
     "alloc::alloc::box_free::<dyn alloc::boxed::FnBox<(), Output = ()>>"),
    # a shim, a fn pointer with two bound lifetimes and an ABI
    ("_RNSNvCs1234_4core4drop0", "core::drop::{shim#0}"),
    ("_RINvCs1234_4core3fooFG0_KCRL0_hEuE", "core::foo::<for<'a, 'b> extern \"C\" fn(&'b u8)>"),
    # trait impls and a trait definition path
    ("_RNvXNtC3foo3barNtB2_3BazNtNtC4core3ops4Drop4drop", "<foo::bar::Baz as core::ops::Drop>::drop"),
    ("_RYNtC3foo3BarNtC3baz4Quux", "<foo::Bar as baz::Quux>"),
    # punycode identifier (u + length, ascii part "_" punycode part)
    ("_RNvNtCsaL1PXbflWtW_8rust_hotu9gre_6ka8iu6ma_hia", "rust_hot::größe::maß"),
    # suffixes: ThinLTO's .llvm.N is dropped, others are kept
    ("_RNvC6_123foo3bar.llvm.1234ABCD", "123foo::bar"),
    ("_RNvC6_123foo3bar.cold", "123foo::bar.cold"),
]


@pytest.mark.parametrize("raw,expected", HAND_WRITTEN)
def test_hand_written_names(raw, expected):
    assert demangle_v0(raw) == expected
    assert demangle(raw) == expected


@pytest.mark.parametrize("raw", [
    "_R", "_RNvC", "_Rfoo", "_RNvC3foo", "_RC3fooXYZ",
    "_RB_",                               # a backref that does not point backwards
    "_RNvC3foo3barxyz",                   # trailing garbage after the path
    "_RNvC3foo3barKj7b",                  # an unterminated constant
    "_R" + "I" * 5000 + "C3foo" + "E" * 5000,   # nesting deeper than the limit
])
def test_bad_names_are_left_as_they_are(raw):
    assert demangle_v0(raw) is None
    assert demangle(raw) == raw


def test_exponential_backrefs_are_refused_not_expanded():
    """Each generic argument is a tuple of the previous one twice, by
    backref: 2**40 characters if expanded.  The demangler gives up (the raw
    name is kept) instead of hanging or eating memory."""
    text = "INvC1a1b"            # offsets count from after "_R"
    prev = len(text)
    text += "ThE"
    for _ in range(40):
        start = len(text)
        text += "T" + _backref(prev) + _backref(prev) + "E"
        prev = start
    raw = "_R" + text + "E"
    assert demangle_v0(raw) is None
    assert demangle(raw) == raw


def _backref(offset: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if offset == 0:
        return "B_"
    n, out = offset - 1, ""
    while True:
        out = digits[n % 62] + out
        n //= 62
        if not n:
            break
    return "B" + out + "_"


def test_profile_of_a_rust_program_reads_as_rust(rust_binary, tmp_path):
    """A Rust release binary under ``ctprof run``: no ``_R`` name anywhere,
    its functions as ``crate::module::function``, each hot function's share
    as the program measured it."""
    out = str(tmp_path / "rust.ctprof")
    res = ctprof(["run", "--hz", "999", "-o", out, "--", rust_binary, "15000"], cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    measured = dict(kv.split("=") for kv in re.search(rb"checksum_s=\S+ mass_s=\S+ total_s=\S+",
                                                       res.stderr).group(0).decode().split())
    profile, session = load_profile(out)
    names = {f.name for f in profile.frames}
    assert not [n for n in names if n.startswith("_R")], sorted(n for n in names if n.startswith("_R"))
    assert "rust_hot::work::checksum" in names and "rust_hot::größe::maß" in names, sorted(names)
    assert "rust_hot::main" in names
    stderr = res.stderr.decode()
    assert "rust_hot::work::checksum" in stderr and "_RNv" not in stderr

    total = profile.total("samples")
    assert total > 200, f"only {total} samples"
    for function, key in (("rust_hot::work::checksum", "checksum_s"), ("rust_hot::größe::maß", "mass_s")):
        expected = float(measured[key]) / float(measured["total_s"])
        got = sum(v for stack, v in profile.named_stacks("samples") if function in stack) / total
        sigma = math.sqrt(expected * (1 - expected) / total)
        # 5 standard deviations of sampling noise, plus 3 points for the
        # program's wall-clock measurement of a CPU-bound thread.
        assert abs(got - expected) <= 5 * sigma + 0.03, (function, got, expected, measured)

    # The raw names stay in the saved session: --no-demangle style resolution shows them.
    from ctprof.symbols import resolve_session
    raw = resolve_session(session, demangle=False, progress=False)
    assert any(f.name.startswith("_RNv") and "checksum" in f.name for f in raw.frames)
