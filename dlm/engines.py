"""`load_engine`: the one engine factory. A model folder's engine: the PyTorch engine, or the
build an engine folder's manifest describes (`python -m export`, `make engine`).

    engine = load_engine("models/default")                            # TorchEngine
    engine = load_engine("models/default", "build/engines/default-…")  # what the manifest names

A build names its own loader in its manifest (`"loader": "module:function"`, written by
export/build.py): `export.ort_engine:from_build` (ONNX Runtime, CPU),
`export.tensorrt_build:from_build` (TensorRT, CUDA), `dlm.engines:torch_from_build` (the
checkpoint itself). The function is imported by that name only when a build is loaded, so the
core library imports nothing from `export/` (docs/serving.md, layering) and a build brings its
own code. Every loader is called as `loader(build_dir, manifest, model_dir=, config=, device=,
threads=, dtype=)` and returns an `Engine`.

The model folder's config.json must describe the model the engine was built from (the manifest
keeps its config): a mismatch is an error that says to rebuild, never a silent wrong answer.
Importing this module does not import torch.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from dlm.config import ModelConfig
from dlm.gemma import MODEL_TYPE as GEMMA
from dlm.hf_config import config_from_hf
from dlm.schema import generation_defaults

if TYPE_CHECKING:
    from dlm.engine import Engine
    from dlm.gemma.config import GemmaConfig

MANIFEST = "manifest.json"  # the file every engine folder holds (export/build.py writes it)
TORCH_LOADER = "dlm.engines:torch_from_build"
# The PyTorch engine's weight and KV dtypes (torch's names; torch is imported only to load one).
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPES = ("auto", *TORCH_DTYPES)


class EngineError(ValueError):
    """An engine folder that cannot serve this model; the message says what to run."""


def read_manifest(build_dir: str | Path) -> dict:
    path = Path(build_dir) / MANIFEST
    if not path.exists():
        raise EngineError(
            f"{path}: no manifest (build the engine: `make engine` or "
            f"`python -m export --model MODEL --out {build_dir}`)"
        )
    return json.loads(path.read_text())


def served_defaults(model_dir: str | Path, build_dir: str | Path | None) -> dict:
    """A request's defaults where the build in `build_dir` serves the model: the folder's
    `generation_config.json` (`dlm.schema.generation_defaults`) and, as `block_lengths`, the
    block its manifest chose per mode (`dlm.sampling.blocks`); None: the folder's alone."""
    found = generation_defaults(model_dir)
    if build_dir is not None and (Path(build_dir) / MANIFEST).exists():
        chosen = read_manifest(build_dir).get("defaults", {}).get("block_length")
        if chosen:
            found["block_lengths"] = chosen
    return found


def is_gemma(model_dir: str | Path) -> bool:
    """A DiffusionGemma checkpoint (by config.json's model_type; reads nothing else)."""
    path = Path(model_dir) / "config.json"
    return path.exists() and json.loads(path.read_text()).get("model_type") == GEMMA


def model_config(model_dir: str | Path) -> ModelConfig | GemmaConfig:
    """The config of a checkpoint folder, as its loader builds the model from it: a
    DiffusionGemma checkpoint's (`dlm.gemma`, by its model_type), else `dlm.checkpoint`'s.
    Torch-free (the front door and the launcher read it)."""
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise EngineError(f"{model_dir}: no config.json (is it a checkpoint folder?)")
    hf = json.loads(path.read_text())
    if hf.get("model_type") == GEMMA:
        from dlm.gemma.config import GemmaConfig

        return GemmaConfig.from_hf(hf)
    cfg = config_from_hf(hf)
    cfg.dropout = 0.0  # as checkpoint.load does
    return cfg


