# dlm-triton: make setup | test | lint | corpus | train | eval | engine | serve
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= models/default
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint format clean corpus train eval

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf build .pytest_cache .ruff_cache

# ---- the default model (models/default) -------------------------------------------------------
CORPUS ?= build/corpus
DEVICE ?= auto
# CPU budget: about 110 minutes on 2 cores. The shipped model was trained with the GPU budget
# (scripts/device_run.sh): PRETRAIN_MIN=3.8 DISTILL_MIN=1.8, BATCH=128, then 2.8 more distill minutes.
PRETRAIN_MIN ?= 80
DISTILL_MIN ?= 30
BATCH ?= 32
TRAIN_OUT ?= build/model
EVAL_PROMPTS ?= 64

$(CORPUS)/train.npy: | setup
	$(PY) -m dlm.train.corpus --out $(CORPUS)

corpus: $(CORPUS)/train.npy

train: corpus
	$(PY) -m dlm.train.train --corpus $(CORPUS) --out $(TRAIN_OUT) --device $(DEVICE) \
		--batch $(BATCH) --pretrain-minutes $(PRETRAIN_MIN) --distill-minutes $(DISTILL_MIN) --resume

eval: setup
	$(PY) -m dlm.train.evaluate --model $(MODEL) --prompts $(EVAL_PROMPTS)

# Engine: export the model to ONNX (+ TensorRT where present), parity-checked; manifest.json.
BACKEND ?= auto
ENGINE_DIR ?= build/engine

.PHONY: engine
engine: setup
	$(PY) -m export --model $(MODEL) --backend $(BACKEND) --out $(ENGINE_DIR)

# ---- serving (model_repository/, client/): a real tritonserver from the nvidia-pytriton wheel
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
FILL_ARGS ?=

.PHONY: serve bench-serving

# Builds the engine first when the export package exists and $(ENGINE_DIR) has no manifest; the
# denoiser then serves what the manifest names. FILL_ARGS="--backend torch" skips the build's
# engine; `python -m model_repository.fill --help` lists the other settings.
serve: setup
	@if [ -d export ] && [ ! -f $(ENGINE_DIR)/manifest.json ]; then \
		$(MAKE) engine MODEL=$(MODEL); fi
	$(PY) -m model_repository.fill --model $(MODEL) --engine $(ENGINE_DIR) \
		--backend auto --out build/model_repository $(FILL_ARGS)
	$(PY) -m model_repository.serve --repository build/model_repository \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

bench-serving: setup
	$(PY) -m benchmarks.serving_overhead --model $(MODEL)
