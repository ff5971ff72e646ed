"""ctprof.symbols.pylines against the interpreters themselves.

Each CPython found (the system python3, and every 3.9 to 3.13 under
``$(pyenv root)/versions``) compiles real stdlib modules and a source built to
hit the formats' corners, and reports, for every code unit of every code object,
the line it computes itself (``co_lines()`` on 3.10+, ``co_positions()`` too on
3.11+, ``dis.findlinestarts`` on 3.9).  The decoder must agree on every one.
"""
from __future__ import annotations

import functools
import json
import random
import subprocess
from typing import Dict

import pytest

from conftest import python_interpreters
from ctprof.symbols.pylines import LineTable, line_for

MINORS = ["3.9", "3.10", "3.11", "3.12", "3.13"]

# Runs inside the interpreter under test (any of 3.9 to 3.13): compiles sources,
# walks every nested code object, prints what the interpreter says about lines.
DUMPER = r'''
import dis, importlib.util, json, sys
version = sys.version_info[:2]
MODULES = ["argparse", "json.decoder", "dataclasses", "typing", "inspect", "asyncio.base_events"]

def corners():
    # Corners of the formats: a huge first line (long line jumps), one line
    # with more bytecode than a byte can measure, columns past 127, a loop
    # whose jump back crosses more than 127 lines, multi-line expressions.
    parts = ["\n" * 70000, "def far(a):\n    return a + 1\n"]
    parts.append("def wide(a):\n    return [" + ", ".join("a" for _ in range(400)) + "]\n")
    parts.append("def deep(a, b):\n    x = " + " + ".join("(a * %d - b)" % i for i in range(60)) + "\n    return x\n")
    parts.append("def tall(n):\n    total = 0\n    while n:\n" + "\n" * 300
                 + "        n -= 1\n" + "\n" * 200 + "        total += n\n    return total\n")
    parts.append("def spread(a, b):\n    return (a +\n\n\n   b) if a else (\n      b\n    )\n")
    parts.append("def guarded(f):\n    try:\n        with f() as g:\n            yield g\n"
                 "    except (ValueError, KeyError) as e:\n        raise RuntimeError() from e\n"
                 "    finally:\n        f = None\n")
    parts.append("async def waiting(q):\n    async for x in q:\n        await x\n"
                 "    return [lambda y: y + x for x in range(3)]\n")
    if version >= (3, 10):
        parts.append("def matching(v):\n    match v:\n        case [a, *rest] if a:\n            return rest\n"
                     "        case {'k': b}:\n            return b\n        case _:\n            pass\n")
    return "".join(parts)

def sources():
    for name in MODULES:
        path = importlib.util.find_spec(name).origin
        with open(path, encoding="utf-8") as f:
            yield path, f.read()
    yield "<corners>", corners()

def walk(code):
    yield code
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            yield from walk(const)

def expected_lines(code):
    units = len(code.co_code) // 2
    lines = [None] * units
    if version >= (3, 10):
        for start, end, line in code.co_lines():
            for offset in range(start, end, 2):
                lines[offset // 2] = line
    else:
        for offset, line in dis.findlinestarts(code):
            for unit in range(offset // 2, units):
                lines[unit] = line
    return lines

out = {"version": list(version), "full": sys.version.split()[0], "codes": []}
for path, source in sources():
    for code in walk(compile(source, path, "exec")):
        entry = {"name": "%s:%s" % (path, code.co_qualname if version >= (3, 11) else code.co_name),
                 "table": (code.co_lnotab if version == (3, 9) else code.co_linetable).hex(),
                 "firstlineno": code.co_firstlineno, "lines": expected_lines(code)}
        if version >= (3, 11):
            entry["positions"] = [p[0] for p in code.co_positions()]
        out["codes"].append(entry)
json.dump(out, sys.stdout)
'''


@functools.lru_cache(maxsize=None)
def _dump(executable: str) -> Dict:
    done = subprocess.run([executable, "-I", "-c", DUMPER], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, "%s failed: %s" % (executable, done.stderr[-2000:])
    return json.loads(done.stdout)


@pytest.mark.parametrize("which", ["system"] + MINORS)
def test_every_instruction_has_the_interpreters_line(which):
    for executable in python_interpreters(which):
        dump = _dump(executable)
        version = tuple(dump["version"])
        if which != "system":
            assert "%d.%d" % version == which, executable
        mismatches, units = [], 0
        for code in dump["codes"]:
            table = LineTable(version, bytes.fromhex(code["table"]), code["firstlineno"])
            assert not table.damaged, code["name"]
            oracles = [code["lines"]] + ([code["positions"]] if "positions" in code else [])
            for index, expected in enumerate(code["lines"]):
                got = line_for(version, bytes.fromhex(code["table"]), code["firstlineno"], index)
                units += 1
                for oracle in oracles:
                    if got != oracle[index]:
                        mismatches.append((code["name"], index, got, oracle[index]))
            if version >= (3, 10):
                # The table covers the code exactly: nothing lies past its end.
                assert table.line(len(code["lines"])) is None, code["name"]
        assert not mismatches, "%s (%s): %d of %d units differ, first: %s" % (
            executable, dump["full"], len(mismatches), units, mismatches[:10])
        # The corner cases must really be in the data, or this test proves less than it says.
        assert units > 20000 and any(c["firstlineno"] > 70000 for c in dump["codes"]), executable


@pytest.mark.parametrize("which", ["system"] + MINORS)
def test_torn_or_garbage_tables_never_raise(which):
    rng = random.Random(12)
    for executable in python_interpreters(which):
        dump = _dump(executable)
        version = tuple(dump["version"])
        tables = [(bytes.fromhex(c["table"]), c["firstlineno"], len(c["lines"])) for c in dump["codes"]]
        tables = [t for t in tables if t[0]]
        for _ in range(3000):
            table, first, units = rng.choice(tables)
            kind = rng.randrange(4)
            if kind == 0:           # torn: cut anywhere
                table = table[:rng.randrange(len(table))]
            elif kind == 1:         # a few bytes overwritten
                table = bytearray(table)
                for _ in range(rng.randint(1, 4)):
                    table[rng.randrange(len(table))] = rng.randrange(256)
                table = bytes(table)
            elif kind == 2:         # not a line table at all
                table = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
            else:                   # garbage first line too
                first = rng.choice([0, -1, -2 ** 31, 2 ** 31, 2 ** 62])
            for index in (-1, 0, units // 2, units - 1, units, 10 ** 9):
                line = line_for(version, table, first, index)
                assert line is None or (isinstance(line, int) and line >= 0), (table.hex(), index, line)
        if version <= (3, 10):
            # Pairs formats: an odd length can only be a torn copy.
            table = next(t for t, _, _ in tables if len(t) >= 4)
            assert LineTable(version, table[:-1], 1).damaged
            assert line_for(version, table[:-1], 1, 0) is None
        else:
            # An entry cut inside its bytes is caught, not read as a shorter table.
            table = next(t for t, _, _ in tables if len(t) >= 2)
            assert LineTable(version, table[:1], 1).damaged or table[0] >> 3 & 15 == 15


def test_unknown_version_is_refused():
    with pytest.raises(ValueError, match="3.8"):
        line_for((3, 8), b"", 1, 0)
    with pytest.raises(ValueError, match="3.14"):
        LineTable((3, 14), b"", 1)
