"""Forward time against tokens per pass on a GPU: why tokens per forward become tokens per second.

    python -m benchmarks.gpu_forward --out FILE

At batch 1 a decoder pass reads every weight once however many query tokens it carries, so its
time stays near the weight-read floor (weight bytes / memory bandwidth) from T = 1 up to tens of
tokens. A mode that commits several tokens per pass (diffusion, self-speculation) turns that flat
curve into tokens per second. Shown here on a Nemotron-Labs-Diffusion-8B-shaped model with random
bf16 weights made on the GPU (the time of a pass does not depend on the weights' values):

1. forward time for T query tokens over a cached prefix (eager), next to the weight-read floor,
   the KV bytes read and T / time;
2. the real samplers (`dlm.sampling.generate` on a `TorchEngine`), one short request per mode;
3. our cached 32-token pass against the LLaDA reference's pass (the whole sequence, no cache)
   over contexts of 256 to 8,192 tokens, eager and as CUDA graphs, and the time of one block
   for ours, Fast-dLLM style (the context recomputed once per block) and LLaDA: the speed-up
   at equal output;
4. the same forward passes replayed as CUDA graphs (no per-kernel launch cost from Python);
5. tokens/s per mode computed from the measured pass times and fixed schedules (arithmetic).

Every section is fenced: one that fails prints its error and the next one runs, and a time budget
skips what would not finish. The markdown report is rewritten to --out after every section, so a
killed run still leaves what it measured. Without CUDA the same code runs a tiny preset on the CPU
and says "CPU smoke run, not a GPU figure".
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlm.config import ModelConfig, preset
from dlm.engine import TorchEngine
from dlm.model import DiffusionLM
from dlm.sampling import GenerationRequest, generate

QUERY_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128)
BLOCK = 32  # block of the mode schedules: Nemotron-Labs Diffusion's block length
DIFFUSION_STEPS = (32, 16, 8, 4)
ACCEPTED = (1, 4, 8, 16)  # self-speculation: tokens committed per draft + verify round
GEN_PROMPT, GEN_TOKENS, GEN_STEPS = 64, 32, 8
SMOKE = "CPU smoke run, not a GPU figure"
GPU_PRESET, CPU_PRESET = "nemotron-labs-diffusion-8b", "tiny"

# Peak HBM bandwidth (bytes/s) from NVIDIA's data sheets, matched in order on the device name.
PEAK_BANDWIDTH: tuple[tuple[str, float, str], ...] = (
    ("H200", 4.8e12, "H200 data sheet"),
    ("H100 PCIe", 2.0e12, "H100 PCIe data sheet"),
    ("H100 NVL", 3.9e12, "H100 NVL data sheet"),
    ("H100", 3.35e12, "H100 SXM data sheet"),
)


def peak_bandwidth(device_name: str) -> tuple[float | None, str]:
    """(bytes/s, where the figure comes from) for a device name; None when it is not known."""
    for key, bandwidth, source in PEAK_BANDWIDTH:
        if key in device_name:
            return bandwidth, f"{bandwidth / 1e12:.2f} TB/s ({source}, matched on the name)"
    return None, f"unknown for {device_name!r}: no floor"


@dataclass
class Budget:
    """Wall-clock seconds the whole run may take; sections check what is left before starting."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


@dataclass
class Report:
    """Markdown parts, echoed to stdout and rewritten to `out` as each one arrives."""

    out: Path | None
    parts: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.parts.append(text.rstrip() + "\n")
        print(self.parts[-1], flush=True)
        if self.out is not None:
            self.out.write_text("\n".join(self.parts))

    def section(self, title: str, run: Callable[[], str], budget: Budget, need_s: float) -> None:
        """Run one section; a failure is reported (type and message) and does not stop the run."""
        if budget.left() < need_s:
            self.add(
                f"## {title}\n\nskipped: {budget.left():.0f} s of the time budget left, "
                f"the section needs about {need_s:.0f} s"
            )
            return
        t0 = time.perf_counter()
        try:
            body = run()
        except Exception as e:  # reported in the output, never swallowed: the next section runs
            traceback.print_exc()
            msg = " ".join(str(e).split())[:600]
            self.add(
                f"## {title}\n\n**failed** after {time.perf_counter() - t0:.1f} s: "
                f"`{type(e).__name__}: {msg}`"
            )
            return
        took = time.perf_counter() - t0
        self.add(f"## {title}\n\n{body.rstrip()}\n\n_section time {took:.1f} s_")


