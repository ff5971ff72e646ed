"""Rust v0 symbol names (``_R...``, RFC 2603) in human form, in pure Python.

Follows the grammar of the v0 mangling and prints as ``rustc-demangle``'s
alternate form (``{:#}``) does, which is what ``perf`` shows:
``_RNvNvNtCs..._5alloc3fmt6format12format_inner`` reads
``alloc::fmt::format::format_inner``.  Crate disambiguators (the hash after
a crate name) and the types of integer constants are left out, as the crate
hash of a legacy name is; ``verbose=True`` prints both the way binutils'
``c++filt`` does (``core[c1f1a4ba060b9bfa]::escape::escape_unicode::<10: usize>``),
which the tests compare against.

Grammar (RFC 2603, as extended by rustc since)::

    symbol      = "_R" [decimal] path [instantiating-crate] [suffix]
    path        = "C" ident                         crate root
                | "M" impl-path type                <T>
                | "X" impl-path type path           <T as Trait>
                | "Y" type path                     <T as Trait>
                | "N" namespace path ident          prefix::ident, {closure#N}
                | "I" path {generic-arg} "E"        path::<args>
                | backref
    impl-path   = [disambiguator] path              (not printed)
    ident       = [disambiguator] ["u"] decimal ["_"] bytes   ("u": punycode)
    backref     = "B" base62                        (offset after "_R")
    type        = basic | path | "A" type const | "S" type | "R"/"Q" [lifetime] type
                | "P"/"O" type | "F" fn-sig | "D" dyn-bounds lifetime | "T" {type} "E" | backref

A malformed name raises :class:`ValueError` from :func:`demangle_v0`'s
parser; :func:`demangle_v0` itself returns None for it.
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

#: Basic type tags (RFC 2603).
BASIC_TYPES = {
    "a": "i8", "b": "bool", "c": "char", "d": "f64", "e": "str", "f": "f32", "h": "u8",
    "i": "isize", "j": "usize", "l": "i32", "m": "u32", "n": "i128", "o": "u128",
    "s": "i16", "t": "u16", "u": "()", "v": "...", "x": "i64", "y": "u64", "z": "!",
    "p": "_",
}
_UNSIGNED = "htmyoj"
_SIGNED = "aslxni"

#: Nesting limit (rustc-demangle uses 500); deeper names are refused rather
#: than risking Python's recursion limit.
MAX_DEPTH = 200
#: Longest output accepted: backrefs can make a short name expand
#: exponentially, and a profile should not hold megabyte-long names.
MAX_OUTPUT = 1 << 16

_B62_VALUE = {c: i for i, c in enumerate("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")}
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class _Invalid(ValueError):
    pass


class _Printer:
    """A recursive-descent parser that prints as it parses (as
    rustc-demangle's ``Printer``).  ``out`` is None while a part is parsed
    but not printed (impl paths, the instantiating crate)."""

    def __init__(self, sym: str, verbose: bool) -> None:
        self.sym = sym + "\0"     # a sentinel: reading past the end finds "\0", never IndexError
        self.end = len(sym)
        self.pos = 0
        self.depth = 0
        self.verbose = verbose
        self.out: Optional[List[str]] = []
        self.size = 0
        self.bound_lifetimes = 0

    # -- reading ------------------------------------------------------------
    def peek(self) -> str:
        return self.sym[self.pos]

    def eat(self, c: str) -> bool:
        if self.sym[self.pos] == c:
            self.pos += 1
            return True
        return False

    def next(self) -> str:
        c = self.sym[self.pos]
        if self.pos >= self.end:
            raise _Invalid("unexpected end")
        self.pos += 1
        return c

    def base62(self) -> int:
        """``_`` is 0; digits then ``_`` are the base-62 value plus one."""
        stop = self.sym.find("_", self.pos, self.end)
        if stop < 0:
            raise _Invalid("unterminated number")
        digits = self.sym[self.pos:stop]
        self.pos = stop + 1
        if not digits:
            return 0
        value = 0
        for c in digits:
            d = _B62_VALUE.get(c)
            if d is None:
                raise _Invalid("bad base-62 digit")
            value = value * 62 + d
        return value + 1

    def opt_base62(self, tag: str) -> int:
        return self.base62() + 1 if self.eat(tag) else 0

    def decimal(self) -> int:
        m = _DECIMAL.match(self.sym, self.pos, self.end)
        if m is None:
            raise _Invalid("expected a decimal number")
        self.pos = m.end()
        return int(m.group())

    def hex_nibbles(self) -> str:
        start = self.pos
        while True:
            c = self.next()
            if c == "_":
                return self.sym[start:self.pos - 1]
            if c not in "0123456789abcdef":
                raise _Invalid("bad hex digit")

    def ident(self) -> Tuple[str, str]:
        """(ascii part, punycode part) of an identifier."""
        punycode = self.eat("u")
        length = self.decimal()
        self.eat("_")
        end = self.pos + length
        if end > self.end:
            raise _Invalid("identifier runs past the end")
        text = self.sym[self.pos:end]
        self.pos = end
        if not punycode:
            return text, ""
        ascii, _, puny = text.rpartition("_")
        if not puny:
            raise _Invalid("empty punycode")
        return ascii, puny

    # -- printing ---------------------------------------------------------------
    def emit(self, text: str) -> None:
        if self.out is not None:
            self.size += len(text)
            if self.size > MAX_OUTPUT:
                raise _Invalid("name too long")
            self.out.append(text)

    def emit_ident(self, ident: Tuple[str, str]) -> None:
        ascii, puny = ident
        if not puny:
            self.emit(ascii)
            return
        try:
            text = ((ascii + "-" + puny) if ascii else puny).encode("ascii").decode("punycode")
        except (UnicodeError, ValueError):
            raise _Invalid("bad punycode") from None
        self.emit(text)

    def push(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Invalid("too deeply nested")

    def pop(self) -> None:
        self.depth -= 1

    def skipping(self, fn) -> None:
        saved = self.out
        self.out = None
        try:
            fn()
        finally:
            self.out = saved

    def backref(self, fn) -> None:
        """Parse a backref and, when printing, print what it points at."""
        start = self.pos - 1       # the "B"
        target = self.base62()
        if target >= start:
            raise _Invalid("backref does not point backwards")
        if self.out is None:
            return
        self.push()
        saved = self.pos
        self.pos = target
        try:
            fn()
        finally:
            self.pos = saved
            self.pop()

    def sep_list(self, fn, sep: str) -> int:
        n = 0
        while not self.eat("E"):
            if n:
                self.emit(sep)
            fn()
            n += 1
        return n

    def lifetime(self, index: int) -> None:
        if index == 0:
            self.emit("'_")
            return
        depth = self.bound_lifetimes - index
        if depth < 0:
            raise _Invalid("lifetime out of range")
        self.emit("'" + chr(ord("a") + depth) if depth < 26 else f"'_{depth}")

    def in_binder(self, fn) -> None:
        count = self.opt_base62("G")
        if count:
            self.emit("for<")
            for i in range(count):
                if i:
                    self.emit(", ")
                self.bound_lifetimes += 1
                self.lifetime(1)
            self.emit("> ")
        try:
            fn()
        finally:
            self.bound_lifetimes -= count

    # -- the grammar --------------------------------------------------------------
    def path(self, in_value: bool) -> None:
        self.push()
        tag = self.next()
        if tag == "C":
            dis = self.opt_base62("s")
            self.emit_ident(self.ident())
            if self.verbose:
                self.emit(f"[{dis:x}]")
        elif tag == "N":
            ns = self.next()
            if not ns.isalpha() or not ns.isascii():
                raise _Invalid("bad namespace")
            self.path(in_value)
            dis = self.opt_base62("s")
            name = self.ident()
            if ns.isupper():
                self.emit("::{" + {"C": "closure", "S": "shim"}.get(ns, ns))
                if name[0] or name[1]:
                    self.emit(":")
                    self.emit_ident(name)
                self.emit(f"#{dis}}}")
            elif name[0] or name[1]:
                self.emit("::")
                self.emit_ident(name)
        elif tag in "MXY":
            if tag != "Y":
                self.opt_base62("s")
                self.skipping(lambda: self.path(False))
            self.emit("<")
            self.type()
            if tag != "M":
                self.emit(" as ")
                self.path(False)
            self.emit(">")
        elif tag == "I":
            self.path(in_value)
            if in_value:
                self.emit("::")
            self.emit("<")
            self.sep_list(self.generic_arg, ", ")
            self.emit(">")
        elif tag == "B":
            self.backref(lambda: self.path(in_value))
        else:
            raise _Invalid(f"bad path tag {tag!r}")
        self.pop()

    def generic_arg(self) -> None:
        if self.eat("L"):
            self.lifetime(self.base62())
        elif self.eat("K"):
            self.const(False)
        else:
            self.type()

    def type(self) -> None:
        tag = self.next()
        basic = BASIC_TYPES.get(tag)
        if basic is not None:
            self.emit(basic)
            return
        self.push()
        if tag in "RQ":
            self.emit("&")
            if self.eat("L"):
                lt = self.base62()
                if lt:
                    self.lifetime(lt)
                    self.emit(" ")
            if tag == "Q":
                self.emit("mut ")
            self.type()
        elif tag in "PO":
            self.emit("*const " if tag == "P" else "*mut ")
            self.type()
        elif tag in "AS":
            self.emit("[")
            self.type()
            if tag == "A":
                self.emit("; ")
                self.const(True)
            self.emit("]")
        elif tag == "T":
            self.emit("(")
            if self.sep_list(self.type, ", ") == 1:
                self.emit(",")
            self.emit(")")
        elif tag == "F":
            self.in_binder(self.fn_sig)
        elif tag == "D":
            self.emit("dyn ")
            self.in_binder(lambda: self.sep_list(self.dyn_trait, " + "))
            if not self.eat("L"):
                raise _Invalid("dyn without lifetime")
            lt = self.base62()
            if lt:
                self.emit(" + ")
                self.lifetime(lt)
        elif tag == "B":
            self.backref(self.type)
        else:
            self.pos -= 1           # the tag starts a path
            self.path(False)
        self.pop()

    def fn_sig(self) -> None:
        unsafe = self.eat("U")
        abi = None
        if self.eat("K"):
            if self.eat("C"):
                abi = "C"
            else:
                ascii, puny = self.ident()
                if not ascii or puny:
                    raise _Invalid("bad ABI")
                abi = ascii.replace("_", "-")
        if unsafe:
            self.emit("unsafe ")
        if abi is not None:
            self.emit(f'extern "{abi}" ')
        self.emit("fn(")
        self.sep_list(self.type, ", ")
        self.emit(")")
        if not self.eat("u"):       # a `()` return type is not printed
            self.emit(" -> ")
            self.type()

    def path_maybe_open_generics(self) -> bool:
        """A trait path of a ``dyn``; leaves ``<args`` open (returns True)
        so associated type bindings can join the same brackets."""
        if self.eat("B"):
            opened = [False]

            def follow() -> None:
                opened[0] = self.path_maybe_open_generics()
            self.backref(follow)
            return opened[0]
        if self.eat("I"):
            self.path(False)
            self.emit("<")
            self.sep_list(self.generic_arg, ", ")
            return True
        self.path(False)
        return False

    def dyn_trait(self) -> None:
        opened = self.path_maybe_open_generics()
        while self.eat("p"):
            self.emit(", " if opened else "<")
            opened = True
            self.emit_ident(self.ident())
            self.emit(" = ")
            self.type()
        if opened:
            self.emit(">")

    def const(self, in_value: bool) -> None:
        tag = self.next()
        self.push()
        if tag == "p":
            self.emit("_")
        elif tag in _UNSIGNED:
            self.const_uint(tag)
        elif tag in _SIGNED:
            if self.eat("n"):
                self.emit("-")
            self.const_uint(tag)
        elif tag == "b":
            value = self.hex_nibbles()
            if value not in ("0", "1"):
                raise _Invalid("bad bool constant")
            self.emit("true" if value == "1" else "false")
            if self.verbose:
                self.emit(": bool")
        elif tag == "c":
            value = int(self.hex_nibbles() or "0", 16)
            if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                raise _Invalid("bad char constant")
            self.emit(_char_literal(chr(value)))
            if self.verbose:
                self.emit(": char")
        elif tag == "e":
            self.const_str()
        elif tag in "RQ":
            if tag == "R" and self.eat("e"):
                self.const_str()
            else:
                self.emit("&" if tag == "R" else "&mut ")
                self.const(True)
        elif tag == "A":
            self.emit("[")
            self.sep_list(lambda: self.const(True), ", ")
            self.emit("]")
        elif tag == "T":
            self.emit("(")
            if self.sep_list(lambda: self.const(True), ", ") == 1:
                self.emit(",")
            self.emit(")")
        elif tag == "V":
            self.path(True)
            kind = self.next()
            if kind == "T":
                self.emit("(")
                self.sep_list(lambda: self.const(True), ", ")
                self.emit(")")
            elif kind == "S":
                self.emit(" { ")

                def field() -> None:
                    self.opt_base62("s")
                    self.emit_ident(self.ident())
                    self.emit(": ")
                    self.const(True)
                self.sep_list(field, ", ")
                self.emit(" }")
            elif kind != "U":
                raise _Invalid("bad constant value kind")
        elif tag == "B":
            self.backref(lambda: self.const(in_value))
        else:
            raise _Invalid(f"bad constant tag {tag!r}")
        self.pop()

    def const_uint(self, tag: str) -> None:
        nibbles = self.hex_nibbles()
        value = int(nibbles, 16) if nibbles else 0
        self.emit(str(value) if value < 1 << 64 else "0x" + nibbles)
        if self.verbose:
            self.emit(": " + BASIC_TYPES[tag])

    def const_str(self) -> None:
        nibbles = self.hex_nibbles()
        if len(nibbles) % 2:
            raise _Invalid("odd string constant")
        try:
            text = bytes.fromhex(nibbles).decode("utf-8")
        except ValueError:
            raise _Invalid("string constant is not UTF-8") from None
        self.emit('"' + "".join('\\"' if c == '"' else _escape_char(c, "'") for c in text) + '"')


def _escape_char(c: str, quote_ok: str) -> str:
    if c == "\\":
        return "\\\\"
    if c in "\t\n\r":
        return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}[c]
    if c == quote_ok:
        return c
    if c.isprintable():
        return c
    return f"\\u{{{ord(c):x}}}"


def _char_literal(c: str) -> str:
    return "'" + ("\\'" if c == "'" else _escape_char(c, '"')) + "'"


def _strip_llvm_suffix(name: str) -> str:
    """ThinLTO renames local symbols ``NAME.llvm.DIGITS``; drop that part."""
    i = name.find(".llvm.")
    if i >= 0 and all(c in "0123456789ABCDEF@" for c in name[i + 6:]):
        return name[:i]
    return name


def demangle_v0(raw: str, verbose: bool = False) -> Optional[str]:
    """The human form of a v0 name (``_R...``; ``R...`` and ``__R...`` as
    some platforms spell it too), or None if ``raw`` is not a valid v0
    name.  A suffix the compiler or linker appended (``.cold``,
    ``@@VERSION``) is kept after the name."""
    name = _strip_llvm_suffix(raw)
    for prefix in ("_R", "__R", "R"):
        if name.startswith(prefix):
            inner = name[len(prefix):]
            break
    else:
        return None
    # A version number would come first; only version 0 (none) exists.
    if not inner or not ("A" <= inner[0] <= "Z"):
        return None
    if not inner.isascii():
        return None
    p = _Printer(inner, verbose)
    try:
        p.path(True)
        if "A" <= p.peek() <= "Z":          # the instantiating crate: not printed
            p.skipping(lambda: p.path(False))
    except (_Invalid, IndexError, RecursionError):
        return None
    rest = inner[p.pos:]
    if rest and rest[0] not in ".@$":
        return None
    return "".join(p.out or []) + rest
