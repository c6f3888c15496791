#!/usr/bin/env bash
# The GPU session of this project, as one prepared script (see docs/performance.md "GPU runs").
# Usage on a CUDA machine, from the repository root, with build/corpus made by
#   python -m dlm.train.corpus --out build/corpus
#   OUT=dir bash scripts/device_run.sh [train|checks|gemma|all]
# train:  trains the default model on the GPU (same recipe as the CPU one, bigger budget)
# checks: the DenoiseStep kernel check (plugins), the engine's CUDA graphs against eager
#         (tests/dlm/test_graphs.py), the 8B-shaped forward benchmark and the PyTorch
#         engine's KV cache in place against the past as inputs (benchmarks.kv_layout)
# gemma:  DiffusionGemma's PyTorch engine on the GPU (bf16): step times, tokens/s at c=1 and 8
set -uo pipefail
OUT=${OUT:-build/device}
WHAT=${1:-all}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
log() { echo "== $(date +%T) $*"; }
log "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
$PY -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"

if [[ $WHAT == train || $WHAT == all ]]; then
  log "train (budget: ${PRETRAIN_MIN:-3.3} + ${DISTILL_MIN:-1.7} minutes)"
  timeout ${TRAIN_TIMEOUT:-420} $PY -m dlm.train.train --device cuda --corpus build/corpus \
    --out "$OUT/default" --work /tmp/train --batch ${BATCH:-128} --seq-len 256 --block 32 \
    --pretrain-minutes "${PRETRAIN_MIN:-3.3}" --distill-minutes "${DISTILL_MIN:-1.7}" \
    --distill-sequences ${DISTILL_SEQ:-4096} --eval-every 250 \
    --warmup 200 --lr 3e-3 --distill-lr 1e-3 ${TRAIN_ARGS:-} 2>&1 | tr '\r' '\n' | grep -v '^\(pretrain\|distill\): ' \
    | tail -n 200
  rm -f "$OUT/default/tokenizer.json" "$OUT/default/tokenizer_config.json" \
    "$OUT/default/generation_config.json"   # rebuilt from build/corpus on the way back
fi

if [[ $WHAT == checks || $WHAT == all ]]; then
  log "DenoiseStep kernel check"
  timeout 150 $PY -m plugins.denoise_step.gpu_check --out "$OUT/gpu_check.md" 2>&1 | tail -n 80
  log "CUDA graphs of the PyTorch engine give the eager tokens (tests/dlm/test_graphs.py)"
  if $PY -m pytest --version > /dev/null 2>&1; then
    # the CUDA tests only, with the Triton kernel compiled (tests/conftest.py would interpret it)
    TRITON_INTERPRET=0 timeout 120 $PY -m pytest -q -p no:cacheprovider tests/dlm/test_graphs.py \
      -k cuda 2>&1 | tail -n 20
  else
    log "pytest absent here: skipped (gpu_forward's sampler section compares the tokens too)"
  fi
  log "8B-shaped forward benchmark"
  timeout 180 $PY -m benchmarks.gpu_forward --budget-s 150 --out "$OUT/gpu_forward.md" 2>&1 | tail -n 80
  log "KV cache in place vs past as inputs (8B preset, random bf16 weights, 2,048 cached)"
  timeout 150 $PY -m benchmarks.kv_layout --preset ${KV_PRESET:-nemotron-labs-diffusion-8b} \
    --device ${DEVICE:-cuda} --context 2048 --rows 1 8 --tokens 1 32 2>&1 | tee "$OUT/kv_layout.md"
fi
if [[ $WHAT == gemma || $WHAT == all ]]; then
  log "DiffusionGemma engine (random small shape, bf16)"
  timeout 240 $PY -m benchmarks.gemma_device --device cuda 2>&1 | tee "$OUT/gemma_device.md" | tail -n 40
fi
log "done"
