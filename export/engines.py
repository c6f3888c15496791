"""`load_engine`: the engine a build folder's manifest names, for the server's denoiser model.

    engine = load_engine(None, "models/default")  # build/engines/default-<hash>: an Engine

manifest backend -> engine:
    onnxruntime -> export.ort_engine.OrtEngine(denoiser.onnx), CPU
    tensorrt    -> export.tensorrt_build.TrtEngine(denoiser.plan), CUDA (not run here)
    torch       -> dlm.engine.TorchEngine(checkpoint), on `device`
The model folder's config.json must describe the model the engine was built from (the manifest
keeps its config); a mismatch is an error that says to rebuild, not a silent wrong answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import export
from dlm import checkpoint
from dlm.config import ModelConfig
from dlm.engine import Engine, TorchEngine


class EngineError(ValueError):
    """A build folder that cannot serve this model; the message says what to run."""


def read_manifest(build_dir: str | Path) -> dict:
    path = Path(build_dir) / export.MANIFEST
    if not path.exists():
        raise EngineError(
            f"{path}: no manifest (build the engine: `make engine` or "
            f"`python -m export --model MODEL --out {build_dir}`)"
        )
    return json.loads(path.read_text())


def _model_config(model_dir: Path) -> ModelConfig:
    path = model_dir / "config.json"
    if not path.exists():
        raise EngineError(f"{model_dir}: no config.json (is it a checkpoint folder?)")
    cfg = checkpoint.config_from_hf(json.loads(path.read_text()))
    cfg.dropout = 0.0  # as checkpoint.load does
    return cfg


def load_engine(
    build_dir: str | Path | None, model_dir: str | Path, device: str = "cpu", threads: int = 0
) -> Engine:
    """The engine of `build_dir/manifest.json` for the model in `model_dir` (see module doc).

    device: for the torch backend ("cpu", "cuda"); the ONNX Runtime engine runs on the CPU and
    the TensorRT engine on "cuda" whatever is given. threads: ONNX Runtime intra-op threads.
    """
    if build_dir is None:
        build_dir = export.engine_dir(model_dir)  # where `make engine` builds it
    build_dir, model_dir = Path(build_dir), Path(model_dir)
    manifest = read_manifest(build_dir)
    cfg = _model_config(model_dir)
    built = ModelConfig.from_dict(manifest["config"])
    built.dropout = cfg.dropout
    if built != cfg:
        diff = sorted(k for k, v in cfg.to_dict().items() if built.to_dict().get(k) != v)
        raise EngineError(
            f"{build_dir}: built from {manifest['source']['path']}, whose config "
            f"differs from {model_dir} in {diff}; rebuild with `make engine`"
        )
    backend = manifest.get("backend")
    files = manifest.get("files", {})
    if backend == "onnxruntime":
        from export.ort_engine import OrtEngine

        return OrtEngine(build_dir / files["onnx"], cfg, threads=threads)
    if backend == "tensorrt":
        from export.tensorrt_build import Profile, TrtEngine

        profiles = [
            Profile(p["name"], {a: tuple(r) for a, r in p["dims"].items()})
            for p in manifest["tensorrt"]["profiles"]
        ]
        return TrtEngine(build_dir / files["plan"], cfg, device="cuda", profiles=profiles)
    if backend == "torch":
        return TorchEngine(checkpoint.load(model_dir), device)
    raise EngineError(
        f"{build_dir / 'manifest.json'}: backend={backend!r}: must be one of "
        "onnxruntime, tensorrt, torch"
    )
