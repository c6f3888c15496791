"""The loaders a build's manifest names (`"loader"`, written by export/build.py), called by the
one engine factory `dlm.engines.load_engine` once it has read the manifest and checked that the
model folder's config is the one the engine was built from (and that no other precision than the
build's was asked: `dtype` is the PyTorch engine's):

    onnxruntime -> export.engines:onnxruntime  OrtEngine(denoiser.onnx), CPU (DiffusionGemma:
                                               GemmaEngine on its encoder and canvas graphs)
    tensorrt    -> export.engines:tensorrt     TrtEngine(denoiser.plan), CUDA (not run here)
    torch       -> dlm.engines:torch_from_build (the checkpoint itself: no export code needed)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dlm.config import ModelConfig
from dlm.engines import TORCH_LOADER
from dlm.gemma import MODEL_TYPE as GEMMA

if TYPE_CHECKING:  # importing this module does not import torch (export.build reads LOADERS)
    from dlm.engine import Engine

LOADERS = {
    "onnxruntime": "export.engines:onnxruntime",
    "tensorrt": "export.engines:tensorrt",
    "torch": TORCH_LOADER,
}


def onnxruntime(
    build_dir: Path, manifest: dict, *, model_dir: Path, config: ModelConfig, device: str,
    threads: int, dtype: str,
) -> Engine:  # fmt: skip
    if config.family == GEMMA:
        from dlm.gemma.engine import GemmaEngine
        from export.gemma_ort import OrtRunner

        return GemmaEngine(OrtRunner(build_dir, config, threads))
    from export.ort_engine import OrtEngine

    return OrtEngine(build_dir / manifest["files"]["onnx"], config, threads=threads)


def tensorrt(
    build_dir: Path, manifest: dict, *, model_dir: Path, config: ModelConfig, device: str,
    threads: int, dtype: str,
) -> Engine:  # fmt: skip
    from export.tensorrt_engine import Profile, TrtEngine

    profiles = [
        Profile(p["name"], {a: tuple(r) for a, r in p["dims"].items()})
        for p in manifest["tensorrt"]["profiles"]
    ]
    return TrtEngine(build_dir / manifest["files"]["plan"], config, "cuda", profiles)
