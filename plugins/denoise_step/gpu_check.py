"""GPU check of the fused DenoiseStep kernel: correctness against the references, then speed.

    python -m plugins.denoise_step.gpu_check [--out FILE] [--bandwidth-gbps N] [--sweep]

On CUDA, for float32, bfloat16 and float16 logits, vocabulary 131072 and rows of blocks of 32
(1x32, 8x32, 32x32, 64x32):
1. correctness: the Triton kernel against `denoise_step_torch` on the same GPU (tokens exact at
   temperature 0, > 0 and mixed; confidences within 1e-6), named edge cases (ties, one huge
   logit, all equal, V = 1, V not a multiple of the tile), and the NumPy spec for one block;
2. the TensorRT launch ABI: the kernel compiled to PTX exactly as `tensorrt_plugin` does,
   loaded with the CUDA driver and launched with only the 7 parameters TensorRT passes;
3. speed: the fused kernel against unfused PyTorch (softmax + max + argmax) and against the
   PyTorch implementation (greedy and with Gumbel noise), timed with triton.testing.do_bench
   (L2 flushed between runs); GB/s = logits bytes read / time, and % of the card's memory
   bandwidth (H100 SXM 3350 GB/s, H200 4800 GB/s by device name; --bandwidth-gbps overrides).
   --sweep adds a table over (tile, warps) for greedy rows.
Prints a table (also written to --out) and exits 1 if any check fails. Takes under 2 minutes.

Without CUDA it says so, runs a tiny CPU smoke check in Triton's interpreter, and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch

VOCAB = 131072
BLOCKS = ((1, 32), (8, 32), (32, 32), (64, 32))  # (B, T): rows of a block of 32 positions
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONF_ATOL = 1e-6
PEAK_GBPS = (("H200", 4800.0), ("H100 PCIE", 2000.0), ("H100", 3350.0))


def peak_bandwidth_gbps(device_name: str, override: float | None = None) -> float | None:
    """The card's memory bandwidth in GB/s: the override, else by device name, else None."""
    if override is not None:
        if override <= 0:
            raise ValueError(f"--bandwidth-gbps: must be > 0, got {override}")
        return override
    name = device_name.upper()
    for key, gbps in PEAK_GBPS:
        if key in name:
            return gbps
    return None


