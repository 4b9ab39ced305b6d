# m2s — top-level Makefile. Stage pipelines live in pipelines/*.mk.
PYTHON ?= python3
VENV ?= .venv
# Users override the torch build, e.g. `make setup TORCH="torch==2.5.1 --index-url ..."`.
TORCH ?= torch==2.13.0
# Set MINKOWSKI=0 to skip building MinkowskiEngine (the `torch` backend needs nothing compiled).
MINKOWSKI ?= 1
# spconv 2.x for the `spconv` backend: the CPU wheel by default; a CUDA build for GPUs, e.g.
# `make setup SPCONV=spconv-cu121` (spconv-cu118/-cu124/-cu126 likewise); SPCONV=0 skips it.
SPCONV ?= spconv
SPCONV_VERSION ?= 2.3.8
PY := $(VENV)/bin/python
M2S := $(VENV)/bin/m2s

.PHONY: setup test test-fast clean-venv
setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e '.[dev]'
	@if [ "$(MINKOWSKI)" = "1" ]; then bash scripts/install_minkowski.sh $(PY); else echo "MINKOWSKI=0: skipping MinkowskiEngine"; fi
	@if [ "$(SPCONV)" = "0" ]; then echo "SPCONV=0: skipping spconv"; else $(PY) -m pip install "$(SPCONV)==$(SPCONV_VERSION)"; fi

test:
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"

# `make lint`: ruff (lint, then formatting as a check) and mypy on the library and the CLI;
# the rules live in pyproject.toml ([tool.ruff], [tool.mypy]).
LINT_PATHS ?= m2s cli
.PHONY: lint
lint:
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy $(LINT_PATHS)

clean-venv:
	rm -rf $(VENV)

# Benchmarks: each prints a table and writes JSON under runs/bench/.
.PHONY: bench bench-backbone bench-fuse bench-distill
bench: bench-backbone bench-fuse bench-distill
bench-backbone:
	@mkdir -p runs/bench
	$(PY) benchmarks/bench_backbone.py --points 120000 --repeats 5 --backends torch,minkowski,spconv --device cpu --json runs/bench/backbone.json
bench-fuse:
	@mkdir -p runs/bench
	$(PY) benchmarks/bench_fuse.py --scans 200 --storage-scans 60 --reads 100 --json runs/bench/fuse.json
bench-distill:
	@mkdir -p runs/bench
	$(PY) benchmarks/bench_distill.py --beams 64 --columns 1024 --scans 12 --voxel-size 0.1 --size 18 --teacher-size 18 --batch-size 2 --repeats 7 --warmup 1 --threads 1 --json runs/bench/distill.json

# `make study`: seeds x {baseline, frozen-teacher student, joint student}, paired by seed, on
# synthetic data the defaults were not tuned on (benchmarks/study.py; README "Seed study").
STUDY ?= runs/study
STUDY_ARGS ?=
.PHONY: study
study:
	$(PY) benchmarks/study.py --out $(STUDY) $(STUDY_ARGS)

# `make realism`: model-free realism report of a fresh synthetic draw against real SemanticKITTI
# (class shares, points per instance vs range, the cue test, issue 27's no-model targets);
# e.g. REALISM_ARGS="--seed 101 --check" or REALISM_ARGS="--data runs/demo/data".
REALISM_ARGS ?=
.PHONY: realism
realism:
	@mkdir -p runs/bench
	$(PY) benchmarks/bench_realism.py --json runs/bench/realism.json $(REALISM_ARGS)

# `make gpu-check`: the GPU path in one time-boxed command (CUDA tests, CPU<->CUDA parity, backbone and
# training throughput at full size; docs/gpu.md). On a machine without CUDA:
# GPU_CHECK_ARGS="--device cpu --quick" (what tests/test_gpu_check.py runs).
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check:
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

include pipelines/demo.mk pipelines/semantickitti.mk pipelines/synthetic-full.mk
