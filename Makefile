# dlm-triton: make setup | test | lint | corpus | train | eval | engine | serve | bench
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

# The whole suite: perf_analyzer's libb64, the nginx for the two-replica tests and Chromium for the
# playground are installed first (Debian packages; root), and genai-perf into a venv of its own,
# so that only TensorRT and GPU tests skip.
test: setup bench-deps deploy-deps browser-deps genai-perf-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup bench-deps deploy-deps browser-deps genai-perf-deps
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
# CPU recipe: about 110 minutes on 2 cores, the `small` preset (5.2 M parameters) over 128-token
# windows, about 4.9 s per step of 32 windows (measured; the default preset over 256 tokens takes
# 26-36 s, so 80 minutes would see only 1 M tokens). The shipped model is the `default` preset,
# trained with the GPU budget (scripts/device_run.sh): PRETRAIN_MIN=3.8 DISTILL_MIN=1.8,
# BATCH=128, SEQ_LEN=256, then 2.8 more distill minutes.
PRESET ?= small
SEQ_LEN ?= 128
PRETRAIN_MIN ?= 80
DISTILL_MIN ?= 30
BATCH ?= 32
# About 1,000 steps in 80 minutes: a 50-step warm-up.
WARMUP ?= 50
TRAIN_OUT ?= build/model
EVAL_PROMPTS ?= 64

# CORPUS_ARGS=--packages adds the installed packages under permissive licences (the corpus of
# the next recipe; models/default/README.md lists them).
CORPUS_ARGS ?=
$(CORPUS)/train.npy: | setup
	$(PY) -m dlm.train.corpus --out $(CORPUS) $(CORPUS_ARGS)

corpus: $(CORPUS)/train.npy

train: corpus
	$(PY) -m dlm.train.train --corpus $(CORPUS) --out $(TRAIN_OUT) --device $(DEVICE) \
		--preset $(PRESET) --seq-len $(SEQ_LEN) --batch $(BATCH) --warmup $(WARMUP) \
		--pretrain-minutes $(PRETRAIN_MIN) \
		--distill-minutes $(DISTILL_MIN) --resume

eval: setup
	$(PY) -m dlm.train.evaluate --model $(MODEL) --prompts $(EVAL_PROMPTS)

# Engine: export the model to ONNX (+ TensorRT where present), parity-checked; manifest.json.
# One engine folder per model, build/engines/<model folder>-<path hash> (export.engine_dir),
# unless ENGINE_DIR is given; a build whose manifest matches the checkpoint is skipped in about
# a second, so serve, bench, soak and serve-lb run it every time: MODEL=dir always serves dir.
BACKEND ?= auto
# PRECISION=int8: the ONNX Runtime engine in per-row int8 (export/quantize.py; CPU)
PRECISION ?=
ENGINE_DIR ?=
ENGINE_ARG = $(if $(ENGINE_DIR),--engine $(ENGINE_DIR))

.PHONY: engine
engine: setup
	$(PY) -m export --model $(MODEL) --backend $(BACKEND) $(if $(ENGINE_DIR),--out $(ENGINE_DIR)) \
		$(if $(PRECISION),--precision $(PRECISION))

# ---- serving (model_repository/, client/): a real tritonserver from the nvidia-pytriton wheel
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
# The OpenAI-compatible front door and the playground (frontend/), on 127.0.0.1 beside the server
FRONTEND_PORT ?= 9000
FILL_ARGS ?=

.PHONY: serve bench-serving bench-cpu-precision

# Builds (or checks) the model's engine first; dlm then serves what its manifest names. The front
# door starts with the server on 127.0.0.1:$(FRONTEND_PORT) and stops with it.
# FILL_ARGS="--backend torch" serves the checkpoint with PyTorch instead; `python -m
# model_repository.fill --help` lists the other settings.
serve: engine
	$(PY) -m model_repository.fill --model $(MODEL) $(ENGINE_ARG) \
		--backend auto --out build/model_repository $(FILL_ARGS)
	$(PY) -m model_repository.serve --repository build/model_repository \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
		--frontend-port $(FRONTEND_PORT) --model $(MODEL)