class Report:
    """Collects lines (printed as they come) and failures."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failures: list[str] = []

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def check(self, ok: bool, what: str) -> None:
        self.say(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


def _inputs(b: int, t: int, v: int, dtype: torch.dtype, mode: str, device: str, gen_seed: int):
    """Logits ~ N(0, 4^2) made on `device` (fast), temperatures by mode, seeds in [0, 2**32)."""
    g = torch.Generator(device=device).manual_seed(gen_seed)
    logits = (torch.randn(b, t, v, generator=g, device=device) * 4).to(dtype)
    if mode == "greedy":
        temp = torch.zeros(b)
    elif mode == "sampled":
        temp = torch.full((b,), 0.8)
    else:  # mixed: every other row samples (row 0 greedy)
        temp = torch.tensor([0.0 if i % 2 == 0 else 0.7 + 0.1 * (i % 5) for i in range(b)])
    seed = torch.randint(0, 2**32, (b,), generator=g, dtype=torch.int64, device=device)
    return logits, temp.to(torch.float32).to(device), seed


def _diff(got, want) -> tuple[int, int, float]:
    """(token mismatches, tokens, max |confidence difference|)."""
    tok_bad = int((got[0].cpu() != want[0].cpu()).sum())
    conf = float((got[1].cpu() - want[1].cpu()).abs().max()) if got[1].numel() else 0.0
    return tok_bad, got[0].numel(), conf


def _compare_many(rep: Report, what: str, pairs: dict[str, tuple]) -> None:
    """One report line for several (got, want) pairs labelled by key."""
    parts, ok = [], True
    for key, (got, want) in pairs.items():
        bad, n, conf = _diff(got, want)
        ok = ok and bad == 0 and conf <= CONF_ATOL
        parts.append(f"{key} {bad}/{n} tok, conf {conf:.1e}")
    rep.check(ok, f"{what}: " + "; ".join(parts))


def check_correctness(rep: Report, device: str) -> None:
    from plugins.denoise_step.reference import denoise_step_numpy, denoise_step_torch
    from plugins.denoise_step.triton_kernel import denoise_step_triton

    rep.say(
        f"== correctness: Triton kernel vs denoise_step_torch on {device}, V={VOCAB} "
        f"(token mismatches, max |conf diff|; conf tolerance {CONF_ATOL})"
    )
    for name, dtype in DTYPES.items():
        for b, t in BLOCKS:
            pairs = {}
            for mode in ("greedy", "sampled", "mixed"):
                args = _inputs(b, t, VOCAB, dtype, mode, device, gen_seed=b * 7 + len(mode))
                pairs[mode] = (denoise_step_triton(*args), denoise_step_torch(*args))
            _compare_many(rep, f"{name:8s} {b}x{t}", pairs)
    rep.say("== correctness: named edge cases, V=50257 (not a multiple of the tile) and V=1")
    v = 50257
    ties = torch.zeros(2, 4, v)
    ties[:, :, [7, 300, 40000]] = 5.0  # three equal maxima: the first (7) must win
    huge = torch.randn(2, 4, v)
    huge[:, :, 1234] = 6e4  # a single huge logit (6e4 fits float16)
    cases = {
        "ties": ties,
        "huge logit": huge,
        "all equal": torch.zeros(2, 4, v),
        "V=1": torch.randn(2, 4, 1),
    }
    temp = torch.tensor([0.0, 1.3], device=device)  # row 0 greedy, row 1 sampled
    seed = torch.tensor([5, 2**32 - 1], dtype=torch.int64, device=device)
    for label, logits in cases.items():
        pairs = {}
        for name, dtype in DTYPES.items():
            args = (logits.to(dtype).to(device), temp, seed)
            pairs[name] = (denoise_step_triton(*args), denoise_step_torch(*args))
        _compare_many(rep, label, pairs)
        if label == "ties":
            rep.check(bool((pairs["float32"][0][0][0] == 7).all()), "ties: greedy row picks 7")
        if label == "huge logit":
            rep.check(bool((pairs["float32"][0][0] == 1234).all()), "huge logit: index 1234 picked")
    rep.say("== correctness: Triton vs the NumPy spec (2x32 rows, V=131072, float32)")
    pairs = {}
    for mode in ("greedy", "sampled", "mixed"):
        args = _inputs(2, 32, VOCAB, torch.float32, mode, device, gen_seed=99)
        want = denoise_step_numpy(*(a.cpu().numpy() for a in args))
        pairs[mode] = (
            denoise_step_triton(*args),
            (torch.from_numpy(want[0]), torch.from_numpy(want[1])),
        )
    _compare_many(rep, "vs spec", pairs)


def check_tensorrt_abi(rep: Report, device: str) -> None:
    """Launch the AOT PTX the way TensorRT does: driver API, 7 parameters, grid = rows."""
    import ctypes

    from plugins.denoise_step.tensorrt_plugin import KERNEL_PARAMS, aot_plan, aot_ptx
    from plugins.denoise_step.triton_kernel import denoise_step_triton

    rep.say(
        "== TensorRT AOT launch ABI: PTX from aot_ptx, launched by the CUDA driver with "
        "only (inputs, T, V, outputs)"
    )
    try:
        from cuda.bindings import driver as cu
    except ImportError:
        try:
            from cuda import cuda as cu  # cuda-python < 12.6
        except ImportError as exc:
            rep.say(f"  skip: cuda-python is not installed ({exc})")
            return
    ok = cu.CUresult.CUDA_SUCCESS
    pairs = {}
    for name, dtype in DTYPES.items():
        args = _inputs(8, 32, VOCAB, dtype, "mixed", device, gen_seed=3)
        plan = aot_plan(VOCAB, name)
        kname, ptx, shared = aot_ptx(name, plan)  # target: the current GPU
        image = ctypes.create_string_buffer(ptx.encode())
        err, module = cu.cuModuleLoadData(ctypes.addressof(image))
        if err != ok:
            rep.check(False, f"{name}: cuModuleLoadData: {err}")
            continue
        err, fn = cu.cuModuleGetFunction(module, kname.encode())
        if err != ok:
            rep.check(False, f"{name}: cuModuleGetFunction: {err}")
            continue
        b, t, v = args[0].shape
        token = torch.empty((b, t), dtype=torch.int64, device=device)
        conf = torch.empty((b, t), dtype=torch.float32, device=device)
        vals = [np.array([a.data_ptr()], np.uint64) for a in args]
        vals += [np.array([t], np.int32), np.array([v], np.int32)]
        vals += [np.array([o.data_ptr()], np.uint64) for o in (token, conf)]
        assert len(vals) == len(KERNEL_PARAMS)
        params = np.array([a.ctypes.data for a in vals], dtype=np.uint64)
        torch.cuda.synchronize()
        stream = cu.CUstream(torch.cuda.current_stream().cuda_stream)
        (err,) = cu.cuLaunchKernel(
            fn, b * t, 1, 1, plan.num_warps * 32, 1, 1, shared, stream, params.ctypes.data, 0
        )
        torch.cuda.synchronize()
        cu.cuModuleUnload(module)
        if err != ok:
            rep.check(False, f"{name}: cuLaunchKernel: {err}")
            continue
        pairs[name] = ((token, conf), denoise_step_triton(*args))
    if pairs:
        _compare_many(rep, "8x32 mixed, driver launch vs launcher", pairs)


def _bench(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))


def _unfused(logits: torch.Tensor):
    probs = torch.softmax(logits.float(), dim=-1)
    return probs.argmax(dim=-1), probs.max(dim=-1).values


def time_all(rep: Report, peak: float | None) -> None:
    from plugins.denoise_step.reference import denoise_step_torch
    from plugins.denoise_step.triton_kernel import denoise_step_triton

    rep.say(
        f"== speed, V={VOCAB}; GB/s = logits bytes / time; peak "
        f"{peak if peak else 'unknown'} GB/s; x = unfused time / this time"
    )
    rep.say(
        f"{'dtype':8s} {'rows':>9s} {'method':34s} {'ms':>8s} {'GB/s':>7s} {'%peak':>6s} "
        f"{'x':>6s}"
    )
    for name, dtype in DTYPES.items():
        for b, t in BLOCKS:
            greedy = _inputs(b, t, VOCAB, dtype, "greedy", "cuda", gen_seed=1)
            sampled = (greedy[0], torch.full_like(greedy[1], 0.8), greedy[2])
            gbytes = greedy[0].numel() * greedy[0].element_size() / 1e9
            methods = {
                "unfused torch softmax+max+argmax": lambda a=greedy: _unfused(a[0]),
                "fused triton, temperature 0": lambda a=greedy: denoise_step_triton(*a),
                "fused triton, temperature 0.8": lambda a=sampled: denoise_step_triton(*a),
                "torch impl, temperature 0": lambda a=greedy: denoise_step_torch(*a),
                "torch impl, temperature 0.8 (Gumbel)": lambda a=sampled: denoise_step_torch(*a),
            }
            base = None
            for label, fn in methods.items():
                ms = _bench(fn)
                base = base or ms
                gbps = gbytes / (ms / 1e3)
                pct = f"{100 * gbps / peak:5.1f}%" if peak else "   n/a"
                rep.say(
                    f"{name:8s} {f'{b}x{t}':>9s} {label:34s} {ms:8.3f} {gbps:7.0f} {pct:>6s} "
                    f"{base / ms:6.2f}"
                )
            del greedy, sampled
            torch.cuda.empty_cache()


def sweep(rep: Report, peak: float | None) -> None:
    from plugins.denoise_step.triton_kernel import LaunchConfig, denoise_step_triton, launch_config

    rep.say("== sweep: greedy rows, (tile, warps); * = launch_config's choice")
    for name in ("float32", "bfloat16"):
        for b, t in ((1, 32), (64, 32)):
            args = _inputs(b, t, VOCAB, DTYPES[name], "greedy", "cuda", gen_seed=2)
            gbytes = args[0].numel() * args[0].element_size() / 1e9
            chosen = launch_config(b * t, VOCAB, name)
            for block_v, warps in ((2048, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16)):
                cfg = LaunchConfig(grid=(b * t,), block_v=block_v, num_warps=warps)
                ms = _bench(lambda c=cfg, a=args: denoise_step_triton(*a, config=c))
                gbps = gbytes / (ms / 1e3)
                pct = f"{100 * gbps / peak:5.1f}%" if peak else "n/a"
                mark = "*" if (block_v, warps) == (chosen.block_v, chosen.num_warps) else " "
                rep.say(
                    f"{name:8s} {f'{b}x{t}':>6s} tile {block_v:6d} warps {warps:2d}{mark} "
                    f"{ms:8.3f} ms {gbps:7.0f} GB/s {pct}"
                )


def cpu_smoke(rep: Report) -> None:
    """No CUDA: run the kernel in Triton's interpreter on a tiny case against the spec."""
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    from plugins.denoise_step.reference import denoise_step_numpy
    from plugins.denoise_step.triton_kernel import denoise_step_triton

    pairs = {}
    for mode in ("greedy", "mixed"):
        args = _inputs(2, 3, 300, torch.float32, mode, "cpu", gen_seed=5)
        want = denoise_step_numpy(*(a.numpy() for a in args))
        pairs[mode] = (
            denoise_step_triton(*args),
            (torch.from_numpy(want[0]), torch.from_numpy(want[1])),
        )
    _compare_many(rep, "interpreter smoke 2x3 rows, V=300, vs spec", pairs)


