# Two targets do all set-up on a fresh machine (see README).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart quickstart-sft test test-slow test-gpu bench bench-gpu lint format toy-world toy-world-ablations

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

quickstart: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/mrgrpo train recipes/quickstart.yaml

# ruff (lint + format check) and mypy (pydantic plugin) over the installed package layout
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/typecheck_tree.py >/dev/null
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml mrgrpo

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# On a CUDA machine: the gpu-marked tests plus the device audit on CUDA (skipped without a GPU).
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu tests/gpu tests/test_devices.py

bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu_realsize.py --out benchmarks/results/gpu_realsize.json

bench: $(STAMP)
	$(BIN)/python benchmarks/step_time.py --recipe recipes/smoke_pixel.yaml --out benchmarks/results/step_time_cpu.json

quickstart-sft: $(STAMP)
	$(BIN)/mrgrpo data synth --out data/synth
	$(BIN)/mrgrpo train recipes/quickstart_sft.yaml

# SFT (cached), MR-GRPO on 3 seeds, held-out evaluation (2 worker processes); report in outputs/toy_world/
# (docs/toy_world.md). About 12 minutes on 2 cores with an empty cache.
toy-world: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m mrgrpo.toy_world.pipeline --out outputs/toy_world --seeds 0 1 2 --samples 32 \
		--jobs 2

# the same, plus the ablations (grpo, KL, count over-weighted) on the same 3 seeds: about 14 minutes more
toy-world-ablations: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m mrgrpo.toy_world.pipeline --out outputs/toy_world --seeds 0 1 2 --samples 32 \
		--ablations --ablation-seeds 0 1 2 --jobs 2
