# Packages the capture tests need (tests/test_invisible.py, test_attach.py,
# test_offcpu.py, test_capture.py).  Sourced by .ci/run as root on Debian 12
# after `apt-get update`.
#   linux-perf: `perf record`, the reference the short-threads test compares
#               ctprof's shares with (and bench/bench_cpu.py's peer)
#   util-linux: `unshare` (attach into another mount namespace), `setpriv`
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends linux-perf util-linux
