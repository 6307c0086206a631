# Two targets do all set-up on a fresh machine (see README).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart quickstart-sft test test-slow bench toy-world

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

quickstart: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/mrgrpo train recipes/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/step_time.py --out benchmarks/results/step_time_cpu.json

quickstart-sft: $(STAMP)
	$(BIN)/mrgrpo data synth --out data/synth
	$(BIN)/mrgrpo train recipes/quickstart_sft.yaml

# SFT (cached), MR-GRPO on 3 seeds, ablations, held-out evaluation; report in outputs/toy_world/ (docs/toy_world.md)
toy-world: $(STAMP)
	$(BIN)/python -m mrgrpo.toy_world.pipeline --out outputs/toy_world --seeds 0 1 2 --samples 32 --ablations
