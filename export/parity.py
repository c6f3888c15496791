"""Parity between stages on the same token ids: PyTorch vs the exported graph, pass and generation.

Two checks (STYLE.md practice 3):
1. `pass_parity`: one graph run vs `dlm.passes.run_pass` (forward, penalties,
   `denoise_step_torch`) on random inputs of several shapes (`PASS_CASES`: prefill, ragged
   denoise over a cached prefix, AR steps, mixed causal/bidirectional rows, sampling rows; every
   other row penalized). The parity graph's logits must agree within
   `logits_tolerance` (LOGITS_ATOL x max(1, max |logits|)); tokens at temperature 0 must be equal
   where the top-2 logit gap exceeds that tolerance (a closer tie may legitimately flip).
2. `generation_parity`: whole generations through `dlm.sampling.generate` on a reference engine
   and a candidate engine, every mode the model supports, one ragged batch of prompts: at
   temperature 0 the token ids and forward-pass counts must be identical.
Both return plain dicts (the manifest stores them) and print-friendly summaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlm.config import ModelConfig
from dlm.engine import Engine
from dlm.model import DiffusionLM
from dlm.passes import run_pass
from dlm.sampling import GenerationRequest, generate
from plugins.denoise_step.reference import denoise_step_torch

LOGITS_ATOL = 1e-4  # fp32 graph vs fp32 PyTorch, scaled by max(1, max |logits|); seen: ~1e-6


def logits_tolerance(logits: np.ndarray) -> float:
    return LOGITS_ATOL * max(1.0, float(np.abs(logits).max()))


@dataclass(frozen=True)
class PassCase:
    """A batch of rows: per row its cached length, new tokens, bidirectional tail, outputs."""

    name: str
    past_len: tuple[int, ...]
    n_new: tuple[int, ...]
    tail: tuple[int, ...]  # -1 = all new tokens (n_new)
    n_out: tuple[int, ...]
    temperature: tuple[float, ...] | None = None  # None: all 0
    fork: tuple[int, ...] | None = None  # None: all 0


def pass_cases(block: int) -> list[PassCase]:
    b = block
    return [
        PassCase("prefill", (0,), (13,), (0,), (1,)),
        PassCase(
            "denoise-cached-ragged",
            (17, 0, 9),
            (b, b, max(1, b // 2)),
            (-1, -1, -1),
            (b, b, max(1, b // 2)),
        ),
        PassCase("ar-cached", (5, 21), (1, 1), (0, 0), (1, 1)),
        PassCase("verify-and-draft", (12, 3, 30), (b, b, 3), (0, -1, 0), (b, max(1, b - 1), 3)),
        PassCase("sampling-rows", (8, 8), (b, b), (-1, -1), (b, b), (0.0, 0.9)),
        PassCase(
            "verify-draft-and-fork",
            (12, 3),
            (2 * b + 3, b + 2),
            (b, 1),
            (2 * b + 3, b + 2),
            fork=(b, 1),
        ),
    ]


def case_inputs(cfg: ModelConfig, case: PassCase, seed: int = 0) -> dict[str, np.ndarray]:
    """Random graph inputs (export/onnx_export.INPUTS) for one case; past K/V random normal."""
    rng = np.random.default_rng(seed)
    b = len(case.past_len)
    t, p, k = max(case.n_new), max(case.past_len), max(case.n_out)
    ids = np.zeros((b, t), np.int64)
    out_index = np.zeros((b, k), np.int64)
    for i, (n, m) in enumerate(zip(case.n_new, case.n_out, strict=True)):
        ids[i, :n] = rng.integers(0, cfg.vocab_size, n)
        out_index[i] = np.minimum(np.arange(n - m, n - m + k), n - 1)
    kv = (cfg.num_layers, b, cfg.num_kv_heads, p, cfg.head_dim)
    temps = case.temperature or (0.0,) * b
    return {
        "input_ids": ids,
        "past_k": rng.standard_normal(kv, dtype=np.float32),
        "past_v": rng.standard_normal(kv, dtype=np.float32),
        "past_len": np.array(case.past_len, np.int64),
        "n_new": np.array(case.n_new, np.int64),
        "tail": np.array(
            [n if tl < 0 else tl for n, tl in zip(case.n_new, case.tail, strict=True)], np.int64
        ),
        "fork": np.array(case.fork or (0,) * b, np.int64),
        "out_index": out_index,
        "temperature": np.array(temps, np.float32),
        "seed": rng.integers(0, 2**32, b, dtype=np.int64),
        **penalty_inputs(cfg, case, rng),
    }


def penalty_inputs(cfg: ModelConfig, case: PassCase, rng) -> dict[str, np.ndarray]:
    """Penalties on every other row (the others off), counting ragged prefixes of a random
    history that repeats tokens."""
    b, k, h = len(case.past_len), max(case.n_out), 6
    on = np.arange(b) % 2 == 0
    lens = np.minimum(np.arange(k)[None, :] + rng.integers(0, h, (b, 1)), h)
    return {
        "penalty_ids": rng.integers(0, min(cfg.vocab_size, 8), (b, h)).astype(np.int64),
        "penalty_len": np.where(on[:, None], lens, 0).astype(np.int64),
        "repetition_penalty": np.where(on, 1.4, 1.0).astype(np.float32),
        "frequency_penalty": np.where(on, 0.6, 0.0).astype(np.float32),
        "presence_penalty": np.where(on, -0.3, 0.0).astype(np.float32),
    }


@torch.inference_mode()
def torch_pass(model: DiffusionLM, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference for one graph run (`dlm.passes.run_pass`), float32 outputs."""
    x = {k: torch.from_numpy(v) for k, v in feed.items()}
    token, conf, new_k, new_v, logits = run_pass(model, x, denoise_step_torch)
    return {
        "token": token.numpy(),
        "confidence": conf.numpy(),
        "new_k": new_k.float().numpy(),
        "new_v": new_v.float().numpy(),
        "logits": logits.float().numpy(),
    }