@dataclass
class Bench:
    device: torch.device
    dtype: torch.dtype
    preset_name: str
    cfg: ModelConfig
    prefix: int  # cached positions every timed pass attends to
    warmup: int
    iters: int
    budget: Budget
    bandwidth: float | None = None
    model: DiffusionLM | None = None
    eager_ms: dict[int, float] = field(default_factory=dict)
    graph_ms: dict[int, float] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def need_model(self) -> DiffusionLM:
        if self.model is None:
            raise RuntimeError("the model was not built (see the section above)")
        return self.model

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


# ----------------------------------------------------------------------------- measurements


def build_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> DiffusionLM:
    """Random weights made where they live: no CPU copy and no float32 copy (8B: ~17 GB bf16).
    Matrices ~ N(0, 0.02), norms 1: values keep activations finite; timing ignores them."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = DiffusionLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def weight_bytes_per_pass(model: DiffusionLM) -> int:
    """Bytes of weights one pass reads: all parameters but the embedding table, of which a pass
    gathers only its T rows."""
    emb = model.encoder.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total - emb.numel() * emb.element_size()


def kv_bytes(cfg: ModelConfig, prefix: int, dtype: torch.dtype) -> int:
    """Bytes of cached keys and values one pass reads over `prefix` positions."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * prefix * cfg.head_dim * dtype.itemsize


def median_ms(run: Callable[[], object], b: Bench, iters: int | None = None) -> float:
    """Median milliseconds of `run` after warm-up: CUDA events on a GPU, perf_counter on a CPU."""
    iters = iters or b.iters
    for _ in range(b.warmup):
        run()
    b.sync()
    if b.cuda:
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(iters)
        ]
        for start, end in events:
            start.record()
            run()
            end.record()
        b.sync()
        times = [start.elapsed_time(end) for start, end in events]
    else:
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def random_past(b: Bench, prefix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached keys and values [L, 1, Hkv, prefix, D] of the benchmark's dtype (b.prefix if
    `prefix` is None)."""
    c = b.cfg
    shape = (c.num_layers, 1, c.num_kv_heads, b.prefix if prefix is None else prefix, c.head_dim)
    return (
        torch.randn(shape, device=b.device, dtype=b.dtype),
        torch.randn(shape, device=b.device, dtype=b.dtype),
    )


def pass_args(b: Bench, t: int, past: tuple[torch.Tensor, torch.Tensor]) -> tuple:
    """Inputs of one batch-1 pass of `t` tokens after the prefix. T = 1 is an AR step (causal);
    T > 1 a denoise or draft pass (the block sees itself); logits at all T positions, as a
    denoise or verify pass needs them."""
    d = b.device

    def one(x: int) -> torch.Tensor:
        return torch.tensor([x], device=d)

    ids = torch.randint(4, b.cfg.vocab_size, (1, t), device=d)
    tail = 0 if t == 1 else t
    prefix = past[0].shape[3]
    return (ids, *past, one(prefix), one(t), one(tail), one(0), torch.arange(t, device=d)[None])


def reference_args(b: Bench, t: int, prefix: int) -> tuple:
    """Inputs of one LLaDA-style reference pass: no cache, the whole sequence (`prefix` context
    tokens and the `t`-token block at its end, which sees itself) recomputed; logits at the
    block's positions, as a denoise pass needs them."""
    d, c = b.device, b.cfg
    n = prefix + t
    empty = torch.empty(c.num_layers, 1, c.num_kv_heads, 0, c.head_dim, device=d, dtype=b.dtype)
    ids = torch.randint(4, c.vocab_size, (1, n), device=d)
    out_index = torch.arange(prefix, n, device=d)[None]
    return (ids, empty, empty, *(torch.tensor([x], device=d) for x in (0, n, t, 0)), out_index)


