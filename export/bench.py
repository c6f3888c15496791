"""ONNX Runtime engine pass vs PyTorch engine pass, side by side, one run (not a test).

    python -m export.bench --model models/default [--onnx build/engine/denoiser.onnx]
    python -m export.bench --preset default          # random weights of the default's shape

Each sequence first prefills `--past` cached tokens; then both engines time the same denoise
pass (one block of `--block` tokens, block-bidirectional, reading the cache without writing it)
at batch 1 and 8, alternating engine by engine in rounds so both see the same machine load.
Also timed: the raw ONNX Runtime call with `run()` and with IO binding on the same inputs (the
reason `OrtEngine` uses plain `run()`). CPU figures: absolute times count only on a GPU
(DESIGN.md), the ratio is the point. Give `--torch-threads 1 --threads 1` on a machine whose
cores other processes share: multi-threaded torch was seen 6x slower there (oversubscription),
which says more about the machine than about the engines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dlm import checkpoint
from dlm.config import preset
from dlm.engine import PassRequest, TorchEngine, pack_batch
from dlm.model import DiffusionLM
from export.onnx_export import export_denoiser
from export.ort_engine import OrtEngine


def denoise_passes(batch: int, past: int, block: int, mask: int) -> list[PassRequest]:
    return [
        PassRequest(i, past, [5] + [mask] * (block - 1), tail=block, write=False, n_out=block)
        for i in range(batch)
    ]


def prefill(engine, batch: int, past: int, vocab: int) -> None:
    rng = np.random.default_rng(0)
    engine.step(
        [
            PassRequest(i, 0, rng.integers(4, vocab, past).tolist(), tail=0, write=True, n_out=1)
            for i in range(batch)
        ]
    )


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def io_binding_run(engine: OrtEngine, feed: dict[str, np.ndarray]):
    """One raw call through IO binding (inputs bound as CPU arrays, outputs allocated by ORT)."""
    binding = engine.session.io_binding()
    for name, arr in feed.items():
        binding.bind_cpu_input(name, arr)
    for out in engine.session.get_outputs():
        binding.bind_output(out.name)
    engine.session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def bench(
    model: DiffusionLM,
    onnx_path: Path,
    batches: list[int],
    past: int,
    block: int,
    rounds: int,
    threads: int,
) -> list[dict]:
    cfg = model.cfg
    torch_engine, ort_engine = TorchEngine(model), OrtEngine(onnx_path, cfg, threads=threads)
    rows = []
    for b in batches:
        for e in (torch_engine, ort_engine):
            prefill(e, b, past, cfg.vocab_size)
        passes = denoise_passes(b, past, block, cfg.mask_token_id)
        feed = pack_batch(passes, [past] * b)
        feed["past_k"], feed["past_v"] = ort_engine.kv.gather(list(range(b)), [past] * b)
        runs = {
            "torch engine": lambda p=passes: torch_engine.step(p),
            "onnxruntime engine": lambda p=passes: ort_engine.step(p),
            "onnxruntime run()": lambda f=feed: ort_engine.run(f),
            "onnxruntime io binding": lambda f=feed: io_binding_run(ort_engine, f),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(rounds):
            for name, fn in runs.items():
                times[name].append(timed(fn))
        ref = statistics.median(times["torch engine"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append(
                {
                    "engine": name,
                    "batch": b,
                    "median_ms": med,
                    "p90_ms": float(np.percentile(ts, 90)),
                    "tokens_per_s": b * block / med * 1e3,
                    "vs_torch": ref / med,
                }
            )
        for e in (torch_engine, ort_engine):
            for i in range(b):
                e.release(i)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint folder")
    src.add_argument("--preset", help="random weights of a preset's shape (e.g. default, tiny)")
    p.add_argument("--onnx", help="exported denoiser.onnx (default: export to a temp folder)")
    p.add_argument("--past", type=int, default=256, help="cached tokens per sequence")
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = per core)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch threads (0 = default)")
    args = p.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.model:
        model, name = checkpoint.load(args.model), args.model
    else:
        torch.manual_seed(0)
        model, name = DiffusionLM(preset(args.preset)).eval(), f"preset {args.preset} (random)"
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(args.onnx) if args.onnx else Path(tmp) / "denoiser.onnx"
        if not args.onnx:
            t0 = time.perf_counter()
            export_denoiser(model, onnx_path)
            print(f"exported {onnx_path.name} in {time.perf_counter() - t0:.0f} s")
        rows = bench(model, onnx_path, args.batch, args.past, args.block, args.rounds, args.threads)
    print(
        f"\n{name}: {model.num_parameters() / 1e6:.1f} M params; denoise pass of "
        f"{args.block} tokens over {args.past} cached, {args.rounds} rounds; "
        f"torch threads {torch.get_num_threads()}, onnxruntime threads "
        f"{args.threads or 'default'}; CPU\n"
    )
    print("| engine | batch | median ms | p90 ms | tokens/s | speed vs torch engine |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['engine']} | {r['batch']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {r['vs_torch']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
