"""Forward time against tokens per pass on a GPU: why tokens per forward become tokens per second.

    python -m benchmarks.gpu_forward --out FILE

At batch 1 a decoder pass reads every weight once however many query tokens it carries, so its
time stays near the weight-read floor (weight bytes / memory bandwidth) from T = 1 up to tens of
tokens. A mode that commits several tokens per pass (diffusion, self-speculation) turns that flat
curve into tokens per second. Shown here on a Nemotron-Labs-Diffusion-8B-shaped model with random
bf16 weights made on the GPU (the time of a pass does not depend on the weights' values):

1. forward time for T query tokens over a cached prefix (eager), next to the weight-read floor,
   the KV bytes read and T / time;
2. the real samplers (`dlm.sampling.generate` on a `TorchEngine`) per mode at batch 1 and 8,
   the engine eager against its passes as CUDA graphs (`dlm.graphs`), same tokens checked;
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
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu_harness import (
    Bench,
    Budget,
    Report,
    build_model,
    capture,
    copy_bandwidth,
    kv_bytes,
    median_ms,
    pass_args,
    peak_bandwidth,
    random_past,
    reference_args,
    si,
    weight_bytes_per_pass,
)
from dlm.config import preset
from dlm.engine import TorchEngine
from dlm.sampling import GenerationRequest, generate

QUERY_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128)
BLOCK = 32  # block of the mode schedules: Nemotron-Labs Diffusion's block length
DIFFUSION_STEPS = (32, 16, 8, 4)
ACCEPTED = (1, 4, 8, 16)  # self-speculation: tokens committed per draft + verify round
GEN_PROMPT, GEN_TOKENS, GEN_STEPS = 64, 32, 8
GEN_BATCHES = (1, 8)  # requests per generate() call in the samplers' section
GEN_ENGINES = (("eager", False), ("graphs", True))  # its engines: TorchEngine(graphs=)
SMOKE = "CPU smoke run, not a GPU figure"
GPU_PRESET, CPU_PRESET = "nemotron-labs-diffusion-8b", "tiny"


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
    """The real samplers per mode and batch, on the engine eager and with its passes as CUDA
    graphs (`dlm.graphs`; off CUDA the same padded passes run eagerly), warm-up run first (it
    captures the shapes), timed end to end; the graphs must give the eager tokens."""
    model = b.need_model()
    engines = {name: TorchEngine(model, b.device, graphs=on) for name, on in GEN_ENGINES}
    rng = np.random.default_rng(0)
    prompts = rng.integers(4, b.cfg.vocab_size, (max(GEN_BATCHES), GEN_PROMPT))
    prompts[prompts == b.cfg.mask_token_id] += 1
    knobs = {
        "ar": {},
        "diffusion": {"block_length": BLOCK, "steps": GEN_STEPS},
        "self_spec": {"block_length": BLOCK},
    }
    rows = [
        "| mode | knobs | batch | output tokens | forward passes | TPF | eager tok/s "
        "| graphs tok/s | graphs / eager | same tokens |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mode, kw in knobs.items():
        for batch in GEN_BATCHES:
            if b.budget.left() < 8:
                rows.append(f"| {mode} | skipped (time budget) | {batch} | | | | | | | |")
                continue

            def run(engine, mode=mode, kw=kw, batch=batch):
                reqs = [
                    GenerationRequest(p.tolist(), mode=mode, max_tokens=GEN_TOKENS, **kw)
                    for p in prompts[:batch]
                ]
                b.sync()
                t0 = time.perf_counter()
                results = generate(engine, reqs)
                b.sync()
                return results, time.perf_counter() - t0

            got = {}
            for name, engine in engines.items():
                run(engine)  # warm-up: kernels picked, graphs captured
                got[name] = run(engine)
            (eager, s_eager), (graphed, s_graph) = got["eager"], got["graphs"]
            n = sum(r.num_output_tokens for r in eager)
            nfe = max(r.num_forward_passes for r in eager)
            same = [r.token_ids for r in eager] == [r.token_ids for r in graphed]
            shown = ", ".join(f"{k}={v}" for k, v in kw.items()) or "-"
            rows.append(
                f"| {mode} | {shown} | {batch} | {n} | {nfe} | {n / batch / max(nfe, 1):.2f} | "
                f"{n / s_eager:,.1f} | {n / s_graph:,.1f} | {s_eager / s_graph:.2f} | "
                f"{'yes' if same else 'NO'} |"
            )
    graphs = engines["graphs"].graphs
    shapes = f"{len(graphs.graphs)} pass shapes captured"
    if graphs.failed:
        shapes = f"**capture failed, the graphs column ran eagerly**: {graphs.failed}"
    return "\n".join(rows) + (
        f"\n\nPrompts of {GEN_PROMPT} random tokens, max_tokens {GEN_TOKENS}, temperature 0; "
        "forward passes: the batch's steps (with the prefill). Random weights: the tokens are "
        "meaningless and so is self-speculation's acceptance (a random draft rarely agrees with "
        f"its verifier); the time per pass is not. {shapes}."
        + ("" if b.cuda else " Off CUDA the graphs column is the padded passes run eagerly.")
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
    report.section(
        "Real samplers: engine eager vs CUDA graphs", lambda: section_generate(b), budget, 15
    )
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