def pass_parity(model: DiffusionLM, run_graph, cases: list[PassCase] | None = None) -> dict:
    """Compare `run_graph(feed) -> {name: array}` (the parity graph, with logits) with PyTorch.

    Returns {"ok", "logits_max_abs_diff", "cases": [...]}; each case records its shapes, the
    logits/confidence/KV differences, the tolerance and the decisive-token agreement.
    """
    cfg = model.cfg
    rows = []
    for i, case in enumerate(cases or pass_cases(cfg.block_length)):
        feed = case_inputs(cfg, case, seed=i)
        ref, got = torch_pass(model, feed), run_graph(feed)
        tol = logits_tolerance(ref["logits"])
        diff = float(np.abs(got["logits"] - ref["logits"]).max())
        top2 = np.sort(ref["logits"], axis=-1)[..., -2:]
        greedy = (feed["temperature"] == 0)[:, None] & (top2[..., 1] - top2[..., 0] > 2 * tol)
        tokens_ok = bool(np.array_equal(got["token"][greedy], ref["token"][greedy]))
        kv = max(float(np.abs(got[n] - ref[n]).max()) for n in ("new_k", "new_v"))
        rows.append(
            {
                "case": case.name,
                "batch": len(case.past_len),
                "block": int(feed["n_new"].max()),
                "past": int(feed["past_len"].max()),
                "k": int(feed["out_index"].shape[1]),
                "logits_max_abs_diff": diff,
                "tolerance": tol,
                "confidence_max_abs_diff": float(
                    np.abs(got["confidence"] - ref["confidence"]).max()
                ),
                "kv_max_abs_diff": kv,
                "greedy_tokens_equal": tokens_ok,
                "sampled_tokens_equal": bool(np.array_equal(got["token"], ref["token"])),
                "ok": diff <= tol and tokens_ok and kv <= tol,
            }
        )
    return {
        "ok": all(r["ok"] for r in rows),
        "logits_max_abs_diff": max(r["logits_max_abs_diff"] for r in rows),
        "logits_atol": LOGITS_ATOL,
        "cases": rows,
    }


GEN_SETTINGS: dict[str, dict] = {
    "ar": {"mode": "ar"},
    "diffusion": {"mode": "diffusion", "threshold": 0.9},
    "diffusion-low-threshold": {"mode": "diffusion", "threshold": 0.3},
    "diffusion-steps": {"mode": "diffusion", "steps": 4},
    "self_spec": {"mode": "self_spec"},
    "self_spec-penalties": {
        "mode": "self_spec",
        "repetition_penalty": 1.3,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.3,
    },
}


def generation_modes(cfg: ModelConfig) -> list[str]:
    """The settings a model supports (fully bidirectional families: diffusion only)."""
    return [n for n, s in GEN_SETTINGS.items() if cfg.uses_kv_cache or s["mode"] == "diffusion"]


def agreement(ref, got) -> float:
    """Share of positions where two runs' tokens are equal (over the longer of each pair)."""
    same = sum(
        sum(x == y for x, y in zip(a.token_ids, b.token_ids, strict=False))
        for a, b in zip(ref, got, strict=True)
    )
    total = sum(max(len(a.token_ids), len(b.token_ids)) for a, b in zip(ref, got, strict=True))
    return same / max(total, 1)


def lossless(engine: Engine, prompts: list[list[int]], max_tokens: int) -> dict:
    """self_spec against ar on one engine, greedy, one ragged batch: {"ok": identical,
    "agreement": share of equal tokens} (auto runs the same verification)."""
    runs = {
        mode: generate(
            engine, [GenerationRequest(list(p), mode=mode, max_tokens=max_tokens) for p in prompts]
        )
        for mode in ("ar", "self_spec")
    }
    same = [a.token_ids == b.token_ids for a, b in zip(runs["ar"], runs["self_spec"], strict=True)]
    return {
        "ok": all(same),
        "agreement": round(agreement(runs["ar"], runs["self_spec"]), 4),
        "prompts": len(prompts),
    }