def _section(rep: Report, fn: Callable, *args) -> None:
    """Run one section; an exception is a reported failure, and the next section still runs."""
    try:
        fn(rep, *args)
    except Exception as exc:  # noqa: BLE001 - reported as a failure, never swallowed
        rep.check(False, f"{fn.__name__} raised {type(exc).__name__}: {exc}")
        traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument(
        "--bandwidth-gbps",
        type=float,
        default=None,
        help="the card's memory bandwidth in GB/s (default: by device name)",
    )
    parser.add_argument("--sweep", action="store_true", help="also time (tile, warps) choices")
    args = parser.parse_args(argv)
    rep = Report()
    start = time.time()
    if not torch.cuda.is_available():
        rep.say(
            "No CUDA device: the GPU check cannot run here. Running the CPU smoke check "
            "(Triton interpreter) instead; no timings."
        )
        _section(rep, cpu_smoke)
    else:
        import triton

        name = torch.cuda.get_device_name()
        peak = peak_bandwidth_gbps(name, args.bandwidth_gbps)
        rep.say(
            f"device {name}; torch {torch.__version__}; triton {triton.__version__}; "
            f"python {sys.version.split()[0]}"
        )
        _section(rep, check_correctness, "cuda")
        _section(rep, check_tensorrt_abi, "cuda")
        _section(rep, time_all, peak)
        if args.sweep:
            _section(rep, sweep, peak)
    rep.say(f"== {len(rep.failures)} failure(s); {time.time() - start:.1f} s")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(rep.lines) + "\n")
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
