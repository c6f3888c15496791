"""Per-request state shared by every policy: output, stopping rules, forward-pass count, stats."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dlm.config import ModelConfig
from dlm.engine import PassRequest
from dlm.passes import NO_PENALTIES
from dlm.sampling.request import GenerationRequest

_M32 = 0xFFFFFFFF


def pass_seed(request_seed: int, position: int) -> int:
    """The noise seed of a pass whose first output sits at `position` of the sequence. The op
    keys output t's noise by hash32(seed + t) (plugins/denoise_step/contract.py), so each
    position of a request has one noise whichever pass samples it: a self_spec verify slot draws
    what an `ar` step at that position draws, and self-speculation samples exactly `ar`'s tokens
    at temperature > 0 too. A function of the request's seed and the position only: a request
    samples the same tokens alone or in any batch."""
    x = (request_seed ^ (request_seed >> 32)) & _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return ((x ^ (x >> 16)) + position) & _M32


@dataclass
class BlockStats:
    tokens: int  # tokens committed by this block or round
    passes: int  # forward passes it took
    draft: int = 0  # self_spec: draft tokens the round verified (tokens - 1 of them accepted)
    size: int = 0  # self_spec: the round's block size (1: an AR step)
    next_draft: int = 0  # self_spec: the draft it made for the next round


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
    ) -> PassRequest:
        """A pass of this sequence; counts it (every pass counts, prefill and commit included).
        Penalties count the committed output and, for output k, `known[:k]`: the tokens this
        pass carries past the output that precede what output k predicts (self_spec's draft)."""
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
            float(r.temperature),
            pass_seed(r.seed, start + len(tokens) - n_out),
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
