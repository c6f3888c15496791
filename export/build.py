"""`make engine`: checkpoint -> ONNX -> parity checks -> (TensorRT plan) -> manifest.json.

    python -m export --model models/default --backend auto [--out DIR] [--force]

Steps, each printed with its time:
1. load the checkpoint and hash its files (config.json, safetensors, index);
2. skip everything if `manifest.json` in --out names the same checkpoint hash, exporter version,
   backend and precision and its files exist (re-running with nothing changed takes a second);
3. export the denoiser graph (export/onnx_export.py), check it (onnx.checker, I/O contract, one
   ONNX Runtime run), write `denoiser.onnx`, its weights `denoiser.onnx.data` and the parity
   graph `denoiser.parity.onnx` (the same with logits as an output, reading the same weights);
4. parity, PyTorch vs ONNX Runtime (export/parity.py): logits on random inputs of several shapes
   incl. cached prefixes, then whole generations in every mode at temperature 0 (identical tokens
   and pass counts required; sampled generations are compared by tests/export on tiny models);
5. backend tensorrt (or auto with TensorRT and a GPU present): the plugin-form graph
   `denoiser.trt.onnx` and the plan `denoiser.plan` (export/tensorrt_build.py);
6. write `manifest.json`: source path and hash, shapes, precision, backend, opset, parity figures,
   timings. A failed parity check exits 1 and writes no manifest, so no engine loads from it;
7. measure the engine's pass times (`dlm.cost`, cached as `cost_model.json`) and choose from them
   the block length of self_spec and diffusion requests that name none (`dlm.sampling.blocks`),
   kept in the manifest as `defaults`.

Backend torch writes only the manifest (`dlm.engines.load_engine` then serves the checkpoint with
`dlm.engine.TorchEngine`). A DiffusionGemma checkpoint (`dlm.gemma`) builds its two graphs
instead (export/gemma_onnx.py, checked by export/gemma_ort.py) for onnxruntime, auto included;
it has no TensorRT build yet. Backend auto = tensorrt where `import tensorrt` works and CUDA is
available, else onnxruntime. On these machines TensorRT is absent: step 5 never ran here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import export
from export import (
    GEMMA_FILES,
    MANIFEST,
    ONNX_FILE,
    ONNX_INT8_FILE,
    PARITY_ONNX_FILE,
    PLAN_FILE,
    TRT_ONNX_FILE,
    ParityError,
)
from export.engines import LOADERS

# torch, onnx and onnxruntime are imported only past the up-to-date check, so that a re-run with
# nothing changed takes a fraction of a second instead of the seconds their imports cost.

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
ORT_PRECISIONS = ("auto", "fp32", "int8")  # int8: export/quantize.py; auto is fp32
GEN_MAX_TOKENS_BLOCKS = 2  # generation parity: this many blocks per prompt


def checkpoint_files(folder: Path) -> list[Path]:
    """The files an engine depends on: config.json and the weights (not the tokenizer)."""
    files = [
        folder / "config.json",
        *sorted(folder.glob("*.safetensors")),
        *sorted(folder.glob("*.safetensors.index.json")),
    ]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"--model {folder}: missing {missing}")
    return files


def checkpoint_hash(folder: str | Path) -> str:
    """sha256 over (name, size, bytes) of `checkpoint_files`, streamed."""
    h = hashlib.sha256()
    for f in checkpoint_files(Path(folder)):
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    """The exporter's version and those of the tools whose output the build depends on."""
    return {
        "exporter": export.EXPORTER_VERSION,
        **{name: metadata.version(name) for name in ("torch", "onnx", "onnxruntime")},
    }


