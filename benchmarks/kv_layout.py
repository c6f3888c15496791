"""The PyTorch engine's pass with its KV cache read in place (`dlm.kv`, slots) against the same
model with the past as inputs (every row's past gathered, past and new concatenated in each
layer, K/V repeated for GQA: the layout of the ONNX graph), side by side in one run.

    python -m benchmarks.kv_layout --model models/default                 # CPU, fp32
    python -m benchmarks.kv_layout --preset nemotron-labs-diffusion-8b --device cuda --context 2048

For each cached length, `rows` sequences are prefilled with it, then one pass of `rows` x
`tokens` (block-bidirectional, reading the cache, writing nothing: a self_spec round's shape) is
timed on each engine, alternating, the fastest of `--repeats` (on a GPU after a synchronize).
Absolute times count only on the machine printed; the ratio is the point. Not a test: nothing
is asserted.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.gpu_harness import build_model
from dlm import checkpoint
from dlm.config import preset
from dlm.engine import CachedEngine, KVStore, PassRequest, TorchEngine
from dlm.engines import DTYPES, TORCH_DTYPES, torch_dtype
from dlm.model import DiffusionLM
from dlm.passes import run_pass
from plugins.denoise_step.reference import denoise_step_torch


class PastAsInputs(CachedEngine):
    """The model's pure forward as an engine: the past gathered into fresh tensors for every
    pass (`KVStore`), concatenated with the new K/V in each layer (`dlm.model.ConcatKV`)."""

    def __init__(self, model: DiffusionLM, device: torch.device | str = "cpu") -> None:
        self.model, self.config, self.device = model, model.cfg, torch.device(device)
        dtype = next(model.parameters()).dtype
        self.kv = KVStore(self.config, lambda s: torch.zeros(s, device=self.device, dtype=dtype))

    @torch.inference_mode()
    def forward(self, feed, past_k, past_v):
        x = {k: torch.from_numpy(v).to(self.device) for k, v in feed.items()}
        x.update(past_k=past_k, past_v=past_v)
        penalties = bool(feed["penalty_len"].any())
        tokens, conf, new_k, new_v, _ = run_pass(self.model, x, denoise_step_torch, penalties)
        return tokens.cpu().numpy(), conf.float().cpu().numpy(), new_k, new_v


def timed(engine, passes, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    engine.step(passes)  # its tokens come back to the host: synchronised
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/default", help="checkpoint folder")
    p.add_argument("--preset", default=None, help="random weights of a preset instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    p.add_argument("--context", type=int, nargs="+", default=[128, 512])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch_dtype(args.dtype, args.device)
    weights = getattr(torch, TORCH_DTYPES[dtype])
    if args.preset:  # random weights made where they live (8B: ~17 GB in bf16)
        model = build_model(preset(args.preset).validate(), device, weights)
    else:
        model = checkpoint.load(args.model).to(device=device, dtype=weights).eval()
    engines = {
        "in place": TorchEngine(model, device),
        "past as inputs": PastAsInputs(model, device),
    }
    name = args.preset or args.model
    print(
        f"# {name}, {device} {dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        "| context | rows | tokens | in place ms | past as inputs ms | past as inputs / in place |"
    )
    print("|---|---|---|---|---|---|")
    for context in args.context:
        for rows in args.rows:
            ids = range(rows)
            prefill = [PassRequest(s, 0, [5] * context, 0, True, 1) for s in ids]
            for engine in engines.values():
                engine.step(prefill)
            for tokens in args.tokens:
                step = [
                    PassRequest(s, context, [7] * tokens, tokens, False, 1) for s in range(rows)
                ]
                best = dict.fromkeys(engines, float("inf"))
                for e in engines.values():
                    e.step(step)  # warm-up
                for _ in range(args.repeats):
                    for key, e in engines.items():
                        best[key] = min(best[key], timed(e, step, device))
                a, b = best["in place"], best["past as inputs"]
                print(
                    f"| {context} | {rows} | {tokens} | {1000 * a:.2f} | {1000 * b:.2f} | "
                    f"{b / a:.2f} |",
                    flush=True,
                )
            for engine in engines.values():
                for s in ids:
                    engine.release(s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
