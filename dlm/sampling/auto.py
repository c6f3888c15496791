"""`mode=auto`: self-speculation that picks each round's block size from the engine's measured
cost (`dlm.cost`, corrected by the scheduler's own step times) at the batch in flight and how
well the model has been drafting.

A round of size s verifies the draft made by the round before (at most s - 1 tokens) and drafts
the next with s masks, plus the fork's s when there is a draft to reject; s = 1 is a plain AR
step. The model drafts only where it is confident (self_spec cuts drafts at confidence 0.2), so
a round's draft varies in length, and how much of it is accepted too. Rounds held at size s
commit committed(s) tokens per row on average and carry 1 + drafted(s) + s tokens, plus the
fork's s P(a draft) where it pays (`self_spec.round_rate`), and auto picks the s, up to the
request's `block_length`, that maximises committed tokens per second:

    committed(s) / pass_seconds(rows in the batch, tokens of the round)

against 1 / pass_seconds(rows, 1) for an AR step. The figures of each size are counted over the
recent rounds of that size of the scheduler's auto requests that followed one of the same size
(`Drafting`), from priors for a size not tried yet; now and then a few steps take AR or a size
next to the best, in turn, so that the cost model and the figures keep up (`Planner`). A machine
where long passes cost about what short ones do gets long drafts; one where they are dear (a
busy CPU, a large batch) gets AR steps.

Lossless: every round is a self_spec round, whose committed tokens are the verifier's, so the
output equals `ar` token for token, greedy or with the same seed (tested over ragged batches).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from dlm.cost import CostModel
from dlm.sampling.self_spec import FORK_GAIN, ForkRule, always_fork, round_rate, self_spec
from dlm.sampling.sequence import BlockStats, Sequence

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)  # candidate block sizes
# Before the first rounds, worth PRIOR_ROUNDS rounds: a round drafts at least one token 9 times
# in 10, its drafts are 3 tokens long on average, and each draft token is accepted, after the
# ones before it, 4 times in 5 (the shipped model drafts 2-3 tokens and accepts about 0.6 of them).
PRIOR_FIRST, PRIOR_DRAFT, PRIOR_ACCEPT, PRIOR_ROUNDS = 0.9, 3.0, 0.8, 8
# rounds (of every size): the statistics follow about this many recent ones, about 40 requests
# of 64 tokens at c=1
MEMORY = 1024
# Now and then EXPLORE_STEPS steps in a row take another choice (AR, a neighbouring size or
# speculation: `Planner.others`, in turn), so that the cost model keeps measuring it (it learns
# a step only after one of the same shape: the first pays for what the step before left,
# `CostModel.observe`) and the drafting statistics its rounds (`Drafting.observe`: likewise):
# no more often than every EXPLORE steps, nor than keeps the tokens the other choice is expected
# to lose within EXPLORE_BUDGET of the steps' (where its steps take 3.5x as long and commit 20%
# fewer tokens per second, as speculation at 16 rows on the 2-core CPU served, once in 560).
# Every switch costs a round more (the first round after it verifies a draft made in another
# block): in process at c=1 auto ran 0.92-0.96x self_spec block 4 exploring at most every 16
# steps within 2%, 0.99-1.08x at most every 48 within 0.5% (benchmarks/results/auto_per_size_cpu).
EXPLORE = 48
# The best size is worked out again every REDECIDE steps at the same rows (the statistics follow
# MEMORY rounds; the cost model's overheads about 20 steps): at 16 rows working it out every step
# took 0.3-0.5 ms of an 8 ms AR step in process on the 2-core CPU (28 pass-time lookups)
REDECIDE = 4
EXPLORE_STEPS = 4
EXPLORE_BUDGET = 0.005


def _prior(size: int) -> tuple[float, float, float]:
    """(committed, drafted, P(a draft)) of a round of `size` by the prior: the k-th draft token
    is there with PRIOR_FIRST * go_on ** (k - 1) and accepted, after the ones before it, with
    PRIOR_ACCEPT ** k (the geometric mean of the drafts' length is PRIOR_DRAFT)."""
    if size <= 1:
        return 1.0, 0.0, 0.0
    go_on = 1 - PRIOR_FIRST / PRIOR_DRAFT
    there = [PRIOR_FIRST * go_on ** (k - 1) for k in range(1, size)]
    committed = 1 + sum(p * PRIOR_ACCEPT**k for k, p in enumerate(there, 1))
    return committed, sum(there), PRIOR_FIRST


class Drafting:
    """How well the model drafts at each block size, over the recent speculative rounds of
    every auto request of a scheduler (one request's first rounds say little; an AR step says
    nothing, so the figures stay as they were while load keeps every request on AR steps): per
    size, the tokens a round commits, the draft tokens it verifies and how often it has a draft
    at all, over the last MEMORY or so rounds of any size (every size's over the same recent
    requests: the prompts' own acceptance varies more than the sizes' does), from PRIOR_ROUNDS
    rounds at the prior's figures (`_prior`).

    Measured per size, not predicted for one size from the rounds of another: the shipped
    model's drafts and their acceptance depend on the block they are drafted in (in process on
    the 2-core CPU, rounds held at size 4 committed 2.40 tokens and predicted, position by
    position, 2.82 at size 6 and 3.05 at 8; rounds of 6 and 8 committed 2.49 and 2.52, and
    from them size 4 was predicted at 2.10 and 1.97: auto drifted to blocks too long for what
    they bought). A size not tried yet keeps the prior's figures, above what the model does at
    the longer ones, so auto tries them. A size between two of SIZES (a request's bound, the
    last rounds of a request) counts with the one below it. A round whose draft came from the
    fork (the round before forked) commits what the fork added to it: it is counted without
    FORK_GAIN, which `round_rate` adds to the choices that fork."""

    def __init__(self) -> None:
        # size -> sums over its rounds, faded by every round counted since (lazily, when one
        # of its own comes: a mean is the same however much its sums fade)
        # [rounds, committed, drafted, rounds with a draft]
        self._sizes: dict[int, list[float]] = {}
        self._faded: dict[int, int] = {}  # size -> self._rounds when its sums were last faded
        self._rounds = 0  # rounds counted, of every size

    def _stats(self, size: int) -> tuple[int, list[float]]:
        """(the size of SIZES at or below `size`, its sums); a size never seen starts at the
        prior's figures."""
        size = SIZES[bisect.bisect_right(SIZES, size) - 1]
        if size not in self._sizes:
            self._sizes[size] = [PRIOR_ROUNDS * x for x in (1.0, *_prior(size))]
            self._faded[size] = self._rounds
        return size, self._sizes[size]

    def observe(self, round: BlockStats, before: BlockStats) -> None:
        """A round just finished, after the one `before` it: counted for its size only if that
        was of the same size (a round's draft is what the round before drafted: a round of 4
        after one of 2 verifies a draft of 1 at most, and one after an AR step none), so each
        size's figures are what rounds held at that size do."""
        if round.size <= 1 or before.size != round.size:
            return
        committed = round.tokens
        if before.forked:  # its draft may have come from the fork
            committed = 1 + (committed - 1) / (1 + FORK_GAIN)
        size, stats = self._stats(round.size)
        self._rounds += 1  # every round fades every size's sums once
        fade = (1.0 - 1.0 / MEMORY) ** (self._rounds - self._faded[size])
        for i, x in enumerate((1.0, committed, round.draft, round.draft > 0)):
            stats[i] = stats[i] * fade + x
        self._faded[size] = self._rounds

    def _mean(self, size: int, i: int) -> float:
        stats = self._stats(size)[1]
        return stats[i] / stats[0]

    def first(self, size: int) -> float:
        """P(D >= 1): a round of `size` has a draft to verify."""
        return self._mean(size, 3) if size > 1 else 0.0

    def drafted(self, size: int) -> float:
        """Draft tokens a round of `size` verifies, on average."""
        return self._mean(size, 2) if size > 1 else 0.0

    def committed(self, size: int) -> float:
        """Tokens a round of `size` commits per row without the fork: the accepted drafts and
        the bonus token."""
        return self._mean(size, 1) if size > 1 else 1.0

    def tokens(self, size: int) -> float:
        """Tokens of one row of a round without the fork: the pending token, the draft and the
        lookahead masks (1: a plain AR step)."""
        if size == 1:
            return 1
        return 1 + self.drafted(size) + size

    def branch(self, size: int) -> float:
        """The fork's tokens a round of `size` carries if it forks: s when there is a draft."""
        return size * self.first(size) if size > 1 else 0.0


def rate(cost: CostModel, rows: int, d: Drafting, size: int) -> float:
    """Tokens a row commits per second in rounds of `size` at `rows` rows, forked where that
    pays."""
    return round_rate(cost, rows, d.tokens(size), d.branch(size), d.committed(size))[0]


def explore_interval(cost: CostModel, rows: int, best: int, other: int, d: Drafting) -> int:
    """Steps from one exploration of `other` to the next while `best` is the choice (see
    EXPLORE): the tokens its steps are expected to lose (the time they take, at the rate they
    fall short by) within EXPLORE_BUDGET of what the steps between commit."""
    loss = 1 - rate(cost, rows, d, other) / rate(cost, rows, d, best)
    time = cost.pass_seconds(rows, d.tokens(other)) / cost.pass_seconds(rows, d.tokens(best))
    return max(EXPLORE, math.ceil(EXPLORE_STEPS * time * loss / EXPLORE_BUDGET))


def best_size(cost: CostModel, rows: int, d: Drafting, limit: int, smallest: int = 1) -> int:
    # ties (a flat cost past the drafts' length) go to the larger size: longer drafts may come
    sizes = [s for s in SIZES if smallest <= s < limit] + [limit]
    return max(sizes, key=lambda s: (rate(cost, rows, d, s), s))


class Planner:
    """The block size of every auto round of a scheduler: one decision per engine step (from the
    cost model at that step's rows and the drafting statistics), bounded by each request's own
    limit: every auto row of a step runs the same size, so none pads the others' passes."""

    def __init__(self, cost: CostModel, rows: Callable[[], int], step: Callable[[], int]) -> None:
        self.cost, self.rows, self.step = cost, rows, step
        self.drafting = Drafting()
        self._decided: tuple[int, int] | None = None  # (step, size)
        self._best: tuple[int, int, int] | None = None  # (rows, step, size) best_size said
        self._since = 0  # decisions since the last exploration began
        self._due = EXPLORE - 1  # when `_since` reaches it, the interval is worked out again
        self._exploring = 0  # steps of the current exploration still to take
        self._explored = 0  # explorations begun: whose turn it is among the others
        self._target = 1  # the current exploration's size

    def size(self, limit: int) -> int:
        """One decision per step, cheap beside an AR step: the best size worked out again when
        the batch's rows change or REDECIDE steps have passed, the exploration interval only
        when the last one runs out (benchmarks/results/planner_step_cpu)."""
        step = self.step()
        if self._decided is None or self._decided[0] != step:
            rows = self.rows()
            if self._best is None or self._best[0] != rows or step - self._best[1] >= REDECIDE:
                self._best = (rows, step, best_size(self.cost, rows, self.drafting, SIZES[-1]))
            size = self._best[2]
            if self._exploring == 0 and self._since >= self._due:
                others = self.others(rows, size)
                other = others[self._explored % len(others)]
                self._due = explore_interval(self.cost, rows, size, other, self.drafting) - 1
                if self._since >= self._due:  # the cost model and the drafting keep learning
                    self._exploring, self._since, self._due = EXPLORE_STEPS, -1, EXPLORE - 1
                    self._target, self._explored = other, self._explored + 1
            self._since += 1
            if self._exploring:
                size, self._exploring = self._target, self._exploring - 1
            self._decided = (step, size)
        return min(self._decided[1], limit)

    def others(self, rows: int, size: int) -> list[int]:
        """The choices that explorations take in turn while `size` is the best: AR and the
        sizes on either side of it while speculation is (the cost model keeps measuring AR
        steps, the drafting statistics the sizes it might move to), the best speculative size
        while AR is."""
        if size == 1:
            return [best_size(self.cost, rows, self.drafting, SIZES[-1], 2)]
        i = SIZES.index(size)
        return [1] + [s for s in SIZES[max(i - 1, 1) : i + 2] if s != size]


def auto(seq: Sequence, planner: Planner, fork: ForkRule = always_fork):
    """The policy generator; `fork` as for self_spec (the scheduler's rule)."""

    def size_rule(seq: Sequence, ready: list[int], limit: int) -> int:
        if len(seq.blocks) > 1:  # the round just finished (blocks[0] is the prefill's token)
            planner.drafting.observe(seq.blocks[-1], seq.blocks[-2])
        return planner.size(limit)

    return self_spec(seq, fork=fork, size_rule=size_rule)
