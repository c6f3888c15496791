"""PyTorch -> ONNX -> engines: export, parity checks between stages, and the engine loaders.

    python -m export --model models/default --backend auto   (`make engine`: build/engines/...)

- `onnx_export`: the denoiser forward with the fused DenoiseStep at its end, as one ONNX graph;
- `ort_engine`: `OrtEngine`, the Engine protocol on ONNX Runtime (CPU);
- `tensorrt_build`: ONNX -> TensorRT plan (precision, timing cache, validation);
- `tensorrt_engine`: `TrtEngine` on a plan and its optimization profiles;
- `parity`: PyTorch vs ONNX Runtime on the same token ids (logits, whole generations);
- `build`: the `make engine` pipeline and its `manifest.json`, which names its loader in
  `engines` (`dlm.engines.load_engine`, the one engine factory, reads it).
"""

# Bumped whenever the exported graph, its I/O contract or the manifest changes: a build whose
# manifest names another version is redone even if the checkpoint is unchanged.
# 2: the fork input; 3: the manifest names its loader; 4: noise by position; 5: penalties;
# 6: the manifest's chosen defaults (block lengths); 7: weights beside the graph (external data),
# RMSNorm as x / sqrt (one fused kernel in ONNX Runtime); 8: grouped attention (K/V not repeated)
EXPORTER_VERSION = "8"

import hashlib  # noqa: E402  (no torch: the Makefile and fill import this without it)
from pathlib import Path  # noqa: E402

from dlm.engines import MANIFEST  # noqa: E402, F401  (torch-free; the factory reads it)

# The files of a build folder (every step and loader names them from here).
ONNX_FILE = "denoiser.onnx"  # its weights beside it in denoiser.onnx.data (onnx_export.data_path)
PARITY_ONNX_FILE = "denoiser.parity.onnx"  # the same graph with logits out, the same weights
ONNX_INT8_FILE = "denoiser.int8.onnx"  # export/quantize.py
TRT_ONNX_FILE = "denoiser.trt.onnx"
PLAN_FILE = "denoiser.plan"
GEMMA_FILES = {"encoder": "encoder.onnx", "canvas": "canvas.onnx"}  # DiffusionGemma's two graphs
TIMING_CACHE_FILE = "timing.cache"


class ParityError(RuntimeError):
    """An exported stage disagrees with the stage before it; the message carries the figures."""


ENGINES = Path(__file__).resolve().parent.parent / "build" / "engines"


def engine_dir(model_dir: str | Path) -> Path:
    """Where `make engine` builds a model's engine by default: one folder per checkpoint folder,
    `build/engines/<folder name>-<hash of its absolute path>`, so that serving one model after
    another never finds the other's engine (a checkpoint changed in place is rebuilt: the build's
    manifest names the checkpoint's hash)."""
    path = Path(model_dir).resolve()
    return ENGINES / f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