def copy_bandwidth(b: Bench) -> float:
    """Bytes/s of a 1 GiB device-to-device copy, read plus write: what the memory really gives."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=b.device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), b, iters=5)
    return 2 * n / (ms / 1e3)


def capture(model: DiffusionLM, args: tuple) -> torch.cuda.CUDAGraph:
    """One forward pass captured as a CUDA graph (warmed up on a side stream, as torch asks), in
    a memory pool of its own: a pool shared by graphs deleted one by one failed an allocator
    assertion in torch 2.11."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            model(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(*args)
    return graph


# ----------------------------------------------------------------------------- sections


def section_setup(b: Bench, argv: list[str]) -> str:
    """Build the model; the report's header lines."""
    t0 = time.perf_counter()
    b.model = build_model(b.cfg, b.device, b.dtype)
    b.sync()
    build_s = time.perf_counter() - t0
    n_params = b.model.num_parameters()
    w = weight_bytes_per_pass(b.model)
    if b.cuda:
        name = torch.cuda.get_device_name(b.device)
        props = torch.cuda.get_device_properties(b.device)
        b.bandwidth, bw_note = peak_bandwidth(name)
        device = (
            f"{name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB), "
            f"CUDA {torch.version.cuda}"
        )
        try:
            copy = f"{copy_bandwidth(b) / 1e12:.2f} TB/s (1 GiB copy, read + write)"
        except Exception as e:  # an extra figure: report it, keep the model and the header
            copy = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
        timing = f"CUDA events, median of {b.iters} after {b.warmup} warm-up passes"
    else:
        device, bw_note, copy = f"CPU ({platform.processor() or platform.machine()})", "n/a", "n/a"
        timing = f"perf_counter, median of {b.iters} after {b.warmup} warm-up passes"
    kv = kv_bytes(b.cfg, b.prefix, b.dtype)
    lines = [
        f"- command: `python -m benchmarks.gpu_forward {shlex.join(argv)}`",
        f"- device: {device}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- model: preset `{b.preset_name}`, random {str(b.dtype).removeprefix('torch.')} "
        f"weights built on the {b.device.type} in {build_s:.1f} s; {n_params:,} parameters "
        f"({si(n_params * b.dtype.itemsize, 'B')}); weights read per pass {si(w, 'B')} "
        "(all but the embedding table, of which a pass reads T rows)",
        f"- memory bandwidth for the floor: {bw_note}; measured copy bandwidth: {copy}",
        f"- passes: batch 1 over a cached prefix of {b.prefix} tokens (KV read per pass "
        f"{si(kv, 'B')}), torch.inference_mode; timing: {timing}",
    ]
    return "\n".join(lines)


