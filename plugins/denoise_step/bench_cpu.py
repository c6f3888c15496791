"""CPU benchmark of DenoiseStep: the fused forms against unfused PyTorch ops (not a test).

    python -m plugins.denoise_step.bench_cpu [--vocab 4096 131072] [--rows 32 256]
                                             [--threads N] [--out FILE]

For float32 logits of `rows` positions (blocks of 32) and vocabulary V, times, side by side:
- unfused torch: softmax, then max and argmax of the probabilities (the baseline, ratio 1.00);
- torch impl: `denoise_step_torch` at temperature 0 and 0.8 (Gumbel noise, float64);
- ORT graph: the standard-op ONNX export of the same op in ONNX Runtime, at 0 and 0.8.
Median wall time of repeated calls (at least 3, or as many as fit in --seconds per cell); ratio =
unfused time / this time (> 1: faster than unfused). CPU timings here only compare methods on
the same machine; absolute times count only on the serving hardware.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch


def median_ms(fn: Callable[[], object], seconds: float) -> float:
    """Median wall time of fn() in ms: one warm-up call, then >= 3 calls or `seconds` worth."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _unfused(logits: torch.Tensor):
    probs = torch.softmax(logits.float(), dim=-1)
    return probs.argmax(dim=-1), probs.max(dim=-1).values


def main(argv: list[str] | None = None) -> int:
    from plugins.denoise_step.onnx_op import export_standard_onnx, ort_session, run_ort
    from plugins.denoise_step.reference import denoise_step_torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[4096, 131072])
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[32, 256],
        help="positions per call; multiples of the block of 32",
    )
    parser.add_argument("--threads", type=int, default=0, help="0: library defaults")
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per cell")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    for r in args.rows:
        if r < 32 or r % 32:
            parser.error(f"--rows: each must be a positive multiple of 32, got {r}")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "denoise_step.onnx"
        export_standard_onnx(path)
        session = ort_session(path, threads=args.threads)

    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 logits; "
        "ms = median wall time; x = unfused ms / this ms",
        f"{'V':>7s} {'rows':>5s} {'method':30s} {'ms':>9s} {'x':>6s}",
    ]
    print("\n".join(lines), flush=True)
    rng = np.random.default_rng(0)
    for v in args.vocab:
        for rows in args.rows:
            b, t = rows // 32, 32
            logits = rng.standard_normal((b, t, v), dtype=np.float32) * 4
            seed = rng.integers(0, 2**32, b, dtype=np.int64)
            zero, hot = np.zeros(b, np.float32), np.full(b, 0.8, np.float32)
            lt, st = torch.from_numpy(logits), torch.from_numpy(seed)
            zt, ht = torch.from_numpy(zero), torch.from_numpy(hot)
            cells = {
                "unfused torch softmax+max+argmax": lambda lt=lt: _unfused(lt),
                "torch impl, temperature 0": partial(denoise_step_torch, lt, zt, st),
                "ORT graph, temperature 0": partial(run_ort, session, logits, zero, seed),
                "torch impl, temperature 0.8": partial(denoise_step_torch, lt, ht, st),
                "ORT graph, temperature 0.8": partial(run_ort, session, logits, hot, seed),
            }
            base = None
            for label, fn in cells.items():
                ms = median_ms(fn, args.seconds)
                base = base or ms
                line = f"{v:7d} {rows:5d} {label:30s} {ms:9.2f} {base / ms:6.2f}"
                print(line, flush=True)
                lines.append(line)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
