"""The generation modes side by side, in one run: in process and through Triton, speed and quality.

    python -m benchmarks.modes [--model models/default] [--prompts 8] [--max-tokens 64]
                               [--out build/bench_modes] [--no-triton] [--reference]

For each setting of `dlm.train.evaluate.SETTINGS` (ar; diffusion at thresholds 0.5-0.95 and fixed
steps; self_spec), the same held-out prompts one at a time (batch 1), greedy:
- in process: `dlm.sampling.generate` on the serving engine (`--backend auto`: the build's,
  ONNX Runtime on CPU), tokens/s of the generation calls alone;
- through Triton: the `ensemble` of a LocalServer on the same engine, gRPC, non-streaming,
  client-side wall time per request;
- tokens per forward and forward passes (every pass counted), and the quality figures of
  `dlm.train.evaluate` (its `valid_python` and `ar_perplexity`, scored by the PyTorch model);
  Triton's completions are re-tokenized for perplexity, and `same text` is the share of prompts
  whose Triton text equals the in-process text (parity).
`--reference` adds the reference samplers at `diffusion steps=8` and `diffusion t=0.9`: the
LLaDA reference (no KV cache: the whole sequence recomputed at every pass) and Fast-dLLM style
(a prefix cache rebuilt once per block by recomputing the context), each next to ours
(Nemotron-Labs style: a KV cache written by one commit pass per block) at the same setting, with
identical output expected (`same text`), and prints the speed-up of ours; through Triton too,
each on a server of its own (`fill --diffusion-cache prefix|none`).
Writes modes.json, modes.md and quality_vs_speed.png into `--out`. Absolute CPU times count only
on the machine named; ratios in one run are the point.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench import machine
from dlm.engines import served_defaults
from dlm.pipeline import Pipeline
from dlm.sampling import Limits, generate
from dlm.train.evaluate import SETTINGS, ar_perplexity, valid_python
from dlm.train.prompts import file_context, held_out_prompts
from dlm.train.sources import collect_files
from export import engine_dir

# The reference samplers (`dlm.sampling.diffusion`'s `cache`), run at these settings of ours.
REFERENCES = (("LLaDA, no cache", "none"), ("Fast-dLLM, prefix cache", "prefix"))
REFERENCE_SETTINGS = ("diffusion steps=8", "diffusion t=0.9")


def score(scorer: Pipeline, prompt: str, token_ids: list[int], text: str) -> tuple[float, bool]:
    return ar_perplexity(scorer, scorer.tokenizer.encode(prompt), token_ids), valid_python(
        prompt, text
    )


def row(side: str, name: str, runs: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in runs)
    passes = sum(r["passes"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    finite = [r["ppl"] for r in runs if math.isfinite(r["ppl"])]
    return {
        "side": side,
        "setting": name,
        "tokens": tokens,
        "forward_passes": passes,
        "tokens_per_forward": tokens / max(passes, 1),
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "gen_ppl": math.exp(sum(map(math.log, finite)) / max(len(finite), 1)),
        "valid_python": sum(r["valid"] for r in runs) / len(runs),
    }


def in_process(pipe, scorer, prompts, name, knobs, max_tokens, cache="full") -> list[dict]:
    runs = []
    for p in prompts:
        req = pipe.request(p, max_tokens=max_tokens, **knobs)
        t0 = time.perf_counter()
        res = generate(pipe.engine, [req], pipe.limits, cache=cache)[0]
        sec = time.perf_counter() - t0
        text = pipe.tokenizer.decode(res.token_ids)
        ppl, valid = score(scorer, p, res.token_ids, text)
        runs.append(
            {
                "tokens": res.num_output_tokens,
                "passes": res.num_forward_passes,
                "seconds": sec,
                "ppl": ppl,
                "valid": valid,
                "text": text,
                "ids": res.token_ids,
            }
        )
    return runs


def through_triton(client, scorer, prompts, knobs, max_tokens) -> list[dict]:
    runs = []
    for p in prompts:
        r = client.generate(p, max_tokens=max_tokens, stream=False, **knobs)
        ids = scorer.tokenizer.encode(r.text)
        ppl, valid = score(scorer, p, ids, r.text)
        runs.append(
            {
                "tokens": r.num_output_tokens,
                "passes": r.num_forward_passes,
                "seconds": r.seconds,
                "ppl": ppl,
                "valid": valid,
                "text": r.text,
            }
        )
    return runs


def compared(side, setting, runs, texts, rows=(), ours=None) -> dict:
    """A row whose text is compared with the in-process text of its setting; with `ours`, the
    speed-up of our sampler at that setting on the same side (a reference sampler's row)."""
    r = row(side, setting, runs)
    r["same_text"] = sum(a["text"] == b for a, b in zip(runs, texts, strict=True)) / len(runs)
    if ours is not None:
        base = "in process" if side == "reference" else "triton"
        mine = next(x for x in rows if x["side"] == base and x["setting"] == ours)
        r["speed_up_of_ours"] = mine["tokens_per_s"] / r["tokens_per_s"]
    print(f"{side:18s} {setting:28s} {markdown([r]).splitlines()[-1]}", flush=True)
    return r


def served(model, fill, cache, settings, scorer, prompts, max_tokens):
    """(setting, runs) through the `ensemble` of a LocalServer whose diffusion keeps `cache`."""
    from client.api import GrpcClient
    from model_repository.local_server import LocalServer

    fill = [*fill, "--diffusion-cache", cache]
    with LocalServer(model, Path(tempfile.mkdtemp(prefix="dlm-modes-")), fill) as server:
        client = GrpcClient(f"127.0.0.1:{server.grpc}", timeout=300)
        client.generate("def f(x):\n", max_tokens=8, mode="ar")  # warm up
        out = [(n, through_triton(client, scorer, prompts, k, max_tokens)) for n, k in settings]
        client.close()
    return out


def markdown(rows: list[dict]) -> str:
    ar = {r["side"]: r["tokens_per_s"] for r in rows if r["setting"] == "ar"}
    out = [
        "| side | setting | tokens/forward | forward passes | tokens/s | speed-up vs AR | "
        "gen. perplexity | valid Python | same text as in process | ours faster by |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = f"{100 * r['same_text']:.0f}%" if "same_text" in r else ""
        ours = f"{r['speed_up_of_ours']:.2f}x" if "speed_up_of_ours" in r else ""
        base = ar.get(r["side"])
        speed = f"{r['tokens_per_s'] / base:.2f}x" if base else ""
        out.append(
            f"| {r['side']} | {r['setting']} | {r['tokens_per_forward']:.2f} | "
            f"{r['forward_passes']} | {r['tokens_per_s']:.1f} | {speed} | {r['gen_ppl']:.2f} | "
            f"{100 * r['valid_python']:.0f}% | {same} | {ours} |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in [
        (axes[0], "gen_ppl", "generative perplexity (lower is better)"),
        (axes[1], "valid_python", "valid Python share"),
    ]:
        sides = [
            ("in process", "o"),
            ("triton", "s"),
            ("reference", "^"),
            ("triton reference", "v"),
        ]
        for side, marker in sides:
            pts = [r for r in rows if r["side"] == side]
            if not pts:
                continue
            ax.scatter(
                [r["tokens_per_s"] for r in pts], [r[key] for r in pts], marker=marker, label=side
            )
            for r in pts:
                ax.annotate(
                    r["setting"].replace("diffusion ", "d "),
                    (r["tokens_per_s"], r[key]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_xlabel("tokens/s (batch 1)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.modes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="models/default")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--context-chars",
        type=int,
        default=0,
        help="put up to this many characters of each prompt's file (its leading top-level "
        "statements) before the prompt: longer contexts, as in completing code in a file",
    )
    p.add_argument("--out", type=Path, default=Path("build/bench_modes"))
    p.add_argument("--backend", default="auto", help="auto (the build's engine) | torch")
    p.add_argument("--engine", default=None, help="export's build folder (default: the model's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="the PyTorch engine's device: cpu | cuda")
    p.add_argument("--no-triton", action="store_true", help="in process only")
    p.add_argument(
        "--settings",
        nargs="+",
        metavar="NAME",
        help="only these settings (e.g. 'diffusion steps=8')",
    )
    p.add_argument(
        "--reference", action="store_true", help="add the LLaDA and Fast-dLLM reference samplers"
    )
    args = p.parse_args(argv)
    args.engine = str(args.engine or engine_dir(args.model))
    command_line = shlex.join(
        ["python", "-m", "benchmarks.modes", *(sys.argv[1:] if argv is None else argv)]
    )

    import torch

    from dlm.tokenizer import TextTokenizer
    from serving.engine import load_engine, served_build

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = Path(args.model)
    scorer = Pipeline.load(model)  # PyTorch: the perplexity scorer
    engine = load_engine(
        model, args.engine, args.backend, args.threads, say=print, device=args.device
    )
    defaults = served_defaults(model, served_build(model, args.engine, args.backend))
    pipe = Pipeline(engine, TextTokenizer(model), defaults, Limits())
    chosen = held_out_prompts(args.prompts)
    prompts = [x.prompt for x in chosen]
    if args.context_chars:
        text = {f.path: f.text for f in collect_files()}
        prompts = [
            file_context(text[x.path], x.line, args.context_chars) + p
            for x, p in zip(chosen, prompts, strict=True)
        ]
    print(f"# {command_line}\n# {machine()}; engine {type(engine).__name__}", flush=True)
    settings = [(n, k) for n, k in SETTINGS if not args.settings or n in args.settings]
    if not settings:
        p.error(f"--settings {args.settings}: none known; known: {[n for n, _ in SETTINGS]}")
    warm = pipe.request("def f(x):\n", max_tokens=8)
    generate(pipe.engine, [warm], pipe.limits)  # first-call costs (CUDA context, kernels)
    generate(pipe.engine, [warm], pipe.limits, cache="none")
    rows, texts = [], {}
    for name, knobs in settings:
        runs = in_process(pipe, scorer, prompts, name, knobs, args.max_tokens)
        texts[name] = [r["text"] for r in runs]
        rows.append(row("in process", name, runs))
        print(f"in process  {name:20s} {markdown([rows[-1]]).splitlines()[-1]}", flush=True)
    references = [x for x in settings if x[0] in REFERENCE_SETTINGS] if args.reference else []
    for name, knobs in references:
        for label, cache in REFERENCES:
            runs = in_process(pipe, scorer, prompts, name, knobs, args.max_tokens, cache)
            rows.append(compared("reference", f"{name} {label}", runs, texts[name], rows, name))
    if not args.no_triton:
        fill = ["--backend", args.backend, "--engine", args.engine, "--threads", str(args.threads)]
        fill += ["--device", args.device]
        for name, r in served(model, fill, "full", settings, scorer, prompts, args.max_tokens):
            rows.append(compared("triton", name, r, texts[name]))
        for label, cache in REFERENCES if references else ():
            for name, r in served(model, fill, cache, references, scorer, prompts, args.max_tokens):
                setting = f"{name} {label}"
                rows.append(compared("triton reference", setting, r, texts[name], rows, name))
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    lengths = sorted(len(scorer.tokenizer.encode(p)) for p in prompts)
    context = (
        f" with up to {args.context_chars} characters of file context before each"
        if args.context_chars
        else ""
    ) + f" (prompt tokens {lengths[0]}-{lengths[-1]}, median {lengths[len(lengths) // 2]})"
    head = (
        f"- command: `{command_line}`\n- machine: {machine()}\n"
        f"- engine: {type(engine).__name__} on {args.device}, {args.prompts} held-out prompts"
        f"{context}, "
        f"max_tokens {args.max_tokens}, batch 1, greedy\n\n"
    )
    (args.out / "modes.json").write_text(
        json.dumps({"command": command_line, "machine": machine(), "rows": rows}, indent=1) + "\n"
    )
    (args.out / "modes.md").write_text("# Modes side by side\n\n" + head + table)
    plot(rows, args.out / "quality_vs_speed.png")
    print("\n" + head + table)
    print(f"wrote {args.out}/: modes.md modes.json quality_vs_speed.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
