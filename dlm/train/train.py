"""Train the default model: joint AR + block-diffusion pre-training, then self-distillation.

    python -m dlm.train.train --corpus build/corpus --out models/default [--device auto]
        [--pretrain-minutes 80 --distill-minutes 30 | --pretrain-steps N --distill-steps N]

Phase 1 (pre-training) minimises L_AR + w L_diff (`objective.py`) on windows of the corpus and
keeps the checkpoint with the best held-out AR loss. Phase 2 (self-distillation) is what makes
parallel decoding confident: the model's own greedy AR continuations of corpus prefixes become
training data, so the diffusion targets are a deterministic function of the prefix (the idea of
consistency / "certainty forcing" distillation for diffusion LMs); half of each batch stays real
data so AR quality holds. Continuations are regenerated every round from the current model.

Seeded and resumable (`--resume` continues from WORK/state.pt). Time budgets make the schedule
depend on speed; step budgets are exactly reproducible.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dlm import checkpoint
from dlm.config import preset
from dlm.model import DiffusionLM
from dlm.train.objective import joint_loss


@dataclass
class Recipe:
    preset: str = "default"
    seq_len: int = 256
    batch: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.1
    dropout: float = 0.1
    diffusion_weight: float = 1.0
    complementary: bool = True
    full_mask_share: float = 0.0  # share of blocks masked entirely in the diffusion copy
    block: int = 32
    pretrain_minutes: float = 80.0
    pretrain_steps: int = 0  # > 0: a step budget instead of minutes
    distill_minutes: float = 30.0
    distill_steps: int = 0
    distill_prefix: int = 64
    distill_rounds: int = 3
    distill_sequences: int = 2048  # continuations generated per round
    distill_lr: float = 1e-3
    distill_fraction: float = 0.5  # share of each distillation batch that is self-generated
    eval_every: int = 200
    eval_windows: int = 64
    seed: int = 0


class Budget:
    """Progress in [0, 1] of a phase, by steps or by wall-clock minutes."""

    def __init__(self, steps: int, minutes: float, elapsed: float = 0.0) -> None:
        self.steps, self.seconds = steps, minutes * 60
        self.start = time.perf_counter() - elapsed

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> float:
        if self.steps > 0:
            return step / self.steps
        return self.elapsed() / max(self.seconds, 1e-9)


def lr_at(r: Recipe, base: float, step: int, progress: float) -> float:
    if step < r.warmup:
        return base * (step + 1) / r.warmup
    cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return base * (r.min_lr_ratio + (1 - r.min_lr_ratio) * cos)


def windows(tokens: np.ndarray, n: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    starts = rng.integers(0, len(tokens) - length - 1, size=n)
    return torch.from_numpy(np.stack([tokens[s : s + length] for s in starts]).astype(np.int64))


@torch.no_grad()
def greedy_continue(model: DiffusionLM, prompts: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy AR continuations [N, P + steps] of prompts [N, P], batched, with a KV cache."""
    model.eval()
    b, p = prompts.shape
    cfg, dev = model.cfg, prompts.device
    dtype = next(model.parameters()).dtype
    total = p + steps
    k_all = torch.zeros(
        cfg.num_layers, b, cfg.num_kv_heads, total, cfg.head_dim, device=dev, dtype=dtype
    )
    v_all = torch.zeros_like(k_all)
    empty = model.empty_past(b, dev, dtype)
    pos = torch.arange(p, device=dev)[None].expand(b, -1)
    causal = torch.ones(p, p, dtype=torch.bool, device=dev).tril()[None].expand(b, -1, -1)
    h, k, v = model.hidden(prompts, pos, causal, *empty)
    k_all[:, :, :, :p], v_all[:, :, :, :p] = k, v
    out = [prompts, model.logits(h[:, -1:]).argmax(-1)]
    for i in range(p, total - 1):
        pos = torch.full((b, 1), i, device=dev)
        mask = torch.ones(b, 1, i + 1, dtype=torch.bool, device=dev)
        h, k, v = model.hidden(out[-1], pos, mask, k_all[:, :, :, :i], v_all[:, :, :, :i])
        k_all[:, :, :, i : i + 1], v_all[:, :, :, i : i + 1] = k, v
        out.append(model.logits(h).argmax(-1))
    return torch.cat(out, dim=1)


