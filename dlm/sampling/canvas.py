"""Diffusion on a canvas: DiffusionGemma's decoding, as transformers' `generate` does it.

The prompt is encoded into the cache. Each canvas of `block_length` tokens starts as random
tokens; denoising step n of N (n counts the steps left: N first) samples a canvas from the
denoiser at temperature t_min + (t_max - t_min) * n / N, accepts the sampled tokens at the
positions of lowest entropy, k of them such that their entropy sum less the largest of them is
at most `entropy_bound` (at least one), and renoises every other position with fresh random
tokens. The canvas is done after N steps, or once its argmax held for `stability_threshold`
steps and its mean entropy is below `confidence_threshold`; its last argmax is committed and
one encode pass writes it to the cache before the next canvas. The engine keeps each step's
logits for the next (self-conditioning; dlm.gemma.engine).

Every random draw is counter-based: the sampled canvas is the DenoiseStep op's Gumbel-max and
the random tokens are `random_tokens`, both keyed by the request's seed, the canvas's position
and the step (`draw`), so a request gets the same tokens alone or in any batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator

import numpy as np

from dlm.engine import PassRequest, PassResult
from dlm.sampling.sequence import BlockStats, Sequence, pass_seed
from plugins.denoise_step.contract import MASK32, hash32_np

SAMPLE, RENOISE = 1, 2  # the two draws of a step


def draw(step: int, kind: int) -> int:
    """The draw of step `step` (N..1; the initial canvas is RENOISE of step N + 1)."""
    return 2 * step + kind


def random_tokens(seed: int, n: int, vocab_size: int) -> np.ndarray:
    """n uniform token ids [0, vocab_size) from a 32-bit seed: hash32(seed + i) scaled."""
    key = hash32_np((np.uint64(seed) + np.arange(n, dtype=np.uint64)) & np.uint64(MASK32))
    return ((key * np.uint64(vocab_size)) >> np.uint64(32)).astype(np.int64)


def accept_by_entropy(entropy: np.ndarray, bound: float) -> np.ndarray:
    """The positions accepted: the k lowest-entropy ones with sum - max <= bound (k >= 1)."""
    order = np.argsort(entropy, kind="stable")
    ranked = entropy[order].astype(np.float32)
    chosen = np.cumsum(ranked, dtype=np.float32) - ranked <= np.float32(bound)
    accepted = np.zeros(len(entropy), bool)
    accepted[order] = chosen
    return accepted


def canvas(seq: Sequence) -> Generator[PassRequest, PassResult, None]:
    r, vocab = seq.request, seq.cfg.vocab_size
    steps = r.max_denoising_steps
    yield seq.make_pass(0, r.prompt_ids, tail=0, write=True, n_out=0)
    cached = len(r.prompt_ids)
    while not seq.done:
        size = min(r.block_length, seq.cfg.max_position - cached)
        current = random_tokens(pass_seed(r.seed, cached, draw(steps + 1, RENOISE)), size, vocab)
        argmax = current
        history: deque[np.ndarray] = deque(maxlen=r.stability_threshold)
        done_steps = 0
        for n in range(steps, 0, -1):
            temperature = r.t_min + (r.t_max - r.t_min) * n / steps
            out = yield seq.make_pass(
                cached,
                current.tolist(),
                tail=size,
                write=False,
                n_out=size,
                temperature=temperature,
                draw=draw(n, SAMPLE),
            )
            done_steps += 1
            accepted = accept_by_entropy(out.entropy, r.entropy_bound)
            noise = random_tokens(pass_seed(r.seed, cached, draw(n, RENOISE)), size, vocab)
            current = np.where(accepted, out.tokens, noise)
            held = all((h == out.argmax).all() for h in history)
            stable = held and len(history) == history.maxlen
            history.append(out.argmax)
            argmax = out.argmax
            seq.block_view = argmax.tolist()
            if stable and out.entropy.mean() < r.confidence_threshold:
                break
        seq.block_view = None
        before = len(seq.output)
        seq.commit([int(t) for t in argmax])
        seq.blocks.append(BlockStats(tokens=len(seq.output) - before, passes=done_steps))
        if seq.done:
            return
        yield seq.make_pass(cached, argmax.tolist(), tail=0, write=True, n_out=0)
        cached += size
