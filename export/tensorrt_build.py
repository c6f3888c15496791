"""ONNX -> TensorRT plan (TensorRT 10.x); the engine that runs one is export/tensorrt_engine.py.

NOT RUN HERE. TensorRT cannot be installed on these machines nor on the lent GPU (see
shared/ENVIRONMENT.md), so everything that imports `tensorrt` (`build_plan`, `validate`) is
written against the documented TensorRT 10.9 Python API and has never executed; it runs in the
NGC image of docker/engine.Dockerfile via docker/build_engine.sh. What the tests here do check
are the plain-code decisions: precision (`choose_precision`) and validation tolerances (the
optimization profiles live beside `TrtEngine`, in export/tensorrt_engine.py).

The build (`build_from_model`):
- the plugin-form graph (export/onnx_export.py, `plugin=True`): DenoiseStep is one
  `dlm::DenoiseStep` node that TensorRT's ONNX parser maps to the Python plugin registered by
  `plugins.denoise_step.tensorrt_plugin.register()` (ahead-of-time: the OpenAI Triton kernel's PTX
  is embedded in the plan);
- a strongly typed network: the precision is that of the exported graph (weights and compute in
  bf16 or fp16, KV I/O float32), so no builder precision flags are set;
- optimization profiles from `optimization_profiles` (a `step` profile tuned for block-sized
  passes over a cached prefix, a `prefill` profile for long prompts and mixed batches);
- a timing cache file next to the plan, reused by the next build.
TensorRT >= 10.9 is required (`tensorrt.plugin.aot_impl`), < 11 (the API this is written for).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dlm.config import ModelConfig
from export.tensorrt_engine import (
    ABSENT,
    DEFAULT_MAX_BATCH,
    Profile,
    TrtEngine,
    optimization_profiles,
    require_tensorrt,
    tensorrt_available,
)

WORKSPACE_GIB = 8


# ---- plain-code decisions (tested here) ----------------------------------------------------


def choose_precision(requested: str, capability: tuple[int, int]) -> str:
    """The network precision for a GPU of compute `capability` (major, minor).

    auto: bf16 from Ampere (8.0) on, else fp16. bf16 needs >= 8.0. fp8 needs >= 8.9 (Ada,
    Hopper) and a Q/DQ-quantized graph (e.g. from TensorRT Model Optimizer), which this exporter
    does not produce: it is refused with that reason.
    """
    cap = tuple(capability)
    if requested == "auto":
        return "bf16" if cap >= (8, 0) else "fp16"
    if requested in ("fp32", "fp16"):
        return requested
    if requested == "bf16":
        if cap < (8, 0):
            raise ValueError(
                f"precision=bf16: needs compute capability >= 8.0, this GPU has "
                f"{cap[0]}.{cap[1]}; use fp16"
            )
        return requested
    if requested == "fp8":
        if cap < (8, 9):
            raise ValueError(
                f"precision=fp8: needs compute capability >= 8.9, this GPU has "
                f"{cap[0]}.{cap[1]}"
            )
        raise ValueError(
            "precision=fp8: needs a Q/DQ-quantized ONNX graph, which this exporter "
            "does not produce; use bf16"
        )
    raise ValueError(f"precision={requested!r}: must be one of auto, fp32, bf16, fp16, fp8")


def validation_tolerances(precision: str, vocab_size: int) -> dict[str, tuple[float, float]]:
    """(atol, rtol) per output for plan-vs-ONNX Runtime comparisons on random inputs.

    fp32: tight, and tokens must match. bf16/fp16: KV and confidence within a few units of the
    format's precision; tokens are not compared element-wise (near-ties flip under reduced
    precision: the generation agreement in `validate` reports them instead).
    """
    if precision == "fp32":
        return {
            "token": (0.0, 0.0),
            "confidence": (1e-4, 1e-3),
            "new_k": (1e-3, 1e-3),
            "new_v": (1e-3, 1e-3),
        }
    eps = {"bf16": 2**-8, "fp16": 2**-11}[precision]
    return {
        "token": (float(vocab_size), 0.0),
        "confidence": (16 * eps, 0.0),
        "new_k": (32 * eps, 8 * eps),
        "new_v": (32 * eps, 8 * eps),
    }


# ---- TensorRT (not run here) -------------------------------------------------------------


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    profiles: list[Profile],
    cfg: ModelConfig,
    timing_cache: Path,
    workspace_gib: int = WORKSPACE_GIB,
    log: Callable[[str], None] = print,
) -> dict:
    """Parse the plugin-form graph into a strongly typed network and build the plan."""
    trt = require_tensorrt()
    from plugins.denoise_step.tensorrt_plugin import register

    register()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for prof in profiles:
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in prof.shapes(cfg).items():
            p.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(p)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT build failed (see its log above)")
    plan_path.write_bytes(bytes(plan))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    seconds = time.perf_counter() - t0
    log(f"  built {plan_path} ({plan_path.stat().st_size / 1e6:.1f} MB) in {seconds:.0f} s")
    return {
        "version": trt.__version__,
        "build_s": round(seconds, 1),
        "profiles": [{"name": p.name, "dims": p.dims} for p in profiles],
    }


def build_from_model(
    model,
    out: Path,
    precision: str,
    log: Callable[[str], None] = print,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> dict:
    """Plugin-form graph -> plan -> validation; returns the manifest's `tensorrt` entry."""
    import torch

    from export import PLAN_FILE, TIMING_CACHE_FILE, TRT_ONNX_FILE
    from export.onnx_export import export_denoiser

    export_denoiser(model, out / TRT_ONNX_FILE, plugin=True, precision=precision)
    log(f"  wrote {out / TRT_ONNX_FILE} (DenoiseStep as plugin, {precision})")
    profiles = optimization_profiles(model.cfg, max_batch=max_batch)
    entry = build_plan(
        out / TRT_ONNX_FILE, out / PLAN_FILE, profiles, model.cfg, out / TIMING_CACHE_FILE, log=log
    )
    entry["device"] = torch.cuda.get_device_name()
    entry["validation"] = validate(out, model, precision, profiles, log)
    if not entry["validation"]["ok"]:
        from export import ParityError

        raise ParityError(f"TensorRT plan vs ONNX Runtime: {entry['validation']}")
    return {"tensorrt": entry}


