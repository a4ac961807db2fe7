# make demo | test | bench | fuzz | sanitize — each creates .venv and builds apnt when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.apnt-built
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py pyproject.toml
# ccache when the machine has it (Debian: /usr/lib/ccache holds compiler symlinks).
CCACHE_PATH := $(if $(wildcard /usr/lib/ccache),/usr/lib/ccache:,)
export PATH := $(CCACHE_PATH)$(PATH)
export MAX_JOBS ?= 2

.PHONY: demo test test-fast bench fuzz sanitize build clean

$(DEPS_STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements-dev.txt
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(BUILD_STAMP)

test: $(BUILD_STAMP)
	$(PY) -m pytest -q tests
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/triton

# A held-out synthetic bracket through AHDRNet (shipped demo weights), Debevec and Mertens: metrics, timings and
# pictures in demo_out/ (comparison.png first). `apnt selftest` checks every backend against reference.
demo: $(BUILD_STAMP)
	$(VENV)/bin/apnt info
	$(VENV)/bin/apnt demo --out demo_out

# Every provider side by side, interleaved, in one process per run (apnt/benchcases/); writes BENCHMARKS.md,
# bench/results/latest.json and the plots. `pytest bench --benchmark-enable` runs the same cases one provider at a time.
bench: $(BUILD_STAMP)
	$(PY) bench/report.py --rss eager,native

fuzz: $(BUILD_STAMP)
	APNT_FUZZ_EXAMPLES=2000 APNT_FUZZ_LARGE=$${APNT_FUZZ_LARGE:-1} $(PY) -m pytest -q tests -k fuzz

# AddressSanitizer + UBSan on the C++ sources (CPU only), then the CPU op tests against that build; afterwards the
# normal build is restored (rebuilt through `make build`). Not part of CI (.ci/run calls `make test` only).
# SANITIZE_K=expr narrows the tests (pytest -k) on slow machines. libstdc++ is preloaded with libasan: otherwise ASan's
# __cxa_throw interceptor finds no real function and aborts ("CHECK failed ... real___cxa_throw") at the first C++
# exception thrown on an OpenMP thread.
SANITIZE_TESTS ?= tests/test_conv.py tests/test_attention.py tests/test_dense.py tests/test_match.py \
	tests/test_fuzz_ops.py tests/test_grid_emulator.py
sanitize: $(DEPS_STAMP)
	rm -f $(BUILD_STAMP)
	APNT_SANITIZE=1 APNT_CUDA=0 $(PY) setup.py -q build_ext --inplace
	status=0; \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(PY) -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS) $(if $(SANITIZE_K),-k "$(SANITIZE_K)") || status=$$?; \
	$(MAKE) build || status=1; \
	exit $$status

clean:
	rm -rf build *.egg-info apnt/_C*.so $(BUILD_STAMP)