bench-serving: engine
	$(PY) -m benchmarks.serving_overhead --model $(MODEL) $(ENGINE_ARG)

# The CPU engine's precisions side by side: fp32 against per-row int8 (its own engine folder).
INT8_DIR ?= build/engines/$(notdir $(MODEL))-int8
bench-cpu-precision: engine
	$(PY) -m export --model $(MODEL) --backend onnxruntime --precision int8 --out $(INT8_DIR)
	$(PY) -m benchmarks.cpu_precision --model $(MODEL) $(if $(ENGINE_DIR),--fp32 $(ENGINE_DIR)) --int8 $(INT8_DIR)

# The front door's cost: the OpenAI API against direct gRPC at concurrency 1 and 8.
.PHONY: bench-frontend
bench-frontend: engine
	$(PY) -m benchmarks.frontend_overhead --model $(MODEL) $(ENGINE_ARG)

# DiffusionGemma (random weights, transformers' layout) through Triton against transformers'
# generate in process, c=1 and c=8; first checks both give the same tokens given the same draws.
.PHONY: bench-gemma
bench-gemma: setup
	$(PY) -m benchmarks.gemma_serving

# ---- load tests (benchmarks/): the real perf_analyzer 2.51 from the tritonclient wheel --------
CONCURRENCY ?= 1 2 4 8
MODES ?= ar diffusion diffusion_f1 self_spec self_spec_b8
OUT ?= build/bench
BENCH_ARGS ?=

.PHONY: bench bench-deps bench-modes browser-deps

# Debian's chromium and chromium-driver for the playground's browser test (needs root).
browser-deps:
	@command -v chromedriver >/dev/null || apt-get install -y -q chromium chromium-driver \
		|| { apt-get update -q && apt-get install -y -q chromium chromium-driver; }

# perf_analyzer links libb64.so.0d (Debian libb64-0d); installed here when missing (needs root).
bench-deps:
	@/sbin/ldconfig -p 2>/dev/null | grep -q libb64.so.0d || apt-get install -y -q libb64-0d \
		|| { apt-get update -q && apt-get install -y -q libb64-0d; }

# A concurrency sweep per mode against `ensemble` (a LocalServer on free ports, or BENCH_ARGS=
# "--url host:port"): CSV/JSON, plots and summary.md into $(OUT). About 5 minutes on 2 cores.
bench: engine bench-deps
	$(PY) -m benchmarks.bench --model $(MODEL) $(ENGINE_ARG) \
		--concurrency $(CONCURRENCY) --modes $(MODES) --out $(OUT) $(BENCH_ARGS)

# Modes side by side (ar, diffusion thresholds/steps, self_spec): in process and through Triton,
# speed and quality, plus the no-cache LLaDA-style reference; into build/bench_modes.
MODES_PROMPTS ?= 8
bench-modes: engine
	$(PY) -m benchmarks.modes --model $(MODEL) $(ENGINE_ARG) --prompts $(MODES_PROMPTS) \
		--reference $(BENCH_ARGS)

# Soak: perf_analyzer streaming at concurrency 16 for 5 minutes (all three modes), with zero failed
# requests, flat server and stub memory and no /dev/shm growth as the verdict; into build/soak.
SOAK_MINUTES ?= 5
SOAK_CONCURRENCY ?= 16
.PHONY: soak
soak: engine bench-deps
	$(PY) -m benchmarks.soak --model $(MODEL) $(ENGINE_ARG) --minutes $(SOAK_MINUTES) \
		--concurrency $(SOAK_CONCURRENCY) --out build/soak

