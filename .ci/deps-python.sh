# Packages the Python-frame tests need (tests/test_python_frames.py,
# tests/test_pylines.py).  Sourced by .ci/run as root on Debian 12 after
# `apt-get update`.
#   python3 / python3.11-dev: the system interpreter is one of those tested,
#       and its headers let the layout test compare ctprof's offset table
#       with what the interpreter was built from.  The pyenv interpreters
#       (3.9-3.13) come with their headers; the tests run on each one found
#       and name any that is missing.
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3.11-dev