def si(x: float, unit: str) -> str:
    """A size with a decimal prefix: 16.98 GB, 285.2 MB, 12.3 kB."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def floor_cells(b: Bench, ms: float) -> tuple[str, str]:
    """(weight-read floor in ms, time / floor) as table cells."""
    if b.bandwidth is None:
        return "n/a", "n/a"
    floor = weight_bytes_per_pass(b.need_model()) / b.bandwidth * 1e3
    return f"{floor:.2f}", f"{ms / floor:.2f}"


@torch.inference_mode()
def section_eager(b: Bench) -> str:
    model = b.need_model()
    past = random_past(b)
    kv = si(kv_bytes(b.cfg, b.prefix, b.dtype), "B")
    rows = [
        "| T | eager ms | weight floor ms | time / floor | KV read | tok/s if a pass "
        "commits T |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for t in QUERY_TOKENS:
        if b.budget.left() < 10:
            rows.append(f"| {t} | skipped (time budget) | | | | |")
            continue
        args = pass_args(b, t, past)
        ms = b.eager_ms[t] = median_ms(lambda args=args: model(*args), b)
        floor, ratio = floor_cells(b, ms)
        rows.append(f"| {t} | {ms:.2f} | {floor} | {ratio} | {kv} | {t / ms * 1e3:,.0f} |")
    return "\n".join(rows) + (
        "\n\nT = 1 is causal (an AR step); T > 1 block-bidirectional (a denoise or draft pass); "
        "logits at all T positions. Eager PyTorch launches every kernel from Python, so at small "
        "T the time can be launch-bound rather than memory-bound: compare the CUDA-graph table."
    )


def section_generate(b: Bench) -> str:
    """The real samplers, one request per mode, warm-up run first; timed end to end."""
    model = b.need_model()
    engine = TorchEngine(model, device=b.device)
    rng = np.random.default_rng(0)
    prompt = rng.integers(4, b.cfg.vocab_size, GEN_PROMPT)
    prompt[prompt == b.cfg.mask_token_id] += 1
    knobs = {
        "ar": {},
        "diffusion": {"block_length": BLOCK, "steps": GEN_STEPS},
        "self_spec": {"block_length": BLOCK},
    }
    rows = [
        "| mode | knobs | output tokens | forward passes | TPF | seconds | tok/s "
        "| ms per pass |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, kw in knobs.items():
        if b.budget.left() < 8:
            rows.append(f"| {mode} | skipped (time budget) | | | | | | |")
            continue

        def run(mode=mode, kw=kw):
            request = GenerationRequest(prompt.tolist(), mode=mode, max_tokens=GEN_TOKENS, **kw)
            return generate(engine, [request])[0]

        run()  # warm-up: first calls of new shapes pick kernels
        b.sync()
        t0 = time.perf_counter()
        result = run()
        b.sync()
        s = time.perf_counter() - t0
        n, nfe = result.num_output_tokens, result.num_forward_passes
        shown = ", ".join(f"{k}={v}" for k, v in kw.items()) or "-"
        rows.append(
            f"| {mode} | {shown} | {n} | {nfe} | {n / max(nfe, 1):.2f} | {s:.3f} | "
            f"{n / s:,.1f} | {s / max(nfe, 1) * 1e3:.1f} |"
        )
    return "\n".join(rows) + (
        f"\n\nPrompt {GEN_PROMPT} random tokens, max_tokens {GEN_TOKENS}, temperature 0, batch 1; "
        "passes and seconds include the prompt prefill. Random weights: the tokens are "
        "meaningless and so is self-speculation's acceptance (a random draft rarely agrees "
        "with its verifier); the time per pass is not. Eager engine, every pass synchronises."
    )


@torch.inference_mode()
def section_graphs(b: Bench) -> str:
    if not b.cuda:
        return "skipped: CUDA graphs need a GPU."
    model = b.need_model()
    past = random_past(b)
    graphs = []  # kept until the section ends: pools are freed after every replay is done
    rows = [
        "| T | CUDA graph ms | eager ms | weight floor ms | time / floor | tok/s if a pass "
        "commits T |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for t in QUERY_TOKENS:
        if b.budget.left() < 8:
            rows.append(f"| {t} | skipped (time budget) | | | | |")
            continue
        graphs.append(capture(model, pass_args(b, t, past)))
        ms = b.graph_ms[t] = median_ms(graphs[-1].replay, b)
        eager = f"{b.eager_ms[t]:.2f}" if t in b.eager_ms else "n/a"
        floor, ratio = floor_cells(b, ms)
        rows.append(f"| {t} | {ms:.2f} | {eager} | {floor} | {ratio} | {t / ms * 1e3:,.0f} |")
    return "\n".join(rows) + "\n\nSame passes as the eager table, each replayed as one graph."


REFERENCE_CONTEXTS = (256, 1024, 2048, 4096, 8192)


@torch.inference_mode()
def section_reference(b: Bench) -> str:
    """Our cached block pass against the LLaDA reference's pass (no cache: the whole sequence
    again) over growing contexts, eager and (on a GPU) both as CUDA graphs. Both samplers run the
    same passes at fixed steps (identical output: tests/dlm/test_sampling.py), so the time ratio
    is the speed-up at equal output."""
    model = b.need_model()
    graphs = []  # kept until the section ends (see capture)
    rows = [
        f"| context tokens | ours: T={BLOCK} over the cache, ms | reference: context + {BLOCK} "
        "recomputed, ms | speed-up of ours | ours, CUDA graph ms | reference, CUDA graph ms "
        "| speed-up of ours (graphs) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    steps = GEN_STEPS
    blocks = [
        "| context tokens | ours ms | Fast-dLLM style ms | LLaDA reference ms | ours faster than "
        "Fast-dLLM | ours faster than LLaDA |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for context in REFERENCE_CONTEXTS:
        if context > b.cfg.max_position - BLOCK or b.budget.left() < 15:
            continue
        ours = pass_args(b, BLOCK, random_past(b, context))
        ref = reference_args(b, BLOCK, context)
        ms = [median_ms(lambda a=a: model(*a), b) for a in (ours, ref)]
        cells = [f"{ms[0]:.2f}", f"{ms[1]:.2f}", f"{ms[1] / ms[0]:.2f}x"]
        if b.cuda:
            graphs += [capture(model, ours), capture(model, ref)]
            ms = [median_ms(g.replay, b) for g in graphs[-2:]]
            cells += [f"{ms[0]:.2f}", f"{ms[1]:.2f}", f"{ms[1] / ms[0]:.2f}x"]
        else:
            cells += ["n/a"] * 3
        rows.append(f"| {context:,} | {' | '.join(cells)} |")
        # One block: `steps` denoise passes and a commit pass. Ours carries the block every time;
        # Fast-dLLM style recomputes the context once (its commit), LLaDA at every pass.
        per_block = [(steps + 1) * ms[0], steps * ms[0] + ms[1], (steps + 1) * ms[1]]
        blocks.append(
            f"| {context:,} | {' | '.join(f'{x:.1f}' for x in per_block)} | "
            f"{per_block[1] / per_block[0]:.2f}x | {per_block[2] / per_block[0]:.2f}x |"
        )
    timing = "CUDA graph" if b.cuda else "eager"
    return "\n".join(rows) + (
        "\n\nBatch 1, one denoise pass of a 32-token block each. The reference's pass grows "
        "with the context (prompt plus the tokens already generated); ours reads the context "
        "from the cache. Eager passes launch every kernel from Python (launch-bound on this "
        "machine); the graphs compare the work itself.\n\n"
        f"One {BLOCK}-token block at {steps} steps ({steps} denoise passes and a commit pass; "
        f"all three give the same tokens), from the {timing} pass times above:\n\n"
        + "\n".join(blocks)
        + "\n\nComputed, not run: the commit passes are counted at the time of the measured "
        "pass of their kind (ours: the block over the cache; the references: the context again)."
    )


def mode_rows() -> list[tuple[str, str, dict[int, int], int]]:
    """(mode, schedule, passes per round by T, tokens committed per round)."""
    rows = [("ar", "1 causal pass per token", {1: 1}, 1)]
    rows += [
        ("diffusion", f"block {BLOCK}: {s} denoise + 1 commit pass", {BLOCK: s + 1}, BLOCK)
        for s in DIFFUSION_STEPS
    ]
    rows += [("self_spec", f"{a} accepted per draft + verify", {BLOCK: 2}, a) for a in ACCEPTED]
    return rows


def tokens_per_second(passes: dict[int, int], tokens: int, ms: dict[int, float]) -> float | None:
    """Tokens per second of a round from per-pass milliseconds; None if a time is missing."""
    if any(t not in ms for t in passes):
        return None
    return tokens / (sum(n * ms[t] for t, n in passes.items()) / 1e3)


def section_modes(b: Bench) -> str:
    timings = [("eager", b.eager_ms)] + ([("CUDA graph", b.graph_ms)] if b.graph_ms else [])
    if not b.eager_ms:
        raise RuntimeError("no forward time was measured (see the sections above)")
    ref_name, ref = timings[-1]
    ar = tokens_per_second({1: 1}, 1, ref)
    head = " | ".join(f"tok/s {name}" for name, _ in timings)
    rows = [
        f"| mode | schedule | passes (T) | tokens | TPF | {head} | x AR ({ref_name}) |",
        "|---|---|---|---:|---:|" + "---:|" * len(timings) + "---:|",
    ]
    for mode, schedule, passes, tokens in mode_rows():
        n = sum(passes.values())
        cells = []
        for _, ms in timings:
            rate = tokens_per_second(passes, tokens, ms)
            cells.append("n/a" if rate is None else f"{rate:,.0f}")
        rate = tokens_per_second(passes, tokens, ref)
        speedup = "n/a" if rate is None or ar is None else f"{rate / ar:.2f}"
        shape = " + ".join(f"{k} x T={t}" for t, k in passes.items())
        rows.append(
            f"| {mode} | {schedule} | {shape} | {tokens} | {tokens / n:.2f} | "
            f"{' | '.join(cells)} | {speedup} |"
        )
    return "\n".join(rows) + (
        "\n\nComputed, not run: tokens per round / the sum of the measured pass times above "
        "(batch 1, same prefix). Prefill and sampler overhead are left out; the sampler table "
        "measures them."
    )


# ----------------------------------------------------------------------------- entry point


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_forward",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, help="write the markdown report here as well")
    p.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: cuda when available, else a CPU smoke run",
    )
    p.add_argument(
        "--preset",
        help=f"model preset (default {GPU_PRESET} on a GPU, " f"{CPU_PRESET} on the CPU)",
    )
    p.add_argument("--prefix", type=int, default=2048, help="cached tokens per timed pass")
    p.add_argument("--iters", type=int, default=10, help="timed passes per point (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed passes before each point")
    p.add_argument(
        "--budget-s",
        type=float,
        default=90.0,
        help="wall-clock seconds for the whole run; sections that would not fit skip",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    name = args.preset or (GPU_PRESET if use_cuda else CPU_PRESET)
    cfg = preset(name)
    prefix = min(args.prefix, cfg.max_position - max(QUERY_TOKENS))
    b = Bench(device, torch.bfloat16, name, cfg, prefix, args.warmup, args.iters, budget)
    report = Report(args.out)
    title = "# Forward time vs tokens per pass"
    report.add(f"{title}: {SMOKE}" if not use_cuda else f"{title} ({name})")
    report.section("Setup", lambda: section_setup(b, argv), budget, need_s=10)
    report.section("Forward time vs query tokens T (eager)", lambda: section_eager(b), budget, 15)
    report.section("Real samplers, one request per mode", lambda: section_generate(b), budget, 15)
    report.section(
        "Our cached pass vs the reference samplers' (LLaDA: no cache; Fast-dLLM: prefix cache)",
        lambda: section_reference(b),
        budget,
        10,
    )
    report.section(
        "Forward time vs query tokens T (CUDA graphs)", lambda: section_graphs(b), budget, 10
    )
    report.section(
        "Tokens/s per mode from the measured pass times", lambda: section_modes(b), budget, 0
    )
    report.add(
        f"_total {time.perf_counter() - budget.start:.1f} s"
        f"{'; ' + SMOKE if not use_cuda else ''}_"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
