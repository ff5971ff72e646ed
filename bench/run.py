#!/usr/bin/env python3
"""`make bench`: every benchmark in this directory, one after the other."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ["bench_cpu.py", "bench_symbols.py", "bench_render.py"]


def main() -> int:
    status = 0
    for name in SCRIPTS + sorted(n for n in os.listdir(HERE) if n.startswith("bench_") and n.endswith(".py") and n not in SCRIPTS):
        path = os.path.join(HERE, name)
        if not os.path.exists(path):
            continue
        print(f"\n# {name}\n", flush=True)
        status |= subprocess.run([sys.executable, path] + sys.argv[1:]).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
