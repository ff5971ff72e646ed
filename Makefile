# ctprof: the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
CC ?= cc
OUT ?= out

.PHONY: demo test bench deps clean

# Python packages ctprof and its tests need (pyelftools at run time, pytest
# for the tests); installed only when missing.
# (A Debian system Python refuses plain pip installs: fall back to the flag
# it asks for.)
PIP_INSTALL = $(PYTHON) -m pip install -q
deps:
	@$(PYTHON) -c "import elftools" 2>/dev/null || $(PIP_INSTALL) pyelftools || $(PIP_INSTALL) --break-system-packages pyelftools
	@$(PYTHON) -c "import pytest" 2>/dev/null || $(PIP_INSTALL) pytest || $(PIP_INSTALL) --break-system-packages pytest

# Build the bundled demo program, profile it, print the hottest functions
# and write the flame graph and folded stacks into $(OUT)/.
demo: deps
	@mkdir -p $(OUT)
	$(CC) -O2 -g -o $(OUT)/demo tests/progs/demo.c
	$(PYTHON) -m ctprof run --hz 499 -o $(OUT)/demo.ctprof --svg $(OUT)/demo.svg --folded $(OUT)/demo.folded -- $(OUT)/demo
	@echo "open $(OUT)/demo.svg in a browser to explore the flame graph"

test: deps
	$(PYTHON) -m pytest -q tests

bench: deps
	$(PYTHON) bench/run.py

clean:
	rm -rf $(OUT) .pytest_cache
