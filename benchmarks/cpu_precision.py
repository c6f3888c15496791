"""The CPU engine's precisions side by side: ONNX Runtime fp32 (the default), ONNX Runtime in
per-row int8 (export/quantize.py) and the PyTorch engine in bf16, same model, same machine,
one run.

    python -m benchmarks.cpu_precision [--model models/default]     (make bench-cpu-precision)

1. one pass over 128 cached positions at 1, 8, 32 and 64 tokens (median of --iters, the engines
   alternating), against the time it takes to read the graph's weights once at the memory
   bandwidth measured here (a large copy): the floor of a pass; ratios against ORT fp32;
2. tokens/s per mode on held-out prompts (64 tokens, greedy, batch 1, alternating), each mode at
   the block the fp32 build serves it with (`dlm.engines.served_defaults`), with tokens per
   forward and whether self_spec still equals ar.
Both builds must exist: `make bench-cpu-precision` makes them (`make engine`, and `make engine
PRECISION=int8` into its own folder). A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnx

from dlm import engines
from dlm.engine import PassRequest
from dlm.sampling import GenerationRequest, generate
from dlm.tokenizer import TextTokenizer
from dlm.train.prompts import held_out_prompts

TOKENS = (1, 8, 32, 64)
CACHED = 128
MODES = ("ar", "self_spec", "diffusion")


def build_weight_bytes(build: Path) -> int:
    """Bytes of a build's graph initializers (what a pass reads once)."""
    graph = onnx.load(build / engines.read_manifest(build)["files"]["onnx"])
    return sum(onnx.numpy_helper.to_array(i).nbytes for i in graph.graph.initializer)


def model_weight_bytes(engine) -> int:
    return sum(p.numel() * p.element_size() for p in engine.model.parameters())


def copy_bandwidth(mib: int = 512) -> float:
    """Bytes/s a large copy moves, read plus write: what the memory gives here."""
    src = np.ones(mib << 20, np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def pass_ms(engine, tokens: int, iters: int) -> float:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        engine.step(
            [PassRequest(1, CACHED, [7] * tokens, tokens if tokens > 1 else 0, False, tokens)]
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_precision", description=__doc__)
    p.add_argument("--model", default="models/default")
    p.add_argument("--fp32", default=None, help="the fp32 build (default: the model's)")
    p.add_argument("--int8", required=True, help="the int8 build (make engine PRECISION=int8)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--prompts", type=int, default=8)
    args = p.parse_args(argv)
    from export import engine_dir

    fp32, int8 = Path(args.fp32 or engine_dir(args.model)), Path(args.int8)
    eng = {
        "ORT fp32": engines.load_engine(args.model, fp32, threads=args.threads),
        "ORT int8": engines.load_engine(args.model, int8, threads=args.threads),
        "PyTorch bf16": engines.load_engine(args.model, threads=args.threads, dtype="bf16"),
    }
    weights = {
        "ORT fp32": build_weight_bytes(fp32),
        "ORT int8": build_weight_bytes(int8),
        "PyTorch bf16": model_weight_bytes(eng["PyTorch bf16"]),
    }
    base = "ORT fp32"  # the default CPU engine: every ratio is against it
    for e in eng.values():
        e.step([PassRequest(1, 0, list(range(5, 5 + CACHED)), 0, True, 1)])  # the cached prefix
    bandwidth = copy_bandwidth()
    print(f"# CPU precisions: {args.model}, {args.threads} threads")
    print(f"memory bandwidth (a 512 MiB copy, read + write): {bandwidth / 1e9:.1f} GB/s\n")
    print("## one pass over 128 cached positions (ms, median)")
    print("| engine | weights | weight read | " + " | ".join(f"{t} tok" for t in TOKENS), end="")
    print(" | 1 tok / weight read | 32 tok / 1 tok |")
    print("|---|---|---|" + "---|" * len(TOKENS) + "---|---|")
    times = {k: {t: [] for t in TOKENS} for k in eng}
    for r in range(3):  # alternate the engines: a drifting machine weighs on all of them
        for k in list(eng) if r % 2 == 0 else reversed(eng):
            for t in TOKENS:
                times[k][t].append(pass_ms(eng[k], t, args.iters))
    ms = {k: {t: statistics.median(v) for t, v in row.items()} for k, row in times.items()}
    for k in eng:
        floor = weights[k] / bandwidth * 1e3
        cells = " | ".join(f"{ms[k][t]:.2f}" for t in TOKENS)
        print(
            f"| {k} | {weights[k] / 1e6:.1f} MB | {floor:.2f} | {cells} | "
            f"{ms[k][1] / floor:.2f} | {ms[k][32] / ms[k][1]:.2f} |"
        )
    for k in list(eng)[1:]:
        ratio = " | ".join(f"{ms[base][t] / ms[k][t]:.2f}" for t in TOKENS)
        print(f"| speed-up of {k} | | | {ratio} | | |")

    tok = TextTokenizer(args.model)
    prompts = [tok.encode(x.prompt) for x in held_out_prompts(args.prompts)]
    blocks = engines.served_defaults(args.model, fp32).get("block_lengths", {})
    print(f"\n## tokens/s per mode ({args.prompts} held-out prompts, 64 tokens, batch 1, ", end="")
    print(f"served blocks {blocks or 'the trained block'})")
    print("| mode | " + " | ".join(f"{k} tok/s (x {base})" for k in eng), end="")
    print(" | tokens per forward |")
    print("|---|" + "---|" * len(eng) + "---|")
    outputs: dict[tuple[str, str], list[list[int]]] = {}
    for mode in MODES:
        stats = {}
        for k in eng:
            t0, runs = time.perf_counter(), []
            for x in prompts:
                block = {"block_length": blocks[mode]} if mode in blocks else {}
                request = GenerationRequest(list(x), mode=mode, max_tokens=64, **block)
                runs += generate(eng[k], [request])
            seconds = time.perf_counter() - t0
            n, f = sum(r.num_output_tokens for r in runs), sum(r.num_forward_passes for r in runs)
            stats[k] = (n / seconds, n / f)
            outputs[k, mode] = [r.token_ids for r in runs]
        cells = " | ".join(f"{v:.1f} ({v / stats[base][0]:.2f})" for v, _ in stats.values())
        tpf = " / ".join(f"{t:.2f}" for _, t in stats.values())
        print(f"| {mode} | {cells} | {tpf} |")
    for k in eng:
        print(f"{k}: self_spec == ar: {outputs[k, 'self_spec'] == outputs[k, 'ar']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