# genai-perf 0.0.16 in its own venv (it wants numpy 2) against a running server: GENAI_ENDPOINT=
# generate (HTTP generate_stream, GENAI_URL the HTTP port) or kserve (gRPC streaming with
# TensorRT-LLM's tensor names, GENAI_URL the gRPC port, e.g. 127.0.0.1:8001), or completions /
# chat (the front door's OpenAI API, GENAI_URL 127.0.0.1:9000).
GENAI_ENDPOINT ?= generate
GENAI_URL ?= 127.0.0.1:8000
GENAI_MODE ?= self_spec
GENAI_CONCURRENCY ?= 2
GENAI_REQUESTS ?= 16
GENAI_OUT ?= build/genai-perf
GENAI_VENV ?= build/genai-perf-venv
GENAI_ENDPOINT_ARGS_generate = -m ensemble --endpoint-type generate \
	--endpoint v2/models/ensemble/generate_stream
GENAI_ENDPOINT_ARGS_kserve = -m ensemble --endpoint-type kserve --backend tensorrtllm
GENAI_ENDPOINT_ARGS_completions = -m $(notdir $(abspath $(MODEL))) --endpoint-type completions
GENAI_ENDPOINT_ARGS_chat = -m $(notdir $(abspath $(MODEL))) --endpoint-type chat

.PHONY: genai-perf-deps
genai-perf-deps: $(GENAI_VENV)/bin/genai-perf

$(GENAI_VENV)/bin/genai-perf:
	$(PYTHON) -m venv $(GENAI_VENV)
	$(GENAI_VENV)/bin/pip install -q genai-perf==0.0.16

.PHONY: bench-genai-perf
bench-genai-perf: setup bench-deps $(GENAI_VENV)/bin/genai-perf
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH HF_HUB_OFFLINE=1 \
	LD_LIBRARY_PATH=$(CURDIR)/$(VENV)/lib/python3.11/site-packages/nvidia/cuda_runtime/lib \
	$(GENAI_VENV)/bin/genai-perf profile $(GENAI_ENDPOINT_ARGS_$(GENAI_ENDPOINT)) \
		--streaming -u $(GENAI_URL) \
		--tokenizer $(MODEL) --synthetic-input-tokens-mean 32 --output-tokens-mean 64 \
		--extra-inputs mode:$(GENAI_MODE) --concurrency $(GENAI_CONCURRENCY) \
		--request-count $(GENAI_REQUESTS) --artifact-dir $(GENAI_OUT)

# ---- deployment (docker/, deploy/): images, Helm chart, nginx over replicas -------------------
# Debian's nginx 1.22 unpacked into build/nginx (apt-get download + dpkg -x: no service started,
# nothing installed system-wide); used by tests/deploy/test_nginx_replicas.py and `make serve-lb`.
NGINX_DIR ?= build/nginx
REPLICAS ?= 2
LB_HTTP_PORT ?= 8080
LB_GRPC_PORT ?= 8081

.PHONY: deploy-deps lint-deploy serve-lb
deploy-deps: $(NGINX_DIR)/usr/sbin/nginx

$(NGINX_DIR)/usr/sbin/nginx:
	rm -rf $(NGINX_DIR)/deb && mkdir -p $(NGINX_DIR)/deb
	cd $(NGINX_DIR)/deb && { apt-get download -q nginx || \
		{ apt-get update -q && apt-get download -q nginx; }; }
	dpkg -x $(NGINX_DIR)/deb/nginx_*.deb $(NGINX_DIR)
	$@ -v

# hadolint (docker/*.Dockerfile), Helm lint + render (helm-python-sdk), yamllint.
lint-deploy: setup
	$(PY) -m deploy.lint

# REPLICAS tritonservers behind nginx on 127.0.0.1:$(LB_HTTP_PORT) (HTTP), $(LB_GRPC_PORT) (gRPC).
serve-lb: engine deploy-deps
	$(PY) -m deploy.nginx --replicas $(REPLICAS) --model $(MODEL) $(ENGINE_ARG) \
		--http-port $(LB_HTTP_PORT) --grpc-port $(LB_GRPC_PORT) --fill-args="$(FILL_ARGS)"
