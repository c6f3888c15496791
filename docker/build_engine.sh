#!/usr/bin/env bash
# Build and validate the TensorRT engine of a model folder, on a GPU with TensorRT >= 10.9
# (the image of docker/engine.Dockerfile).
#
#   docker/build_engine.sh [MODEL_DIR] [ENGINE_DIR]     env: PRECISION=auto|fp32|bf16|fp16
#                                                            MAX_BATCH=16
# NOT RUN HERE: TensorRT is absent on these machines and on the lent GPU (ENVIRONMENT.md).
#
# 1. python -m export --backend tensorrt: ONNX export, PyTorch vs ONNX Runtime parity (CPU), the
#    plugin-form graph, the plan, and in-process validation (Polygraphy's ONNX Runtime and
#    TensorRT runners on the parity inputs, then whole generations TrtEngine vs OrtEngine);
#    writes ENGINE_DIR/manifest.json only if all of it passes.
# 2. The same comparison with the Polygraphy CLI on saved inputs: ONNX Runtime (standard-op
#    graph) outputs, then the plan loaded by `polygraphy run --trt` against them. The plan embeds
#    the DenoiseStep kernel (ahead-of-time plugin), so no plugin registration is needed here; if
#    this TensorRT disagrees, step 1 (which registers the plugin) is the authoritative check.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${1:-models/default}
OUT=${2:-build/engine}
PRECISION=${PRECISION:-auto}
MAX_BATCH=${MAX_BATCH:-16}

python3 -c "import tensorrt as trt; print('tensorrt', trt.__version__)"
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader

echo "== 1. export, parity, plan, validation"
python3 -m export --model "$MODEL" --backend tensorrt --precision "$PRECISION" \
    --max-batch "$MAX_BATCH" --out "$OUT"

echo "== 2. polygraphy run: --onnxrt (denoiser.onnx) vs --trt (denoiser.plan)"
python3 -m export.parity --model "$MODEL" --save-inputs "$OUT/validation_inputs.json"
polygraphy run "$OUT/denoiser.onnx" --onnxrt \
    --load-inputs "$OUT/validation_inputs.json" --save-outputs "$OUT/onnxrt_outputs.json"
read -r -a TOLERANCES <<< "$(python3 -m export.tensorrt_build tolerances --engine-dir "$OUT")"
polygraphy run "$OUT/denoiser.plan" --model-type engine --trt \
    --load-inputs "$OUT/validation_inputs.json" --load-outputs "$OUT/onnxrt_outputs.json" \
    "${TOLERANCES[@]}"
polygraphy inspect model "$OUT/denoiser.plan" --model-type engine

echo "engine ready: $OUT/manifest.json"
