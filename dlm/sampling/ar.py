"""Autoregressive decoding: one causal pass per token over the KV cache."""

from __future__ import annotations

from collections.abc import Generator

from dlm.engine import PassRequest, PassResult
from dlm.sampling.sequence import BlockStats, Sequence


def ar(seq: Sequence) -> Generator[PassRequest, PassResult, None]:
    prompt = seq.request.prompt_ids
    out = yield seq.make_pass(0, prompt, tail=0, write=True, n_out=1)
    cached = len(prompt)
    while True:
        token = int(out.tokens[-1])
        seq.commit([token])
        seq.blocks.append(BlockStats(tokens=1, passes=1))
        if seq.done:
            return
        out = yield seq.make_pass(cached, [token], tail=0, write=True, n_out=1)
        cached += 1
