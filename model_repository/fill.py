"""Fill `templates/` into a Triton model repository, strictly.

Every `${KEY}` in a `config.pbtxt` must be given a value, and every value given must be used by
some template: a typo is an error, not a silently unfilled field or an ignored setting. Other
files (`1/model.py`) are copied as they are; a model without a version folder gets an empty `1/`.

    python -m model_repository.fill --model models/default --out build/model_repository
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from dlm import schema
from dlm.engines import DTYPES
from export import engine_dir

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPO_ROOT = Path(__file__).resolve().parent.parent
KEY = re.compile(r"\$\{([^}]*)\}")
DEVICE = re.compile(r"cpu|cuda(:\d+)?")
CACHES = ("full", "prefix", "none")  # dlm.sampling.diffusion.CACHES; fill stays torch-free


class FillError(ValueError):
    """A template key without a value, or a value no template uses."""


def fill_text(text: str, values: dict[str, str], where: str) -> tuple[str, set[str]]:
    """`text` with every ${KEY} replaced; returns it and the keys used."""
    used: set[str] = set()

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise FillError(f"{where}: ${{{key}}} has no value (given: {sorted(values)})")
        used.add(key)
        return str(values[key])

    return KEY.sub(sub, text), used


def fill(out: str | Path, values: dict[str, str], templates: str | Path = TEMPLATES) -> Path:
    """Write the filled repository to `out` (replacing it); returns `out`."""
    templates, out = Path(templates), Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    used: set[str] = set()
    for src in sorted(templates.rglob("*")):
        if "__pycache__" in src.parts or src.is_dir():
            continue
        dst = tmp / src.relative_to(templates)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.name == "config.pbtxt":
            text, keys = fill_text(src.read_text(), values, str(src.relative_to(templates)))
            dst.write_text(text)
            used |= keys
        else:
            shutil.copy2(src, dst)
    for model in tmp.iterdir():
        (model / "1").mkdir(exist_ok=True)
    unused = sorted(set(values) - used)
    if unused:
        shutil.rmtree(tmp)
        raise FillError(f"values no template uses: {unused}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def positive(name: str, value) -> str:
    if not str(value).isdigit() or int(value) < 1:
        raise FillError(f"{name}={value!r}: must be a positive integer")
    return str(int(value))


def values_from_args(args: argparse.Namespace) -> dict[str, str]:
    """Template values from the `make serve` settings, checked."""
    model = Path(args.model).resolve()
    for name in ("config.json", "tokenizer.json"):
        if not (model / name).exists():
            raise FillError(f"MODEL={args.model}: no {name} (a checkpoint folder is needed)")
    if args.backend not in ("auto", "torch"):
        raise FillError(f"BACKEND={args.backend!r}: must be auto or torch")
    if not DEVICE.fullmatch(args.device):
        raise FillError(f"DEVICE={args.device!r}: must be cpu, cuda or cuda:N")
    if args.dtype not in DTYPES:
        raise FillError(f"DTYPE={args.dtype!r}: must be one of {', '.join(DTYPES)}")
    if args.diffusion_cache not in CACHES:
        raise FillError(
            f"DIFFUSION_CACHE={args.diffusion_cache!r}: must be one of {', '.join(CACHES)}"
        )
    return {
        "MODEL_DIR": str(model),
        "ENGINE_DIR": str(Path(args.engine or engine_dir(model)).resolve()),
        "BACKEND": args.backend,
        "DEVICE": args.device,
        "DTYPE": args.dtype,
        "REPO_ROOT": str(Path(args.repo_root).resolve()),
        "MAX_BATCH_SIZE": positive("MAX_BATCH_SIZE", args.max_batch_size),
        "MAX_PASSES_PER_STEP": positive("MAX_PASSES_PER_STEP", args.max_passes_per_step),
        "DLM_INSTANCES": positive("DLM_INSTANCES", args.dlm_instances),
        # cuda: one instance per GPU (Triton's KIND_GPU); cuda:N: on GPU N only.
        "DLM_KIND": "KIND_CPU" if args.device == "cpu" else "KIND_GPU",
        "DLM_GPUS": f" gpus: [ {args.device[5:]} ]" if args.device.startswith("cuda:") else "",
        "PRE_INSTANCES": positive("PRE_INSTANCES", args.pre_instances),
        "THREADS": str(int(args.threads)),
        "HEARTBEAT_MS": str(max(0, int(args.heartbeat_ms))),
        "STREAM_INTERVAL_MS": str(max(0, int(args.stream_interval_ms))),
        "CANCEL_CHECK_MS": str(max(0, int(args.cancel_check_ms))),
        "PASS_DELAY_MS": str(max(0, int(args.pass_delay_ms))),
        "KV_BUDGET_TOKENS": positive("KV_BUDGET_TOKENS", args.kv_budget_tokens),
        "MAX_PROMPT_TOKENS": positive("MAX_PROMPT_TOKENS", args.max_prompt_tokens),
        "MAX_OUTPUT_TOKENS": positive("MAX_OUTPUT_TOKENS", args.max_output_tokens),
        "MAX_QUEUED": positive("MAX_QUEUED", args.max_queued),
        "CHAT_TEMPLATE": "true" if args.chat_template else "false",
        "DIFFUSION_CACHE": args.diffusion_cache,
        "REQUEST_INPUTS": schema.pbtxt_inputs(),
        "REQUEST_INPUT_MAP": schema.pbtxt_input_map(),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model_repository.fill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="checkpoint folder (config.json, tokenizer)")
    p.add_argument(
        "--engine", default=None, help="export's build folder (default: build/engines/<model>-...)"
    )
    p.add_argument("--backend", default="auto", help="auto (export's engine if built) | torch")
    p.add_argument(
        "--device",
        default="cpu",
        help="where dlm's engine runs: cpu (KIND_CPU) | cuda (KIND_GPU, an instance per GPU) | "
        "cuda:N (GPU N); the build's ONNX Runtime engine runs on the CPU, TensorRT on the GPU",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        help="the PyTorch engine's weights and KV: auto (bf16 on a GPU, fp32 on the CPU) | fp32 | "
        "bf16 | fp16; a build runs the precision it was built with (make engine PRECISION=...)",
    )
    p.add_argument("--out", default="build/model_repository")
    p.add_argument("--repo-root", default=str(REPO_ROOT), help="put on sys.path by the models")
    p.add_argument("--max-batch-size", default=64, help="Triton max_batch_size of the ensemble")
    p.add_argument(
        "--max-passes-per-step",
        default=64,
        help="most passes in one engine step (requests beyond it wait)",
    )
    p.add_argument(
        "--heartbeat-ms",
        default=100,
        help="a request silent this long passes through postprocessing, which is "
        "where a client's cancellation shows (0: every pass)",
    )
    p.add_argument(
        "--stream-interval-ms",
        default=50,
        help="a text stream's responses at most this often: the tokens committed meanwhile "
        "go in one (each response is work for the server's other processes; block views "
        "stream every pass; 0: a response whenever tokens were committed)",
    )
    p.add_argument(
        "--kv-budget-tokens",
        default=65536,
        help="most cached positions over the requests in flight of one dlm instance "
        "(each needs prompt + max_tokens + one block); the others wait",
    )
    p.add_argument(
        "--max-prompt-tokens",
        default=schema.Limits.max_prompt_tokens,
        help="longest prompt a request may send, in tokens (longer: an error naming the limit)",
    )
    p.add_argument(
        "--max-output-tokens",
        default=schema.Limits.max_output_tokens,
        help="largest max_tokens a request may ask for",
    )
    p.add_argument(
        "--max-queued",
        default=256,
        help="most requests waiting for KV memory; beyond it a request gets a busy error",
    )
    p.add_argument(
        "--cancel-check-ms",
        default=50,
        help="how often dlm asks Triton whether a request sent to it directly was cancelled "
        "(an IPC per request; 0: before every pass); ensemble cancellations arrive at once",
    )
    p.add_argument(
        "--pass-delay-ms",
        default=0,
        help="fault injection for tests: hold every engine pass this long, so that a request "
        "is in flight by construction (cancellation, stub kills, shutdown); 0 when serving",
    )
    p.add_argument("--dlm-instances", default=1)
    p.add_argument("--pre-instances", default=1)
    p.add_argument(
        "--threads",
        default=0,
        help="engine threads, torch or ONNX Runtime (0: their default)",
    )
    p.add_argument(
        "--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template"
    )
    p.add_argument(
        "--diffusion-cache",
        default="full",
        help="how diffusion keeps its context: full (ours); prefix (Fast-dLLM style) or none "
        "(the LLaDA reference) serve the reference samplers for benchmarks",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        out = fill(args.out, values_from_args(args))
    except FillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model repository: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
