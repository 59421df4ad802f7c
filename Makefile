# `make demo` and `make test` each set up .venv/ first (once; re-run when requirements change).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m msm_mae_jax.cli.demo --workdir $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check msm_mae_jax configs tests bench scripts train.py evaluate.py finetune.py
	$(BIN)/ruff format --check msm_mae_jax configs tests bench scripts train.py evaluate.py finetune.py

bench: $(STAMP)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/run_all.py --out bench/results.json

clean:
	rm -rf $(VENV) .pytest_cache
