# `make demo`: set everything up, then protect the embedded data set with MI-UE.
# `make test`: set everything up, then run every test that can run here.
PYTHON ?= python3
VENV ?= .venv
# torch==2.14.1 is a CUDA build (nvcc then compiles the CUDA kernels too); torch==2.13.0 is CPU-only.
TORCH ?= torch==2.14.1
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py
export MAX_JOBS ?= 2

.PHONY: demo test test-quick build bench bench-quick cmake-check format format-check clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel ninja
	$(PIP) install --quiet $(TORCH)
	touch $@

# Editable install: builds miue_ext._C in place and installs the pinned dependencies.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PIP) install --no-build-isolation -e '.[test]'
	touch $@

build: $(VENV)/.built

demo: build
	mkdir -p out
	$(VENV)/bin/miue generate --out out/poison.npz
	$(VENV)/bin/miue stats out/poison.npz --json out/poison_stats.json --grid out/poison_grid.png
	rm -rf out/poison_png && $(VENV)/bin/miue export out/poison.npz out/poison_png

test: build
	$(PY) -m pytest python_tests -q

test-quick: build
	$(PY) -m pytest python_tests -q -m "not slow"

# The benchmark suite on this machine (about 6 minutes on 2 cores) and its report.
bench: build
	mkdir -p out
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest benchmarks -q -p no:cacheprovider --bench-threads 2 --benchmark-json out/bench_cpu.json
	$(PY) benchmarks/results_table.py out/bench_cpu.json --markdown out/bench_cpu.md --png out/bench_cpu.png

# Every benchmark once at tiny sizes, untimed: keeps the suite from rotting (CI).
bench-quick: build
	$(PY) -m pytest benchmarks -q -p no:cacheprovider --bench-grid quick --benchmark-disable

# The CMake build of the same sources (C++ users, IDEs); CI builds it once so it does not rot.
cmake-check: $(VENV)/.deps
	PY=$(PY) .ci/cmake_check.sh

# One style: ruff (Python, [tool.ruff] in pyproject.toml) and clang-format (.clang-format for csrc/).
$(VENV)/.lint: $(VENV)/.deps
	$(PIP) install --quiet 'ruff>=0.17,<0.18' 'clang-format>=23,<24'  # the pins of pyproject's `lint` extra
	touch $@

CXX_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

format: $(VENV)/.lint
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

format-check: $(VENV)/.lint
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

clean:
	rm -rf build miue_ext/_C*.so *.egg-info