def resolve_backend(requested: str) -> str:
    """auto -> tensorrt where TensorRT and a GPU are present, else onnxruntime."""
    if requested not in BACKENDS:
        raise ValueError(f"--backend={requested!r}: must be one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested
    from importlib.util import find_spec

    if find_spec("tensorrt") is None:  # cheap: importing export.tensorrt_build imports torch
        return "onnxruntime"
    import torch

    return "tensorrt" if torch.cuda.is_available() else "onnxruntime"


def up_to_date(
    out: Path, source_hash: str, backend: str, precision: str, options: dict
) -> dict | None:
    """The existing manifest if it describes this very build, else None."""
    path = out / MANIFEST
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    same = (
        m.get("source", {}).get("sha256") == source_hash
        and m.get("backend") == backend
        and m.get("precision") == precision
        and m.get("versions") == tool_versions()
        and m.get("options") == options
    )
    files_there = all((out / f).exists() for f in m.get("files", {}).values())
    return m if same and files_there else None


def _io_spec(cfg) -> dict:
    from export import contract

    fixed = contract.static_axes(cfg)

    def spec(table: dict) -> dict:
        return {
            n: {"dtype": d, "shape": [fixed.get(a, a) for a in axes]}
            for n, (d, axes) in table.items()
        }

    return {"inputs": spec(contract.INPUTS), "outputs": spec(contract.OUTPUTS)}


def build(
    model_dir: str | Path,
    out_dir: str | Path,
    backend: str = "auto",
    precision: str = "auto",
    force: bool = False,
    threads: int = 0,
    max_batch: int = 16,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the steps of the module doc; returns the manifest (raises ParityError on failure)."""
    model_dir, out = Path(model_dir), Path(out_dir)
    from dlm import engines

    gemma = engines.is_gemma(model_dir)
    if gemma:  # DiffusionGemma: two ONNX Runtime graphs (export/gemma_onnx.py), no TensorRT yet
        if backend == "tensorrt" or precision not in ("auto", "fp32"):
            raise ValueError(
                f"--backend={backend} --precision={precision}: DiffusionGemma builds for "
                "onnxruntime (auto) or torch, in fp32"
            )
        backend = "onnxruntime" if backend == "auto" else backend
    backend = resolve_backend(backend)
    allowed = {"onnxruntime": ORT_PRECISIONS, "torch": ("auto", "fp32")}.get(backend)
    if allowed is not None and precision not in allowed:
        raise ValueError(
            f"--precision={precision}: the {backend} backend runs {' | '.join(allowed)}"
        )
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def done(step: str, msg: str) -> None:
        nonlocal clock
        timings[step] = round(time.perf_counter() - clock, 3)
        log(f"[{step}] {msg} ({timings[step]:.1f} s)")
        clock = time.perf_counter()

    source_hash = checkpoint_hash(model_dir)
    trt_precision = None
    if backend == "tensorrt":
        import torch

        from export.tensorrt_build import choose_precision, require_tensorrt

        require_tensorrt()
        trt_precision = choose_precision(precision, torch.cuda.get_device_capability())
    resolved_precision = trt_precision or ("int8" if precision == "int8" else "fp32")
    options = {"max_batch": max_batch} if backend == "tensorrt" else {}
    if not force:
        manifest = up_to_date(out, source_hash, backend, resolved_precision, options)
        if manifest is not None:
            log(
                f"[skip] {out / MANIFEST} is up to date (checkpoint sha256 {source_hash[:12]}, "
                f"exporter {export.EXPORTER_VERSION}, backend {backend}): nothing to do"
            )
            return manifest
    from dlm import checkpoint, cost
    from dlm.gemma import checkpoint as gemma_checkpoint
    from export import onnx_export

    cfg, model = gemma_checkpoint.load(model_dir) if gemma else (None, checkpoint.load(model_dir))
    cfg = cfg or model.cfg
    params = sum(p.numel() for p in model.parameters())
    done(
        "load", f"{model_dir}: {cfg.family}, {params / 1e6:.2f} M params, sha256 {source_hash[:12]}"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-done build must not look finished
    (out / cost.FILE).unlink(missing_ok=True)  # a new engine's pass times are measured anew
    manifest: dict = {
        "format": 1,
        "backend": backend,
        "loader": LOADERS[backend],  # what dlm.engines.load_engine calls to load it
        "precision": resolved_precision,
        "source": {
            "path": str(model_dir.resolve()),
            "sha256": source_hash,
            "files": [f.name for f in checkpoint_files(model_dir)],
        },
        "versions": tool_versions(),
        "options": options,
        "config": cfg.to_dict(),
        "io": {} if gemma else _io_spec(cfg),
        "files": {},
    }
    if backend != "torch" and gemma:
        from export import gemma_ort

        manifest["parity"] = gemma_ort.export_checked(model, out, threads, log)
        manifest["files"] = dict(GEMMA_FILES)
        done("export", f"{', '.join(GEMMA_FILES.values())}, checked against PyTorch")
    elif backend != "torch":
        graph = onnx_export.export_denoiser(
            model, out / ONNX_FILE, parity_path=out / PARITY_ONNX_FILE
        )
        manifest["opset"] = onnx_export.opset_of(graph)
        manifest["files"]["onnx"] = ONNX_FILE
        done(
            "export",
            f"{out / ONNX_FILE}: {len(graph.graph.node)} nodes, opset {manifest['opset']}, "
            f"weights in {onnx_export.data_path(ONNX_FILE)}; onnx.checker + I/O contract + "
            "ONNX Runtime run",
        )
        manifest["parity"] = check_parity(
            model, model_dir, out / PARITY_ONNX_FILE, out / ONNX_FILE, threads, log
        )
        done(
            "parity",
            "PyTorch vs ONNX Runtime: logits max abs diff "
            f"{manifest['parity']['pass']['logits_max_abs_diff']:.2e}, tokens identical "
            "in every mode at temperature 0",
        )
    if resolved_precision == "int8":
        from export import quantize

        onnx_export.save(quantize.per_row_int8(graph, out), out / ONNX_INT8_FILE)
        manifest["files"]["onnx"] = ONNX_INT8_FILE  # what the loader runs
        manifest["files"]["onnx_fp32"] = ONNX_FILE
        manifest["parity"]["int8"] = check_int8(out, cfg, model_dir, threads, log)
        done("int8", f"{out / ONNX_INT8_FILE} (per-row int8, export/quantize.py)")
    if backend == "tensorrt":
        from export import tensorrt_build

        manifest.update(
            tensorrt_build.build_from_model(model, out, trt_precision, log, max_batch=max_batch)
        )
        manifest["files"].update({"trt_onnx": TRT_ONNX_FILE, "plan": PLAN_FILE})
        done("tensorrt", f"{out / PLAN_FILE} ({trt_precision})")
    manifest["timings"] = timings
    manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(
        f"[done] {out / MANIFEST}: backend {backend}, precision {resolved_precision}, "
        f"{sum(timings.values()):.1f} s"
    )
    if "auto" not in cfg.modes:
        return manifest
    # The engine's pass times on this machine (mode=auto's cost model), cached beside it; the
    # server measures them again on another machine.
    from dlm.sampling import blocks

    model = cost.load_or_measure(engines.load_engine(model_dir, out, threads=threads), out)
    log(f"[cost] pass times (ms) on {model.machine}, {model.context} cached positions:")
    log(model.table())
    # the block a self_spec / diffusion request gets when it names none, from those pass times
    chosen = blocks.block_lengths(model, cfg.block_length)
    fork = blocks.self_spec_forks(model, chosen["self_spec"])
    manifest["defaults"] = {"block_length": chosen, "self_spec_fork": fork}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    said = ", ".join(f"{m} {b}" for m, b in chosen.items())
    log(
        f"[defaults] block_length {said} (trained block {cfg.block_length}), self_spec rounds "
        f"{'fork' if fork else 'do not fork'} (dlm.sampling.blocks)"
    )
    return manifest


def check_parity(
    model,
    model_dir: Path,
    parity_path: Path,
    onnx_path: Path,
    threads: int,
    log: Callable[[str], None],
) -> dict:
    """Pass and generation parity (export/parity.py); raises ParityError with the figures."""
    from dlm.engine import TorchEngine
    from export import parity
    from export.ort_engine import OrtEngine, ort_session

    session = ort_session(parity_path, threads)
    names = [o.name for o in session.get_outputs()]
    passes = parity.pass_parity(
        model, lambda feed: dict(zip(names, session.run(names, feed), strict=True))
    )
    for line in parity.format_pass_parity(passes):
        log(line)
    if not passes["ok"]:
        raise ParityError(
            "PyTorch vs ONNX Runtime logits/tokens differ beyond tolerance:\n"
            + "\n".join(parity.format_pass_parity(passes))
        )
    cfg = model.cfg
    prompts = parity.parity_prompts(cfg, _tokenizer(model_dir))
    max_tokens = GEN_MAX_TOKENS_BLOCKS * cfg.block_length
    reference, engine = TorchEngine(model), OrtEngine(onnx_path, cfg, threads=threads)
    gen = parity.generation_parity(reference, engine, prompts, max_tokens, temperature=0.0)
    log("  generations at temperature 0:")
    for line in parity.format_generation_parity(gen):
        log(line)
    if not gen["ok"]:
        raise ParityError(
            "PyTorch vs ONNX Runtime generations differ at temperature 0:\n"
            + "\n".join(parity.format_generation_parity(gen))
        )
    return {"pass": passes, "generation": gen}


def check_int8(out: Path, cfg, model_dir: Path, threads: int, log: Callable[[str], None]) -> dict:
    """The int8 graph's generations, reported (int8 rounds the logits, so neither is required
    to be exact): every setting's greedy agreement with the fp32 graph, and self_spec's with ar
    within int8 (see export/quantize.py for why it is close to, not always, 1)."""
    from export import parity
    from export.ort_engine import OrtEngine

    prompts = parity.parity_prompts(cfg, _tokenizer(model_dir))
    max_tokens = GEN_MAX_TOKENS_BLOCKS * cfg.block_length
    fp32 = OrtEngine(out / ONNX_FILE, cfg, threads=threads)
    int8 = OrtEngine(out / ONNX_INT8_FILE, cfg, threads=threads)
    gen = parity.generation_parity(fp32, int8, prompts, max_tokens, temperature=0.0)
    agreement = {name: m["agreement"] for name, m in gen["modes"].items()}
    log(f"  int8 vs fp32, greedy token agreement per setting: {agreement}")
    spec = parity.lossless(int8, prompts, max_tokens)
    log(f"  int8 self_spec vs int8 ar: agreement {spec['agreement']}")
    return {"agreement_with_fp32": agreement, "self_spec_vs_ar": spec}


def _tokenizer(model_dir: Path):
    if not (model_dir / "tokenizer.json").exists():
        return None
    from dlm.tokenizer import TextTokenizer

    return TextTokenizer(model_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="checkpoint folder (config.json + safetensors)")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument(
        "--out", default=None, help="engine folder (default: build/engines/<model>-<path hash>)"
    )
    p.add_argument(
        "--precision",
        default="auto",
        help="TensorRT: auto | fp32 | bf16 | fp16; ONNX Runtime: auto (fp32) | fp32 | int8",
    )
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = per core)")
    p.add_argument("--max-batch", type=int, default=16, help="TensorRT: largest batch per call")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = p.parse_args(argv)
    out = args.out or export.engine_dir(args.model)
    try:
        build(
            args.model, out, args.backend, args.precision, args.force, args.threads, args.max_batch
        )
    except (ParityError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
