"""Evaluate a model folder in every mode on held-out prompts: speed and quality side by side.

    python -m dlm.train.evaluate [--model models/default] [--prompts 64] [--max-tokens 64]

For each setting (AR; diffusion at a threshold sweep and fixed-step schedules; self-speculation;
a few with penalties):
- TPF: generated tokens / forward passes, every pass counted (prefill and commit passes too);
- tokens/s in process, one request at a time (batch 1), on this machine;
- generative perplexity: the completion scored by the same model in AR mode (teacher-forced);
- valid Python: prompt + completion, cut at its last complete line, parses with `ast`
  (up to 3 trailing lines are dropped to close an unfinished block);
- distinct 4-grams: distinct token 4-grams over all 4-grams of a completion, averaged (1: no
  repeats; a completion stuck in a loop scores near 0);
- agreement: share of positions where the completion equals AR greedy's.
Prompts are the first lines of functions in held-out stdlib files
(`dlm.train.prompts.held_out_prompts`).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import time
from pathlib import Path

import torch

from dlm.pipeline import DEFAULT_MODEL, Pipeline
from dlm.train.prompts import held_out_prompts

SETTINGS: list[tuple[str, dict]] = [
    ("ar", {"mode": "ar"}),
    *[
        (f"diffusion t={t}", {"mode": "diffusion", "threshold": t})
        for t in (0.5, 0.7, 0.8, 0.9, 0.95)
    ],
    *[(f"diffusion f={f}", {"mode": "diffusion", "factor": f}) for f in (1.0, 1.25)],
    ("diffusion steps=16", {"mode": "diffusion", "block_length": 32, "steps": 16}),
    ("diffusion steps=8", {"mode": "diffusion", "block_length": 32, "steps": 8}),
    ("self_spec", {"mode": "self_spec"}),
    ("self_spec block=8", {"mode": "self_spec", "block_length": 8}),
    # the trained block, beside what a build chose for requests that name none (dlm.sampling.blocks)
    ("diffusion t=0.9 block=32", {"mode": "diffusion", "threshold": 0.9, "block_length": 32}),
    ("self_spec block=32", {"mode": "self_spec", "block_length": 32}),
    # penalties (off by default): what they do to loops and to validity
    ("ar rep=1.2", {"mode": "ar", "repetition_penalty": 1.2}),
    ("ar freq=0.5", {"mode": "ar", "frequency_penalty": 0.5}),
    ("ar pres=0.5", {"mode": "ar", "presence_penalty": 0.5}),
    ("self_spec freq=0.5", {"mode": "self_spec", "frequency_penalty": 0.5}),
    ("diffusion t=0.9 freq=0.5", {"mode": "diffusion", "threshold": 0.9, "frequency_penalty": 0.5}),
]


def distinct_share(tokens: list[int], n: int = 4) -> float:
    """Distinct n-grams over all n-grams of a completion (1.0: no n-gram repeats; loops drive it
    towards 0); 1.0 for completions shorter than n."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def valid_python(prompt: str, completion: str) -> bool:
    lines = (prompt + completion).split("\n")
    if completion and not completion.endswith("\n"):
        lines = lines[:-1]  # the last line was cut by max_tokens
    for drop in range(0, 4):
        text = "\n".join(lines[: len(lines) - drop] if drop else lines)
        if len(text) < len(prompt.rstrip()):
            break
        try:
            ast.parse(text)
            return True
        except SyntaxError:
            continue
    return False


@torch.inference_mode()
def ar_perplexity(pipe: Pipeline, prompt_ids: list[int], completion: list[int]) -> float:
    """exp(mean NLL) of the completion under the model's causal (AR) predictions."""
    if not completion:
        return float("nan")
    model = pipe.engine.model
    ids = torch.tensor([prompt_ids + completion])
    n = ids.shape[1]
    pk, pv = model.empty_past(1)
    pos = torch.arange(n)[None]
    mask = torch.ones(1, n, n, dtype=torch.bool).tril()
    h, _, _ = model.hidden(ids, pos, mask, pk, pv)
    logp = torch.log_softmax(model.logits(h[0, len(prompt_ids) - 1 : -1]).float(), -1)
    nll = -logp.gather(-1, torch.tensor(completion)[:, None]).mean()
    return math.exp(float(nll))


