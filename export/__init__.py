"""PyTorch -> ONNX -> engines: export, parity checks between stages, and the engine loaders.

    python -m export --model models/default --backend auto --out build/engine   (`make engine`)

- `onnx_export`: the denoiser forward with the fused DenoiseStep at its end, as one ONNX graph;
- `ort_engine`: `OrtEngine`, the Engine protocol on ONNX Runtime (CPU);
- `tensorrt_build`: ONNX -> TensorRT plan (profiles, precision, timing cache) and `TrtEngine`;
- `parity`: PyTorch vs ONNX Runtime on the same token ids (logits, whole generations);
- `build`: the `make engine` pipeline and its `manifest.json`; `engines.load_engine` reads it.
"""

# Bumped whenever the exported graph, its I/O contract or the manifest changes: a build whose
# manifest names another version is redone even if the checkpoint is unchanged.
EXPORTER_VERSION = "2"  # 2: the fork input
