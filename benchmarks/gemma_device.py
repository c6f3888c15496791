"""DiffusionGemma's engine on one device: step times and tokens/s of the canvas policy.

    python -m benchmarks.gemma_device --device cuda          # scripts/device_run.sh gemma
    python -m benchmarks.gemma_device --device cpu --shape tiny

A random model (no transformers needed: `dlm.gemma` builds it from a `GemmaConfig`) in the
PyTorch engine (bf16 on a GPU, fp32 on the CPU): the time of an encode pass over the prompt, of
one canvas step at batch 1 and `--batch` over that cache, and tokens/s of whole requests at
concurrency 1 and `--batch` (one scheduler, every request in flight). Not a test: nothing is
asserted; absolute times count only on the device named in the output.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from dlm.engines import TORCH_DTYPES, torch_dtype
from dlm.gemma.config import AttentionKind, GemmaConfig
from dlm.gemma.engine import GemmaEngine
from dlm.gemma.model import DiffusionGemma
from dlm.sampling import GenerationRequest, Limits
from dlm.sampling import generate as generate_all

SHAPES = {
    # a scaled-down 26B-A4B: five sliding layers to one global, 32 experts (top 4)
    "small": dict(hidden=1024, layers=6, heads=8, experts=32, top_k=4, vocab=32_768, canvas=64),
    "tiny": dict(hidden=128, layers=3, heads=4, experts=4, top_k=2, vocab=4_096, canvas=32),
}


def config(shape: str) -> GemmaConfig:
    s = SHAPES[shape]
    h, layers = s["hidden"], s["layers"]
    return GemmaConfig(
        vocab_size=s["vocab"],
        hidden_size=h,
        intermediate_size=2 * h,
        num_heads=s["heads"],
        layer_kinds=("sliding",) * (layers - 1) + ("full",),
        sliding=AttentionKind(head_dim=h // s["heads"], num_kv_heads=2, rope_theta=1e4),
        full=AttentionKind(
            head_dim=2 * h // s["heads"], num_kv_heads=1, rope_theta=1e6, rope_fraction=0.25
        ),
        sliding_window=512,
        num_experts=s["experts"],
        top_k_experts=s["top_k"],
        moe_intermediate_size=h // 2,
        canvas_length=s["canvas"],
        max_position=8192,
    ).validate()


def timed(fn, device: str, repeats: int = 3) -> float:
    """The fastest of `repeats` runs of fn(), in seconds (synchronised on a GPU)."""
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gemma_device", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU) | fp32 | bf16 | fp16")
    p.add_argument("--context", type=int, default=1024, help="prompt tokens (the cache)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=16, help="max_denoising_steps")
    args = p.parse_args(argv)
    cfg = config(args.shape)
    name = torch_dtype(args.dtype, args.device)
    torch.manual_seed(0)
    model = DiffusionGemma(cfg)
    with torch.no_grad():
        for t in model.parameters():
            t.normal_(0, t.shape[-1] ** -0.5) if t.ndim > 1 else t.fill_(1.0)
    engine = GemmaEngine.torch(model, args.device, getattr(torch, TORCH_DTYPES[name]))
    params = sum(t.numel() for t in model.parameters())
    where = (
        torch.cuda.get_device_name()
        if args.device != "cpu"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"# DiffusionGemma engine, random {args.shape} shape ({params / 1e6:.0f} M params, "
        f"{cfg.num_experts} experts top {cfg.top_k_experts}, canvas {cfg.canvas_length}), "
        f"{name} on {where}; context {args.context}"
    )
    g = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(0, cfg.vocab_size, (args.context,), generator=g).tolist()
        for _ in range(args.batch)
    ]

    limits = Limits(max_prompt_tokens=args.context, max_output_tokens=max(args.max_tokens, 1))

    def generate(engine, requests):
        return generate_all(engine, requests, limits)

    def request(i: int, max_tokens: int, steps: int) -> GenerationRequest:
        return GenerationRequest(
            prompts[i], max_tokens=max_tokens, max_denoising_steps=steps, seed=i
        )

    # One canvas step over a cache of `context`, at 1 and `batch` rows: requests of one canvas
    # and one step, minus the encode pass, timed separately.
    encode = timed(lambda: generate(engine, [request(0, 1, 1)]), args.device)
    print("\n| what | rows | ms |\n|---|---|---|")
    print(f"| encode {args.context} tokens + 1 canvas step | 1 | {encode * 1e3:.1f} |")
    for rows in (1, args.batch):
        one = timed(
            lambda r=rows: generate(engine, [request(i, 1, 1) for i in range(r)]), args.device
        )
        two = timed(
            lambda r=rows: generate(engine, [request(i, 1, 2) for i in range(r)]), args.device
        )
        print(f"| canvas step ({cfg.canvas_length} tokens) | {rows} | {(two - one) * 1e3:.1f} |")
    print(f"\n| concurrency | tokens/s ({args.max_tokens} tokens, {args.steps} steps) |")
    print("|---|---|")
    for rows in (1, args.batch):
        requests = [request(i, args.max_tokens, args.steps) for i in range(rows)]
        t0 = time.perf_counter()
        out = generate(engine, requests)
        if args.device != "cpu":
            torch.cuda.synchronize()
        tokens = sum(r.num_output_tokens for r in out)
        print(f"| {rows} | {tokens / (time.perf_counter() - t0):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