def validate(
    out: Path, model, precision: str, profiles: list[Profile], log: Callable[[str], None] = print
) -> dict:
    """The plan against ONNX Runtime (fp32 standard graph) with Polygraphy's runners on the
    parity cases, then whole generations TrtEngine vs OrtEngine at temperature 0 (identical
    required for fp32 plans; agreement reported for bf16/fp16)."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    from export import ONNX_FILE, PLAN_FILE, parity
    from export.ort_engine import OrtEngine

    cfg = model.cfg
    feeds = [
        parity.case_inputs(cfg, c, seed=i)
        for i, c in enumerate(parity.pass_cases(cfg.block_length))
    ]
    tol = validation_tolerances(precision, cfg.vocab_size)
    runners = [
        OnnxrtRunner(SessionFromOnnx(str(out / ONNX_FILE))),
        TrtRunner(EngineFromBytes(BytesFromPath(str(out / PLAN_FILE)))),
    ]
    results = Comparator.run(runners, data_loader=feeds)
    compare = CompareFunc.simple(
        atol={k: a for k, (a, _) in tol.items()}, rtol={k: r for k, (_, r) in tol.items()}
    )
    accuracy = bool(Comparator.compare_accuracy(results, compare_func=compare))
    prompts = parity.parity_prompts(cfg)
    gen = parity.generation_parity(
        OrtEngine(out / ONNX_FILE, cfg),
        TrtEngine(out / PLAN_FILE, cfg, profiles=profiles),
        prompts,
        max_tokens=2 * cfg.block_length,
    )
    for line in parity.format_generation_parity(gen):
        log(line)
    ok = accuracy and (gen["ok"] or precision != "fp32")
    return {"ok": ok, "polygraphy_accuracy": accuracy, "tolerances": tol, "generation": gen}


def polygraphy_tolerance_args(precision: str, vocab_size: int) -> list[str]:
    """`validation_tolerances` as `polygraphy run` arguments (--atol/--rtol name:value ...)."""
    tol = validation_tolerances(precision, vocab_size)
    return ["--atol", *(f"{k}:{a:g}" for k, (a, _) in tol.items())] + [
        "--rtol",
        *(f"{k}:{r:g}" for k, (_, r) in tol.items()),
    ]


def main(argv: list[str] | None = None) -> int:
    """`profiles --model DIR`: print the profile decisions for a model;
    `tolerances --engine-dir DIR`: print the polygraphy tolerance arguments for a built plan."""
    import json

    p = argparse.ArgumentParser(prog="python -m export.tensorrt_build")
    p.add_argument("command", choices=["profiles", "tolerances"])
    p.add_argument("--model", help="checkpoint folder (profiles)")
    p.add_argument("--engine-dir", help="engine folder with manifest.json (tolerances)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    args = p.parse_args(argv)
    if args.command == "tolerances":
        if not args.engine_dir:
            p.error("tolerances: --engine-dir is required")
        from export import MANIFEST

        m = json.loads((Path(args.engine_dir) / MANIFEST).read_text())
        print(" ".join(polygraphy_tolerance_args(m["precision"], m["config"]["vocab_size"])))
        return 0
    if not args.model:
        p.error("profiles: --model is required")
    from dlm.hf_config import config_from_hf

    cfg = config_from_hf(json.loads((Path(args.model) / "config.json").read_text()))
    for prof in optimization_profiles(cfg, max_batch=args.max_batch):
        print(prof.name, {a: list(r) for a, r in prof.dims.items()})
    print("tensorrt:", "present" if tensorrt_available() else ABSENT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
