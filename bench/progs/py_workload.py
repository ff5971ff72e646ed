#!/usr/bin/env python3
"""A Python program that measures its own truth, for bench/bench_python.py.

Three functions with different kinds of work, called in turn ROUNDS times:

* ``zlib_heavy``: ``zlib.compress`` of random-ish bytes (the time is in
  libz's C code, beneath this Python frame);
* ``tokenize_text``: a pure-Python tokenizer (the time is in the
  interpreter evaluating this function's own bytecode);
* ``sort_records``: builds a list of tuples and sorts it (a mix of
  bytecode and list/tuple C code).

Each call is timed with ``time.thread_time()`` (CPU seconds of this
thread, as a CPU sampler counts), accumulated per function.  Once, before
the rounds, ``fill_buffers`` allocates ``BUFFER_COUNT`` bytearrays of
``BUFFER_BYTES`` each and keeps them until exit: the exact bytes it asked
for are the truth for the heap profilers.

At exit it prints one JSON line: per function its CPU seconds and its share
of the whole process's CPU time (``time.process_time()``, which includes
the interpreter's start-up, as a profiler's sample count does), and the
bytes ``fill_buffers`` requested.

Usage: ``python3 py_workload.py [ROUNDS]``.
"""
import json
import random
import sys
import time
import zlib

BUFFER_COUNT = 40
BUFFER_BYTES = 1 << 20
BLOB_BYTES = 2 << 20
TEXT_WORDS = 24000
SORT_RECORDS = 14000

WORDS = ("alpha", "beta", "gamma", "delta", "x1", "y_2", "42", "3.14", "(", ")", "+", "==", "'str'", "#c")


def make_inputs(seed: int = 12):
    rng = random.Random(seed)
    # 2 MiB that zlib compresses to about a third: random runs over a
    # 37-letter alphabet, some repeated
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 "
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    parts, size = [], 0
    while size < BLOB_BYTES:
        part = rng.randbytes(rng.randint(16, 256)).translate(table) * rng.randint(1, 3)
        parts.append(part)
        size += len(part)
    blob = b"".join(parts)[:BLOB_BYTES]
    text = " ".join(rng.choice(WORDS) for _ in range(TEXT_WORDS))
    return blob, text, rng


def zlib_heavy(blob: bytes) -> int:
    return len(zlib.compress(blob, 6))


def tokenize_text(text: str) -> int:
    """A character-by-character tokenizer: names, numbers, strings, comments,
    operators.  Pure bytecode on purpose."""
    tokens = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c.isalpha() or c == "_":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            tokens.append(("name", text[i:j]))
            i = j
        elif c.isdigit():
            j = i + 1
            while j < n and (text[j].isdigit() or text[j] == "."):
                j += 1
            tokens.append(("number", text[i:j]))
            i = j
        elif c == "'":
            j = text.index("'", i + 1) + 1
            tokens.append(("string", text[i:j]))
            i = j
        elif c == "#":
            j = i + 1
            while j < n and text[j] != " ":
                j += 1
            tokens.append(("comment", text[i:j]))
            i = j
        else:
            if text.startswith("==", i):
                tokens.append(("op", "=="))
                i += 2
            else:
                tokens.append(("op", c))
                i += 1
    return len(tokens)


def sort_records(rng: random.Random) -> int:
    records = [(rng.random(), i, str(i)) for i in range(SORT_RECORDS)]
    records.sort()
    records.sort(key=lambda r: r[2])
    return records[0][1]


def fill_buffers():
    """Allocates BUFFER_COUNT * BUFFER_BYTES bytes and returns them (kept
    alive until exit) with the exact number of bytes asked for."""
    buffers = []
    for _ in range(BUFFER_COUNT):  # a loop, not a comprehension: no <listcomp> frame on 3.11
        buffers.append(bytearray(BUFFER_BYTES))
    return buffers, sum(len(b) for b in buffers)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    cpu = {"zlib_heavy": 0.0, "tokenize_text": 0.0, "sort_records": 0.0, "fill_buffers": 0.0}
    clock = time.thread_time
    start = clock()
    kept, buffer_bytes = fill_buffers()
    cpu["fill_buffers"] += clock() - start
    blob, text, rng = make_inputs()
    check = 0
    for _ in range(rounds):
        start = clock()
        check += zlib_heavy(blob)
        middle = clock()
        cpu["zlib_heavy"] += middle - start
        check += tokenize_text(text)
        after = clock()
        cpu["tokenize_text"] += after - middle
        check += sort_records(rng)
        cpu["sort_records"] += clock() - after
    total = time.process_time()
    print(json.dumps({"py_workload": 1, "rounds": rounds, "process_cpu_s": total,
                      "cpu_s": cpu, "share": {name: s / total for name, s in cpu.items()},
                      "alloc_bytes": {"fill_buffers": buffer_bytes}, "check": check, "kept": len(kept)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
