"""Per-request state shared by every policy: output, stopping rules, forward-pass count, stats."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dlm.config import ModelConfig
from dlm.engine import PassRequest
from dlm.passes import NO_PENALTIES
from dlm.sampling.request import GenerationRequest
from plugins.denoise_step.contract import HASH_MUL1, HASH_MUL2
from plugins.denoise_step.contract import MASK32 as _M32


def _hash32(x: int) -> int:
    """lowbias32 of a 32-bit value (plugins/denoise_step/contract.py)."""
    x ^= x >> 16
    x = (x * HASH_MUL1) & _M32
    x ^= x >> 15
    x = (x * HASH_MUL2) & _M32
    return x ^ (x >> 16)


def pass_seed(request_seed: int, position: int, draw: int = 0) -> int:
    """The noise seed of a pass whose first output sits at `position` of the sequence. The op
    keys output t's noise by hash32(seed + t) (plugins/denoise_step/contract.py), so each
    position of a request has one noise whichever pass samples it: a self_spec verify slot draws
    what an `ar` step at that position draws, and self-speculation samples exactly `ar`'s tokens
    at temperature > 0 too. A function of the request's seed and the position only: a request
    samples the same tokens alone or in any batch. `draw` > 0 names another draw at the same
    positions (the canvas policy samples a canvas once per denoising step; 0: the only one)."""
    x = _hash32((request_seed ^ (request_seed >> 32)) & _M32)
    if draw:
        x = _hash32(x ^ _hash32(draw & _M32))
    return (x + position) & _M32


@dataclass
class BlockStats:
    tokens: int  # tokens committed by this block or round
    passes: int  # forward passes it took
    draft: int = 0  # self_spec: draft tokens the round verified (tokens - 1 of them accepted)
    size: int = 0  # self_spec: the round's block size (1: an AR step)
    forked: bool = False  # self_spec: the round carried the fork


@dataclass
class Sequence:
    """One request in flight. Policies read `request`, call `make_pass` and `commit`."""

    seq_id: int
    request: GenerationRequest
    cfg: ModelConfig
    output: list[int] = field(default_factory=list)
    nfe: int = 0
    done: bool = False
    finish_reason: str | None = None
    blocks: list[BlockStats] = field(default_factory=list)
    # For live displays: the block being decoded past the committed text (diffusion: decided
    # tokens and mask ids; self_spec: the draft being verified, then masks); None in ar.
    block_view: list[int] | None = None
    on_commit: Callable[[Sequence, list[int]], None] | None = None
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0

    @property
    def remaining(self) -> int:
        return self.request.max_tokens - len(self.output)

    def make_pass(
        self,
        start: int,
        tokens: list[int],
        tail: int,
        write: bool,
        n_out: int,
        fork: int = 0,
        known: list[int] = (),
        temperature: float | None = None,
        draw: int = 0,
    ) -> PassRequest:
        """A pass of this sequence; counts it (every pass counts, prefill and commit included).
        Penalties count the committed output and, for output k, `known[:k]`: the tokens this
        pass carries past the output that precede what output k predicts (self_spec's draft).
        `temperature`: this pass's own (None: the request's); `draw`: see `pass_seed`."""
        self.nfe += 1
        r = self.request
        history, penalty_len = [], []
        if r.penalties != NO_PENALTIES:
            history = self.output + list(known)
            n = len(self.output)
            penalty_len = [n + min(k, len(known)) for k in range(n_out)]
        return PassRequest(
            self.seq_id,
            start,
            list(tokens),
            tail,
            write,
            n_out,
            float(r.temperature if temperature is None else temperature),
            pass_seed(r.seed, start + len(tokens) - n_out, draw),
            fork,
            r.penalties,
            history,
            penalty_len,
        )

    def commit(self, tokens: list[int]) -> None:
        """Append final tokens in order, stopping at end_id, a stop sequence or max_tokens."""
        if self.done:
            return
        new: list[int] = []
        for t in tokens:
            if t == self.request.end_id:
                self._finish("eos")
                break
            new.append(t)
            self.output.append(t)
            cut = self._stop_sequence_cut()
            if cut is not None:
                removed = len(self.output) - cut
                del self.output[cut:]
                new = new[: max(0, len(new) - removed)]
                self._finish("stop")
                break
            if self.remaining <= 0:
                self._finish("length")
                break
        if new and self.on_commit is not None:
            self.on_commit(self, new)

    def _stop_sequence_cut(self) -> int | None:
        for stop in self.request.stop_sequences:
            n = len(stop)
            if len(self.output) >= n and self.output[-n:] == stop:
                return len(self.output) - n
        return None

    def _finish(self, reason: str) -> None:
        self.done = True
        self.finish_reason = reason

    def finish(self, reason: str) -> None:
        if not self.done:
            self._finish(reason)