def generation_parity(
    reference: Engine,
    engine: Engine,
    prompts: list[list[int]],
    max_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    end_id: int | None = None,
) -> dict:
    """Whole generations, every supported mode, all prompts in one ragged batch.

    Returns {"ok", "modes": {name: {...}}}; `ok` requires identical token ids and pass counts.
    """
    cfg = reference.config
    block = cfg.block_length
    modes = {}
    for name in generation_modes(cfg):
        knobs = dict(GEN_SETTINGS[name])
        if knobs.get("steps") and block % knobs["steps"]:
            knobs["steps"] = 1

        def requests(knobs: dict = knobs) -> list[GenerationRequest]:
            return [
                GenerationRequest(
                    list(p),
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed + i,
                    end_id=end_id,
                    **knobs,
                )
                for i, p in enumerate(prompts)
            ]

        ref, got = generate(reference, requests()), generate(engine, requests())
        mismatch = [
            i
            for i, (a, b) in enumerate(zip(ref, got, strict=True))
            if a.token_ids != b.token_ids or a.num_forward_passes != b.num_forward_passes
        ]
        first = None
        if mismatch:
            a, b = ref[mismatch[0]].token_ids, got[mismatch[0]].token_ids
            pos = next(
                (j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            first = {
                "prompt": mismatch[0],
                "position": pos,
                "reference": a[pos : pos + 5],
                "engine": b[pos : pos + 5],
            }
        modes[name] = {
            "identical": not mismatch,
            "agreement": round(agreement(ref, got), 4),
            "prompts": len(prompts),
            "tokens": sum(r.num_output_tokens for r in ref),
            "passes": sum(r.num_forward_passes for r in ref),
            "first_mismatch": first,
        }
    return {
        "ok": all(m["identical"] for m in modes.values()),
        "temperature": temperature,
        "max_tokens": max_tokens,
        "modes": modes,
    }


PROMPT_TEXTS = (
    "def fibonacci(n):\n",
    "import os\n\n\nclass Config:\n    def __init__(self, path):\n",
    "for i in range(10):\n    print(",
    "# Read a file line by line\nwith open(",
)


def parity_prompts(cfg: ModelConfig, tokenizer=None, n: int = 4, seed: int = 0) -> list[list[int]]:
    """Prompts of different lengths: code snippets if a tokenizer is given, else random ids."""
    if tokenizer is not None:
        return [tokenizer.encode(t) for t in PROMPT_TEXTS[:n]]
    rng = np.random.default_rng(seed)
    lo = min(4, cfg.vocab_size - 1)
    return [rng.integers(lo, cfg.vocab_size, int(rng.integers(2, 24))).tolist() for _ in range(n)]


def format_pass_parity(report: dict) -> list[str]:
    lines = []
    for r in report["cases"]:
        lines.append(
            f"  {r['case']:<24} B={r['batch']} T={r['block']:<3} P={r['past']:<3} "
            f"K={r['k']:<3} logits diff {r['logits_max_abs_diff']:.2e} "
            f"(tol {r['tolerance']:.1e})  conf {r['confidence_max_abs_diff']:.1e}  "
            f"kv {r['kv_max_abs_diff']:.1e}  tokens "
            f"{'equal' if r['greedy_tokens_equal'] else 'DIFFER'}"
            f"{'' if r['ok'] else '  FAIL'}"
        )
    return lines


def format_generation_parity(report: dict) -> list[str]:
    lines = []
    for name, m in report["modes"].items():
        verdict = "identical" if m["identical"] else f"DIFFER {m['first_mismatch']}"
        lines.append(
            f"  {name:<24} {m['prompts']} prompts, {m['tokens']} tokens, "
            f"{m['passes']} passes: {verdict}"
        )
    return lines


def save_polygraphy_inputs(cfg: ModelConfig, path: str) -> int:
    """The pass cases' inputs as a Polygraphy JSON list (`polygraphy run --load-inputs`)."""
    from polygraphy.json import save_json

    feeds = [case_inputs(cfg, c, seed=i) for i, c in enumerate(pass_cases(cfg.block_length))]
    save_json(feeds, path)
    return len(feeds)


def main(argv: list[str] | None = None) -> int:
    """`python -m export.parity --model DIR --save-inputs FILE`: inputs for `polygraphy run`."""
    import argparse
    import json
    from pathlib import Path

    from dlm.hf_config import config_from_hf

    p = argparse.ArgumentParser(prog="python -m export.parity")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--save-inputs", required=True, help="Polygraphy JSON file to write")
    args = p.parse_args(argv)
    cfg = config_from_hf(json.loads((Path(args.model) / "config.json").read_text()))
    n = save_polygraphy_inputs(cfg, args.save_inputs)
    print(f"wrote {n} input sets to {args.save_inputs}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
