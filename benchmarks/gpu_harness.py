"""What the GPU forward benchmark is made of: the time budget, the fenced markdown report, the
benchmark's state, the random-weight model, the timer, the inputs of one pass and the CUDA-graph
capture. benchmarks/gpu_forward.py runs the sections."""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dlm.config import ModelConfig
from dlm.model import DiffusionLM

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


def random_checkpoint(
    preset: str, out: Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> Path:
    """A checkpoint folder of a preset with random weights (`build_model`, made on `device` in
    `dtype` and saved so) and a BPE tokenizer trained on a little stdlib, whose size (at most
    the trainer's 65,536) becomes the vocabulary; reused when `out` holds one."""
    if (out / "config.json").exists():
        return out
    from dlm import checkpoint
    from dlm.config import preset as get_preset
    from dlm.train.sources import stdlib_dir
    from dlm.train.tokenizer import MAX_VOCAB_SIZE, save_tokenizer, train_tokenizer

    cfg = get_preset(preset)
    files = sorted(stdlib_dir().glob("*.py"))[:150]
    texts = [f.read_text(errors="replace") for f in files]
    tok = train_tokenizer(texts, min(cfg.vocab_size, MAX_VOCAB_SIZE))
    cfg.vocab_size = tok.get_vocab_size()
    model = build_model(cfg.validate(), torch.device(device), dtype)
    checkpoint.save(model, out, max_shard_bytes=4 << 30)
    save_tokenizer(tok, out)
    return out


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


def si(x: float, unit: str) -> str:
    """A size with a decimal prefix: 16.98 GB, 285.2 MB, 12.3 kB."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}"
