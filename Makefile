# `make demo` and `make test` each set up .venv/ first (once; re-run when requirements change);
# `make test` adds the PyTorch reference and TensorBoard of requirements-dev.txt, HEAR's tools
# of requirements-hear.txt (`make setup-dev`; the tools without their outdated pins) and libtpu
# beside the environment (`make setup-tpu`, for the TPU-compile tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
TPU_STAMP := $(VENV)/.installed-tpu
GPU_PLAN_STAMP := $(VENV)/.installed-gpu-plan
DEMO_DIR ?= runs/demo

.PHONY: setup setup-dev setup-tpu setup-gpu-plan demo test lint bench bench-accelerator bench-input clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP) $(TPU_STAMP) requirements-dev.txt requirements-hear.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-hear.txt
	touch $(DEV_STAMP)

# libtpu for `msm-mae plan` and the TPU-compile tests, in .venv/libtpu: beside the environment,
# not importable, so jax on CPU/GPU starts exactly as without it (see requirements-tpu.txt).
setup-tpu: $(TPU_STAMP)

$(TPU_STAMP): $(STAMP) requirements-tpu.txt
	rm -rf $(VENV)/libtpu
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/libtpu -r requirements-tpu.txt
	touch $(TPU_STAMP)

# jax's CUDA plugin and libraries (~5 GB) in .venv/cuda-plan, for `msm-mae plan --gpu` on a
# machine without a GPU; not importable by other runs, not part of `make test`.
setup-gpu-plan: $(GPU_PLAN_STAMP)

$(GPU_PLAN_STAMP): $(STAMP) requirements-gpu-plan.txt
	rm -rf $(VENV)/cuda-plan
	$(BIN)/python -m pip install --quiet --target $(VENV)/cuda-plan -r requirements-gpu-plan.txt
	touch $(GPU_PLAN_STAMP)

demo: $(STAMP)
	$(BIN)/msm-mae demo --workdir $(DEMO_DIR)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

lint: $(STAMP)
	$(BIN)/ruff check msm_mae_jax configs tests bench scripts train.py evaluate.py finetune.py
	$(BIN)/ruff format --check msm_mae_jax configs tests bench scripts train.py evaluate.py finetune.py

bench: $(STAMP)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/run_all.py --out bench/results.json

# On the accelerator jax sees: step sweep (samples/s, MFU, memory, compile) + 200 real-loop steps.
bench-accelerator: $(STAMP)
	$(BIN)/python bench/accelerator.py --json bench/accelerator.json

# Host input rate (samples per CPU-second) of the training iterator: files, on-device log-mel, lms.
bench-input: $(STAMP)
	$(BIN)/python bench/input_rate.py --json bench/input_rate.json

clean:
	rm -rf $(VENV) .pytest_cache
