"""Block diffusion decoding with Nemotron-Labs Diffusion's causal context.

The prompt is prefilled causally and its last position seeds the first token of the block; the
block's other positions start masked and are filled by block-bidirectional denoise passes that
read the KV cache without writing it (by confidence threshold, by Fast-dLLM's factor rule, or
a fixed number of passes per block with LLaDA's low-confidence remasking); one causal pass then
writes the finished block to the cache and seeds the next block.

`cache` picks how the context is kept; the same schedule gives the same tokens and passes with
each (tested), only the cost of a pass differs:
- "full" (ours, Nemotron-Labs style): the KV cache above; a pass carries only its block.
- "prefix" (Fast-dLLM style prefix cache): the cache is rebuilt once per block, by a commit pass
  that recomputes the whole context; the block's denoise passes read it.
- "none" (the LLaDA reference): no cache, every pass recomputes the whole sequence.
Fully bidirectional families (LLaDA, Dream) have no causal passes: every block starts fully
masked and every pass recomputes the sequence, whatever `cache` says (semi-autoregressive block
decoding, LLaDA, Nie et al. 2025, with the current block last).
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from dlm.engine import PassRequest, PassResult
from dlm.sampling.select import by_count, by_factor, by_threshold, schedule
from dlm.sampling.sequence import BlockStats, Sequence

CACHES = ("full", "prefix", "none")


def check_cache(cache: str) -> str:
    if cache not in CACHES:
        raise ValueError(f"cache={cache!r}: must be one of {', '.join(CACHES)}")
    return cache


def diffusion(seq: Sequence, cache: str = "full") -> Generator[PassRequest, PassResult, None]:
    check_cache(cache)
    r, cfg = seq.request, seq.cfg
    causal = cfg.uses_kv_cache
    read = causal and cache != "none"  # denoise passes read a cache of the context
    context = list(r.prompt_ids)  # committed tokens: prompt and finished blocks
    cached = 0
    seed_token: int | None = None
    if causal:
        out = yield seq.make_pass(0, context, tail=0, write=read, n_out=1)
        cached = len(context) if read else 0
        seed_token = int(out.tokens[-1])

    while not seq.done:
        size = min(r.block_length, seq.remaining)
        block = np.full(size, cfg.mask_token_id, np.int64)
        masked = np.ones(size, bool)
        if seed_token is not None:
            block[0], masked[0] = seed_token, False
        plan = schedule(int(masked.sum()), r.steps) if r.steps else None
        flushed = _flush(seq, block, masked, 0)
        passes = 0
        while masked.any() and not seq.done:
            seq.block_view = block[flushed:].tolist()  # the block past what was committed
            if read:
                p = seq.make_pass(cached, block.tolist(), tail=size, write=False, n_out=size)
            else:
                tail = size if causal else len(context) + size
                p = seq.make_pass(0, context + block.tolist(), tail=tail, write=False, n_out=size)
            out = yield p
            passes += 1
            if plan is not None:
                chosen = by_count(out.confidence, masked, plan[passes - 1])
            elif r.factor is not None:
                chosen = by_factor(out.confidence, masked, r.factor)
            else:
                chosen = by_threshold(out.confidence, masked, r.threshold)
            block[chosen] = out.tokens[chosen]
            masked &= ~chosen
            flushed = _flush(seq, block, masked, flushed)
        seq.block_view = None
        if seq.done:
            seq.blocks.append(BlockStats(tokens=flushed, passes=passes))
            return
        context += block.tolist()
        if causal:
            # One causal pass commits the block to the cache; its last position seeds the next.
            if cache == "full":
                out = yield seq.make_pass(cached, block.tolist(), tail=0, write=True, n_out=1)
                cached += size
            else:  # the whole context again; "prefix" keeps it as the next block's cache
                out = yield seq.make_pass(0, context, tail=0, write=read, n_out=1)
                cached = len(context) if read else 0
            passes += 1
            seed_token = int(out.tokens[-1])
        seq.blocks.append(BlockStats(tokens=size, passes=passes))


def _flush(seq: Sequence, block: np.ndarray, masked: np.ndarray, flushed: int) -> int:
    """Commit the block's newly unmasked contiguous prefix (what a stream can show in order)."""
    end = flushed
    while end < len(block) and not masked[end]:
        end += 1
    if end > flushed:
        seq.commit([int(t) for t in block[flushed:end]])
    return end
