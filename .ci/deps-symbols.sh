# Packages the symbol-resolution tests (tests/test_symbols.py) and
# bench/bench_symbols.py need.  Sourced by .ci/run as root on Debian 12
# after `apt-get update` and `pip install pyelftools pytest`.
#   gcc/g++/libc6-dev: test programs are compiled at test time (C and C++)
#   binutils: strip, nm (tests), addr2line (benchmark comparison)
#   libc6-dbg: libc's separate debug file (/usr/lib/debug/.build-id/...),
#              so the debug-file test runs instead of skipping
#   libstdc++6: __cxa_demangle for C++ names
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    gcc g++ libc6-dev binutils libc6-dbg libstdc++6