class Trainer:
    def __init__(self, r: Recipe, corpus: Path, work: Path, device: str) -> None:
        self.r, self.work, self.dev = r, work, torch.device(device)
        torch.manual_seed(r.seed)
        self.rng = np.random.default_rng(r.seed)
        self.train = np.load(corpus / "train.npy")
        self.heldout = np.load(corpus / "heldout.npy")
        cfg = preset(r.preset, dropout=r.dropout, block_length=r.block)
        self.model = DiffusionLM(cfg).to(self.dev)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=r.lr, betas=(0.9, 0.95), weight_decay=r.weight_decay
        )
        self.eval_x = windows(
            self.heldout, r.eval_windows, r.seq_len, np.random.default_rng(1234)
        ).to(self.dev)
        self.log: list[dict] = []
        self.best: tuple[float, dict] | None = None
        self.phase, self.step, self.elapsed = "pretrain", 0, 0.0

    def autocast(self):
        """bf16 autocast on CUDA; full precision on the CPU."""
        return torch.autocast(self.dev.type, torch.bfloat16, enabled=self.dev.type == "cuda")

    def loss(self, x: torch.Tensor, gen: torch.Generator | None = None) -> dict:
        r = self.r
        with self.autocast():
            return joint_loss(
                self.model,
                x,
                r.block,
                r.diffusion_weight,
                r.complementary,
                generator=gen,
                full_share=r.full_mask_share if self.model.training else 0.0,  # eval: as always
            )

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        gen = torch.Generator(self.dev).manual_seed(99)
        out = {"ar": 0.0, "diffusion": 0.0, "diff_acc": 0.0}
        chunks = self.eval_x.split(16)
        for x in chunks:
            m = self.loss(x, gen)
            for k in out:
                out[k] += float(m[k]) / len(chunks)
        self.model.train()
        out["ar_ppl"] = math.exp(out["ar"])
        return out

    def train_phase(self, name: str, steps: int, minutes: float, base_lr: float, batches) -> None:
        budget = Budget(steps, minutes, self.elapsed if self.phase == name else 0.0)
        if self.phase != name:
            self.phase, self.step = name, 0
        self.model.train()
        bar = tqdm(desc=name, unit="step", dynamic_ncols=True, mininterval=5)
        tokens, t0 = 0, time.perf_counter()
        while budget.progress(self.step) < 1.0:
            x = next(batches).to(self.dev)
            lr = lr_at(self.r, base_lr, self.step, budget.progress(self.step))
            for g in self.opt.param_groups:
                g["lr"] = lr
            m = self.loss(x)
            self.opt.zero_grad(set_to_none=True)
            m["loss"].backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.step += 1
            tokens += x.numel()
            bar.update(1)
            if self.step % 20 == 0:
                bar.set_postfix(
                    ar=f"{float(m['ar']):.3f}",
                    diff=f"{float(m['diffusion']):.3f}",
                    tok_s=f"{tokens / (time.perf_counter() - t0):.0f}",
                    lr=f"{lr:.1e}",
                )
            if self.step % self.r.eval_every == 0:
                self.checkpoint_eval(budget, tokens / (time.perf_counter() - t0))
        bar.close()
        self.checkpoint_eval(budget, tokens / max(time.perf_counter() - t0, 1e-9))

    def checkpoint_eval(self, budget: Budget, tok_s: float) -> None:
        ev = self.evaluate()
        ev.update(
            phase=self.phase,
            step=self.step,
            minutes=round(budget.elapsed() / 60, 2),
            train_tokens_per_s=round(tok_s),
        )
        self.log.append(ev)
        tqdm.write(
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in ev.items()})
        )
        # Pre-training keeps the best held-out AR loss; distillation keeps its latest state
        # (its purpose is to change the diffusion behaviour), unless AR quality collapses.
        score = ev["ar"]
        if self.phase == "pretrain" and (self.best is None or score < self.best[0]):
            self.best = (score, {k: v.detach().clone() for k, v in self.model.state_dict().items()})
        self.elapsed = budget.elapsed()
        self.save_state()

    def pretrain_batches(self):
        while True:
            yield windows(self.train, self.r.batch, self.r.seq_len, self.rng)

    def distill_batches(self):
        r = self.r
        round_steps = max(1, r.distill_steps // r.distill_rounds) if r.distill_steps else 0
        round_seconds = r.distill_minutes * 60 / r.distill_rounds
        own = max(1, round(r.batch * r.distill_fraction))
        while True:
            data = self.continuations()
            t0, n = time.perf_counter(), 0
            while n < round_steps if round_steps else time.perf_counter() - t0 < round_seconds:
                idx = torch.from_numpy(self.rng.integers(0, len(data), size=own))
                yield torch.cat(
                    [data[idx], windows(self.train, r.batch - own, r.seq_len, self.rng)]
                )
                n += 1

    def continuations(self) -> torch.Tensor:
        """The current model's greedy continuations of random corpus prefixes."""
        r = self.r
        prompts = windows(self.train, r.distill_sequences, r.distill_prefix, self.rng)
        self.model.eval()
        t0 = time.perf_counter()
        seqs = []
        for chunk in prompts.split(1024):
            with self.autocast():
                seqs.append(
                    greedy_continue(
                        self.model, chunk.to(self.dev), r.seq_len - r.distill_prefix
                    ).cpu()
                )
        self.model.train()
        tqdm.write(
            f"distill: {r.distill_sequences} greedy continuations of "
            f"{r.seq_len - r.distill_prefix} tokens in {time.perf_counter() - t0:.1f}s"
        )
        return torch.cat(seqs)

    def save_state(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": self.model.state_dict(),
                "opt": self.opt.state_dict(),
                "phase": self.phase,
                "step": self.step,
                "elapsed": self.elapsed,
                "log": self.log,
                "best": self.best,
                "rng": self.rng.bit_generator.state,
                "recipe": asdict(self.r),
            },
            self.work / "state.pt",
        )

    def resume(self) -> None:
        s = torch.load(self.work / "state.pt", map_location=self.dev, weights_only=False)
        shape = ("preset", "seq_len", "block", "complementary")
        saved = {k: s["recipe"].get(k) for k in shape}
        wanted = {k: getattr(self.r, k) for k in shape}
        if saved != wanted:
            raise SystemExit(
                f"--resume: {self.work / 'state.pt'} was saved by a different recipe ({saved}, "
                f"this run: {wanted}); delete {self.work} or pass the same recipe"
            )
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.phase, self.step, self.elapsed = s["phase"], s["step"], s["elapsed"]
        self.log, self.best = s["log"], s["best"]
        self.rng.bit_generator.state = s["rng"]
        print(f"resumed {self.phase} at step {self.step} ({self.elapsed / 60:.1f} min)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dlm.train.train", description=__doc__)
    ap.add_argument("--corpus", type=Path, default=Path("build/corpus"))
    ap.add_argument("--out", type=Path, default=Path("models/default"))
    ap.add_argument("--work", type=Path, default=Path("build/train"))
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this model folder's weights (e.g. to distill further)",
    )
    ap.add_argument("--shard-mb", type=float, default=15.0, help="safetensors shard size")
    for f, v in asdict(Recipe()).items():
        ap.add_argument(
            "--" + f.replace("_", "-"),
            type=type(v)
            if not isinstance(v, bool)
            else lambda s: s.lower() in ("1", "true", "yes"),
            default=v,
        )
    args = ap.parse_args(argv)
    recipe = Recipe(**{f: getattr(args, f) for f in asdict(Recipe())})
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    tr = Trainer(recipe, args.corpus, args.work, device)
    print(
        f"model: {tr.model.num_parameters() / 1e6:.2f} M parameters on {device}; "
        f"corpus {len(tr.train) / 1e6:.2f} M train tokens; recipe {asdict(recipe)}"
    )
    if args.resume and (args.work / "state.pt").exists():
        tr.resume()
    elif args.init is not None:
        tr.model.load_state_dict(checkpoint.load(args.init).state_dict())
        print(f"initialised from {args.init}")
    if tr.phase == "pretrain" and (recipe.pretrain_steps > 0 or recipe.pretrain_minutes > 0):
        tr.train_phase(
            "pretrain",
            recipe.pretrain_steps,
            recipe.pretrain_minutes,
            recipe.lr,
            tr.pretrain_batches(),
        )
        if tr.best is not None:
            tr.model.load_state_dict(tr.best[1])
            print(f"kept the best pre-training checkpoint: held-out AR loss {tr.best[0]:.4f}")
    if recipe.distill_steps > 0 or recipe.distill_minutes > 0:
        tr.r.warmup = 0 if tr.phase == "distill" else min(recipe.warmup, 50)
        tr.train_phase(
            "distill",
            recipe.distill_steps,
            recipe.distill_minutes,
            recipe.distill_lr,
            tr.distill_batches(),
        )
    export(tr, args.corpus, args.out, int(args.shard_mb * 1e6))
    return 0


def export(tr: Trainer, corpus: Path, out: Path, shard_bytes: int) -> None:
    """Write the model folder: bf16 safetensors shards, config, tokenizer, defaults, log."""
    import shutil

    model = tr.model.float().cpu().eval()
    model.cfg.dropout = 0.0
    checkpoint.save(model, out, max_shard_bytes=shard_bytes, dtype=torch.bfloat16)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(corpus / name, out / name)
    (out / "generation_config.json").write_text(
        json.dumps(
            {"mode": "diffusion", "block_length": tr.r.block, "threshold": 0.9, "max_tokens": 64},
            indent=2,
        )
        + "\n"
    )
    (out / "training_log.json").write_text(
        json.dumps(
            {"recipe": asdict(tr.r), "evals": tr.log, "parameters": model.num_parameters()},
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