def load_engine(
    model_dir: str | Path,
    engine_dir: str | Path | None = None,
    device: str = "cpu",
    threads: int = 0,
    dtype: str = "auto",
) -> Engine:
    """The engine of the model in `model_dir`: the build in `engine_dir` (see module doc), or the
    PyTorch engine on `device` when `engine_dir` is None.

    device: where a PyTorch engine runs ("cpu", "cuda", "cuda:1"); the ONNX Runtime engine runs
    on the CPU and the TensorRT engine on "cuda" whatever is given. threads: intra-op threads
    (torch and ONNX Runtime; 0 = their default). dtype: the PyTorch engine's weights and KV
    (DTYPES; auto: bf16 on a GPU, fp32 on the CPU); a built engine has the precision it was
    built with, and another one asked of it is an error."""
    if threads < 0:
        raise ValueError(f"threads={threads}: must be >= 0 (0 = the default)")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    if engine_dir is None:
        return _torch_engine(Path(model_dir), device, threads, dtype)
    build_dir, model_dir = Path(engine_dir), Path(model_dir)
    manifest = read_manifest(build_dir)
    backend, precision = manifest.get("backend"), manifest.get("precision")
    if backend != "torch" and dtype not in ("auto", precision):
        raise EngineError(
            f"dtype={dtype}: the build in {build_dir} ({backend}) runs {precision}; its "
            "precision is chosen when it is built (make engine PRECISION=...)"
        )
    cfg = model_config(model_dir)
    built = type(cfg).from_dict(manifest["config"])
    if isinstance(built, ModelConfig):
        built.dropout = cfg.dropout
    if built != cfg:
        diff = sorted(k for k, v in cfg.to_dict().items() if built.to_dict().get(k) != v)
        raise EngineError(
            f"{build_dir}: built from {manifest['source']['path']}, whose config "
            f"differs from {model_dir} in {diff}; rebuild with `make engine`"
        )
    loader = _loader(build_dir, manifest)
    engine = loader(
        build_dir,
        manifest,
        model_dir=model_dir,
        config=cfg,
        device=device,
        threads=threads,
        dtype=dtype,
    )
    fork = manifest.get("defaults", {}).get("self_spec_fork")
    if fork is not None:  # whether self_spec's rounds fork here (dlm.sampling.blocks)
        engine.self_spec_fork = fork
    return engine


def _loader(build_dir: Path, manifest: dict):
    name = manifest.get("loader")
    module, _, function = str(name).partition(":")
    if not name or not function:
        raise EngineError(
            f"{build_dir / MANIFEST}: loader={name!r}: must name `module:function` (a build "
            "from an older exporter: rebuild it with `make engine`)"
        )
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        raise EngineError(
            f"{build_dir / MANIFEST}: loader={name!r} cannot be imported ({e}): the "
            f"{manifest.get('backend')} engine needs the package that built it"
        ) from e


def torch_from_build(
    build_dir: Path, manifest: dict, *, model_dir: Path, config: ModelConfig, device: str,
    threads: int, dtype: str,
) -> Engine:  # fmt: skip
    """A torch build (a manifest, no files): the checkpoint itself on `device`."""
    return _torch_engine(model_dir, device, threads, dtype)


def torch_dtype(dtype: str, device: str) -> str:
    """The PyTorch engine's dtype name for a request of `dtype` on `device` (auto resolved)."""
    if dtype != "auto":
        return dtype
    return "fp32" if str(device) == "cpu" else "bf16"


def _torch_engine(model_dir: Path, device: str, threads: int, dtype: str) -> Engine:
    import torch

    from dlm import checkpoint
    from dlm.engine import TorchEngine

    if threads > 0:
        torch.set_num_threads(threads)
    weights = getattr(torch, TORCH_DTYPES[torch_dtype(dtype, device)])
    if is_gemma(model_dir):
        from dlm.gemma import checkpoint as gemma_checkpoint
        from dlm.gemma.engine import GemmaEngine

        return GemmaEngine.torch(gemma_checkpoint.load(model_dir)[1], device, weights)
    return TorchEngine(checkpoint.load(model_dir), device, weights)
