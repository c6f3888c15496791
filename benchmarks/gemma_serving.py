"""DiffusionGemma served through Triton against transformers' `generate` in process.

    python -m benchmarks.gemma_serving            # make bench-gemma

One run, one random checkpoint in transformers' layout (`benchmarks.gemma_reference`, the
default model's tokenizer), the same prompts and knobs on both sides:
1. same tokens: our canvas policy in process against `generate` drawing our draws, per prompt;
2. tokens/s at concurrency 1 (one request after another) and 8 (ours: 8 client threads against
   the real tritonserver; transformers: `generate` over batches of 8, left-padded), each side
   with its own sampler and the same CPU threads. Not a test: nothing is asserted; absolute
   times count only on the machine named in the output.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.gemma_reference import build_reference, generate_kwargs, reference_generate
from benchmarks.serving_overhead import PROMPTS, through_triton
from dlm.pipeline import DEFAULT_MODEL, Pipeline

# A small DiffusionGemma (transformers' text_config names): 3 sliding layers and a global one.
SHAPE = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    layer_types=["sliding_attention"] * 3 + ["full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    global_head_dim=128,
    num_global_key_value_heads=1,
    sliding_window=128,
    num_experts=4,
    top_k_experts=2,
    moe_intermediate_size=256,
    max_position_embeddings=4096,
)
CANVAS = 32
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def checkpoint(out: Path):
    """The random reference (saved to `out`, with the default model's tokenizer)."""
    from dlm.engines import model_config
    from dlm.tokenizer import TextTokenizer

    tok, cfg = TextTokenizer(DEFAULT_MODEL), model_config(DEFAULT_MODEL)
    ids = {k: getattr(cfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    ref = build_reference(
        out,
        seed=0,
        self_conditioning=0.1,  # as tests/dlm/test_gemma_generate.py: float rounding stays put
        canvas_length=CANVAS,
        attention="sdpa",  # its fastest on the CPU (and its eager masks fail on padded batches)
        vocab_size=tok.vocab_size,
        **SHAPE,
        **ids,
    )
    for name in TOKENIZER_FILES:
        if (DEFAULT_MODEL / name).exists():
            shutil.copy(DEFAULT_MODEL / name, out / name)
    return ref


def reference_throughput(ref, requests, batch: int) -> tuple[int, float]:
    """(tokens, seconds) of `generate` over `requests` in batches (its own sampler)."""
    eos, pad = ref.config.text_config.eos_token_id, ref.config.text_config.pad_token_id
    tokens, t0 = 0, time.perf_counter()
    for i in range(0, len(requests), batch):
        group = requests[i : i + batch]
        width = max(len(r.prompt_ids) for r in group)
        ids = torch.full((len(group), width), pad)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, r in enumerate(group):  # left padding
            ids[row, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[row, width - len(r.prompt_ids) :] = 1
        with torch.no_grad():
            out = ref.generate(ids, attention_mask=mask, **generate_kwargs(group[0], eos))
        for row, r in enumerate(group):
            new = out.sequences[row, width:].tolist()[: r.max_tokens]
            tokens += new.index(eos) if eos in new else len(new)
    return tokens, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gemma_serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--max-tokens", type=int, default=2 * CANVAS)
    p.add_argument("--steps", type=int, default=16, help="max_denoising_steps")
    p.add_argument("--threads", type=int, default=2, help="CPU threads, both sides")
    p.add_argument("--requests", type=int, default=16, help="requests per concurrency point")
    args = p.parse_args(argv)

    from model_repository.local_server import LocalServer

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="dlm-gemma-bench-"))
    folder = work / "checkpoint"
    ref = checkpoint(folder)
    pipe = Pipeline.load(folder)
    knobs = dict(max_tokens=args.max_tokens, max_denoising_steps=args.steps)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    params = sum(t.numel() for t in pipe.engine.runner.model.parameters())
    print(
        f"# DiffusionGemma, served vs transformers' generate: random weights, {params / 1e6:.1f} M "
        f"params, canvas {CANVAS}, {platform.node()}, {os.cpu_count()} CPUs, {args.threads} "
        f"threads a side, max_tokens {args.max_tokens}, max_denoising_steps {args.steps}"
    )
    same = 0
    for i, prompt in enumerate(PROMPTS):
        req = pipe.request(prompt, seed=i, **knobs)
        ours = pipe.generate([req])[0].token_ids
        same += ours == reference_generate(ref, req)[0]
    print(f"\nsame tokens as transformers given the same draws: {same} / {len(PROMPTS)} prompts")

    args_fill = ["--backend", "torch", "--threads", str(args.threads)]
    with LocalServer(folder, work / "triton", args_fill) as server:
        url = f"127.0.0.1:{server.grpc}"
        through_triton(url, [(PROMPTS[0], dict(knobs, max_tokens=4))], 1)  # warm up
        print("\n| concurrency | transformers tok/s | Triton tok/s | Triton / transformers |")
        print("|---|---|---|---|")
        for n in (1, 8):
            requests = [pipe.request(q, seed=i, **knobs) for i, q in enumerate(prompts)]
            tok_a, sec_a = reference_throughput(ref, requests, n)
            jobs = [(q, dict(knobs, random_seed=i)) for i, q in enumerate(prompts)]
            tok_b, sec_b = through_triton(url, jobs, n)
            a, b = tok_a / sec_a, tok_b / sec_b
            print(
                f"| {n} | {a:.1f} ({tok_a} tokens) | {b:.1f} ({tok_b}) | {b / a:.2f} |", flush=True
            )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