def evaluate(
    pipe: Pipeline,
    n_prompts: int,
    max_tokens: int,
    settings=SETTINGS,
    scorer: Pipeline | None = None,
) -> list[dict]:
    """The table's rows; perplexities scored by `scorer` (a PyTorch pipeline; default `pipe`)."""
    scorer = scorer or pipe
    prompts = held_out_prompts(n_prompts)
    rows, ar_tokens = [], {}
    for name, knobs in settings:
        tokens = passes = 0
        seconds = 0.0
        ppl, valid, agree, agree_n, distinct = [], 0, 0, 0, 0.0
        for i, p in enumerate(prompts):
            req = pipe.request(p.prompt, max_tokens=max_tokens, **knobs)
            t0 = time.perf_counter()
            res = pipe.generate([req])[0]
            seconds += time.perf_counter() - t0
            tokens += res.num_output_tokens
            passes += res.num_forward_passes
            text = pipe.tokenizer.decode(res.token_ids)
            valid += valid_python(p.prompt, text)
            distinct += distinct_share(res.token_ids)
            ppl.append(ar_perplexity(scorer, req.prompt_ids, res.token_ids))
            if name == "ar":
                ar_tokens[i] = res.token_ids
            else:
                ref = ar_tokens.get(i, [])
                n = min(len(ref), len(res.token_ids))
                agree += sum(a == b for a, b in zip(ref[:n], res.token_ids[:n], strict=False))
                agree_n += max(len(ref), len(res.token_ids))
        finite = [x for x in ppl if math.isfinite(x)]
        rows.append(
            {
                "setting": name,
                "tpf": tokens / max(passes, 1),
                "tokens_per_s": tokens / max(seconds, 1e-9),
                "gen_ppl": math.exp(sum(map(math.log, finite)) / max(len(finite), 1)),
                "valid_python": valid / len(prompts),
                "distinct_4grams": distinct / len(prompts),
                "agreement_with_ar": (agree / agree_n) if agree_n else 1.0,
                "tokens": tokens,
                "passes": passes,
            }
        )
        r = rows[-1]
        print(
            f"{name:22s} TPF {r['tpf']:5.2f}  {r['tokens_per_s']:7.1f} tok/s  "
            f"gen-ppl {r['gen_ppl']:6.2f}  valid {r['valid_python']:.2f}  "
            f"distinct-4 {r['distinct_4grams']:.2f}  "
            f"agree {r['agreement_with_ar']:.2f}",
            flush=True,
        )
    return rows


def markdown(rows: list[dict], ar_speed: float) -> str:
    out = [
        "| setting | tokens/forward | tokens/s | speed-up vs AR | gen. perplexity | "
        "valid Python | distinct 4-grams | agreement with AR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['setting']} | {r['tpf']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{r['tokens_per_s'] / ar_speed:.2f}x | {r['gen_ppl']:.2f} | "
            f"{100 * r['valid_python']:.0f}% | {r['distinct_4grams']:.2f} | "
            f"{100 * r['agreement_with_ar']:.0f}% |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dlm.train.evaluate", description=__doc__)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument(
        "--engine", default=None, help="a build of the model (python -m export); default PyTorch"
    )
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("build/eval"))
    ap.add_argument(
        "--settings", nargs="+", default=None, help="only these settings (ar always runs first)"
    )
    args = ap.parse_args(argv)
    known = [n for n, _ in SETTINGS]
    unknown = sorted(set(args.settings or []) - set(known))
    if unknown:
        ap.error(f"--settings {unknown}: unknown; known: {known}")
    settings = [(n, k) for n, k in SETTINGS if n == "ar" or not args.settings or n in args.settings]
    pipe = Pipeline.load(args.model, engine_dir=args.engine)
    scorer = Pipeline.load(args.model) if args.engine else pipe  # PyTorch scores perplexity
    rows = evaluate(pipe, args.prompts, args.max_tokens, settings, scorer)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, rows[0]["tokens_per_s"])
    (args.out / "eval.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "eval.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
