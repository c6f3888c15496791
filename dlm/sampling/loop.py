"""The one decoding loop: every request is a policy generator; each step batches the next pass
of every request in flight into one engine call (step-level batching), or two where the engine's
cost model says padding the short rows to the long ones costs more (`CostModel.split`)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

from dlm import cost
from dlm.engine import Engine, PassRequest, PassResult
from dlm.gemma import MODEL_TYPE as GEMMA
from dlm.sampling.ar import ar
from dlm.sampling.auto import Planner, auto
from dlm.sampling.canvas import canvas
from dlm.sampling.diffusion import check_cache, diffusion
from dlm.sampling.request import GenerationRequest, Limits
from dlm.sampling.self_spec import always_fork, engine_forks, never_fork, round_rate, self_spec
from dlm.sampling.sequence import BlockStats, Sequence

Policy = Callable[[Sequence], Generator[PassRequest, PassResult, None]]

POLICIES: dict[str, Policy] = {"ar": ar, "diffusion": diffusion, "self_spec": self_spec}
# A family whose modes decode their own way (the config's `modes` says which it serves).
FAMILY_POLICIES: dict[str, dict[str, Policy]] = {GEMMA: {"diffusion": canvas}}


@dataclass
class GenerationResult:
    token_ids: list[int]
    num_forward_passes: int
    finish_reason: str
    blocks: list[BlockStats]
    seconds: float

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_forward(self) -> float:
        return self.num_output_tokens / max(1, self.num_forward_passes)


class Scheduler:
    """Requests in flight and their pending passes. `step()` runs one batched step."""

    def __init__(
        self,
        engine: Engine,
        limits: Limits | None = None,
        cache: str = "full",
        max_batch: int = 64,
    ) -> None:
        self.engine, self.limits, self.max_batch = engine, limits or Limits(), max_batch
        fork = always_fork if engine_forks(engine) else never_fork  # the build's decision
        self.policies = dict(POLICIES, self_spec=functools.partial(self_spec, fork=fork))
        if check_cache(cache) != "full":  # the reference samplers: see dlm.sampling.diffusion
            self.policies["diffusion"] = functools.partial(diffusion, cache=cache)
        self.policies.update(FAMILY_POLICIES.get(engine.config.family, {}))
        self.pending: dict[int, tuple[Sequence, Generator, PassRequest]] = {}
        # the engine's cost model if it was loaded with one (served engines), else measured
        # once an auto request comes: splits steps, and learns what a step costs here
        self.cost: cost.CostModel | None = cost.attached(engine)
        self.steps = 0
        self._last: tuple[int, float, float] | None = None  # the last step: rows, tokens, start
        self._next_id = 0

    def add(self, request: GenerationRequest, on_commit=None) -> Sequence:
        request.validate(self.engine.config, self.limits)
        seq = Sequence(self._next_id, request, self.engine.config, on_commit=on_commit)
        self._next_id += 1
        gen = self._policy(request.mode)(seq)
        self.pending[seq.seq_id] = (seq, gen, next(gen))
        return seq

    def _policy(self, mode: str) -> Policy:
        if mode == "auto" and "auto" not in self.policies:  # the engine's cost model, once
            self.cost = cost.for_engine(self.engine)
            planner = Planner(
                self.cost,
                rows=lambda: min(len(self.pending), self.max_batch),
                step=lambda: self.steps,
            )
            self.policies["auto"] = functools.partial(auto, planner=planner, fork=self._fork)
        return self.policies[mode]

    def _fork(self, tokens: int, branch: int, draft: int) -> bool:
        """Whether an auto round forks, by the cost model at the batch in flight were its whole
        draft accepted (`self_spec.round_rate`)."""
        if self.cost is None:
            return True
        rows = min(len(self.pending), self.max_batch)
        return round_rate(self.cost, rows, tokens, branch, 1 + draft)[1]

    def cancel(self, seq: Sequence) -> None:
        """Drop a request between passes and free its cache."""
        if seq.seq_id in self.pending:
            del self.pending[seq.seq_id]
            seq.finish("cancelled")
            self._close(seq)

    def step(self) -> list[Sequence]:
        """One step for up to max_batch requests; returns the requests that finished."""
        ids = list(self.pending)[: self.max_batch]
        passes = [self.pending[i][2] for i in ids]
        now = time.perf_counter()
        if self.cost is not None and self._last is not None:  # the cost model learns what a
            rows, tokens, start = self._last  # step costs here, from its start to the next's
            self.cost.observe(rows, tokens, now - start)
        results = self.run_passes(passes)
        self.steps += 1
        finished = []
        for i, res in zip(ids, results, strict=False):
            seq, gen, _ = self.pending[i]
            try:
                self.pending[i] = (seq, gen, gen.send(res))
            except StopIteration:
                del self.pending[i]
                self._close(seq)
                finished.append(seq)
        # back to back unless the scheduler went empty (the next step then starts after a wait)
        if self.cost is not None:  # learnt by the rows' mean tokens, as auto plans its rounds
            tokens = sum(len(p.tokens) for p in passes) / len(passes)
            self._last = (len(passes), tokens, now) if self.pending else None
        return finished

    def run_passes(self, passes: list[PassRequest]) -> list[PassResult]:
        """The passes' results, from one engine call, or two if the cost model splits the step
        (the rows with fewer tokens apart)."""
        order = sorted(range(len(passes)), key=lambda k: len(passes[k].tokens))
        cut = None
        if self.cost is not None and len(passes) > 1:
            cut = self.cost.split([len(passes[k].tokens) for k in order])
        if cut is None:
            return self.engine.step(passes)
        results: list[PassResult] = [None] * len(passes)  # type: ignore[list-item]
        for group in (order[:cut], order[cut:]):
            for k, res in zip(group, self.engine.step([passes[k] for k in group]), strict=True):
                results[k] = res
        return results

    def _close(self, seq: Sequence) -> None:
        seq.seconds = time.perf_counter() - seq.started
        self.engine.release(seq.seq_id)

    def __len__(self) -> int:
        return len(self.pending)


def generate(
    engine: Engine,
    requests: list[GenerationRequest],
    limits: Limits | None = None,
    cache: str = "full",
    on_commit=None,
) -> list[GenerationResult]:
    """Run a batch of requests to completion (all in flight together). `cache`: how diffusion
    keeps its context ("full", ours; "prefix" and "none": the reference samplers)."""
    sched = Scheduler(engine, limits, cache=cache, max_batch=max(1, len(requests)))
    seqs = [sched.add(r, on_commit) for r in requests]
    while len(sched):
        sched.step()
    return [to_result(s) for s in seqs]


def to_result(seq: Sequence) -> GenerationResult:
    return GenerationResult(
        list(seq.output), seq.nfe, seq.finish_reason or "length", seq.blocks, seq.seconds
    )
