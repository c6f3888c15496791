"""`mode=auto`: self-speculation that picks each round's block size from the engine's measured
cost (`dlm.cost`, corrected by the scheduler's own step times) at the batch in flight and how
well the model has been drafting.

A round of size s verifies the draft made by the round before (at most s - 1 tokens) and drafts
the next with s masks, plus the fork's s when there is a draft to reject; s = 1 is a plain AR
step. The model drafts only where it is confident (self_spec cuts drafts at confidence 0.2), so
its drafts have a length D that varies from round to round; the verifier accepts the k-th draft
token, after the ones before it, with a rate of its own at each position k. A round of size s
then commits 1 + sum over k < s of P(D >= k) P(the first k accepted) tokens per row and carries
1 + E[min(s - 1, D)] + s tokens, plus the fork's s P(D >= 1) where it pays
(`self_spec.round_rate`), and auto picks the s, up to the request's `block_length`, that
maximises committed tokens per second:

    committed(s) / pass_seconds(rows in the batch, tokens of the round)

against 1 / pass_seconds(rows, 1) for an AR step. The rates are counted position by position
over the recent rounds of the scheduler's auto requests (`Drafting`; a draft that ran out of
room did not stop, nor a draft accepted to its end: so the estimates, and the block size with
them, can grow past the size in use; past the positions seen, the last one's rate goes on).
A machine where long passes cost about what short ones do gets long drafts; one where they are
dear (a busy CPU, a large batch) gets AR steps.

Lossless: every round is a self_spec round, whose committed tokens are the verifier's, so the
output equals `ar` token for token, greedy or with the same seed (tested over ragged batches).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dlm.cost import CostModel
from dlm.sampling.self_spec import ForkRule, always_fork, round_rate, self_spec
from dlm.sampling.sequence import Sequence

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)  # candidate block sizes
# Before the first rounds, worth PRIOR_ROUNDS rounds: a round drafts at least one token 9 times
# in 10, its drafts are 3 tokens long on average, and each draft token is accepted, after the
# ones before it, 4 times in 5 (the shipped model drafts 2-3 tokens and accepts about 0.6 of them).
PRIOR_FIRST, PRIOR_DRAFT, PRIOR_ACCEPT, PRIOR_ROUNDS = 0.9, 3.0, 0.8, 8
MEMORY = 64  # rounds: the statistics follow about this many recent rounds
POSITIONS = SIZES[-1] - 1  # draft positions a round can verify, at most
# Now and then EXPLORE_STEPS steps in a row take the other choice (AR or speculation), so the
# cost model keeps measuring it (it learns a step only after one of the same shape: the first
# pays for what the step before left, `CostModel.observe`): no more often than every EXPLORE
# steps, nor than keeps the tokens the other choice is expected to lose within EXPLORE_BUDGET
# of the steps' (where its steps take 3.5x as long and commit 20% fewer tokens per second, as
# speculation at 16 rows on the 2-core CPU served, once in 140 steps).
EXPLORE = 16
# The best size is worked out again every REDECIDE steps at the same rows (the statistics follow
# MEMORY rounds; the cost model's overheads about 20 steps): at 16 rows working it out every step
# took 0.3-0.5 ms of an 8 ms AR step in process on the 2-core CPU (28 pass-time lookups)
REDECIDE = 4
EXPLORE_STEPS = 4
EXPLORE_BUDGET = 0.02


class _Chain:
    """P(X >= k) for k = 1, 2, ... as the product of the rates c_j = P(X >= j | X >= j - 1),
    each its own (hits, trials) counts at its position that fade over about MEMORY trials there,
    from PRIOR_ROUNDS trials at the prior's rates (`first` at position 1, `rest` past it). Past
    the last position that had a trial, the rate of that position goes on (positions before
    `rest_from` say nothing of the others: past them, the prior's rate)."""

    def __init__(self, first: float, rest: float, rest_from: int) -> None:
        self.hits = [first * PRIOR_ROUNDS] + [rest * PRIOR_ROUNDS] * (POSITIONS - 1)
        self.trials = [float(PRIOR_ROUNDS)] * POSITIONS
        self.rest_from, self.reached = rest_from, 0  # positions 1..reached had a trial

    def observe(self, went_on: int, tried: int) -> None:
        """Positions 1..tried were tried, and 1..went_on of them went on (went_on <= tried)."""
        keep = 1.0 - 1.0 / MEMORY
        tried = min(tried, POSITIONS)
        for k in range(tried):
            self.hits[k] = keep * self.hits[k] + (k < went_on)
            self.trials[k] = keep * self.trials[k] + 1
        self.reached = max(self.reached, tried)

    def survival(self) -> list[float]:
        """[P(X >= k) for k = 1..POSITIONS]."""
        # past `reached`, its rate goes on; before any trial reached `rest_from`, the positions
        # past `reached` still hold the prior's rates
        on = self.reached >= self.rest_from
        p, out = 1.0, []
        for k in range(POSITIONS):
            j = self.reached - 1 if on and k >= self.reached else k
            p *= self.hits[j] / self.trials[j]
            out.append(p)
        return out


def _prefix_sums(xs: list[float]) -> list[float]:
    sums = [0.0]
    for x in xs:
        sums.append(sums[-1] + x)
    return sums


class Drafting:
    """How well the model drafts, over the recent speculative rounds of every auto request of a
    scheduler (one request's first rounds say little; an AR step says nothing, so the figures
    stay as they were while load keeps every request on AR steps), position by position of a
    draft: P(D >= k), the chance that a round's draft reaches its k-th token, and P(the first k
    draft tokens accepted | D >= k), each a chain of per-position rates (`_Chain`). Measured per
    position, not as one rate for all: the shipped model's later draft tokens are accepted less
    than its first (at c=1 a geometric fit of its rounds predicted 16% more committed tokens at
    block 6 than at 4; rounds of 6 committed 4% more), and a block is worth what its last
    positions add. A draft that ran out of room, or was accepted to its end, tries no position
    past it: so the estimates, and the block size with them, can grow past the size in use."""

    def __init__(self) -> None:
        go_on = 1 - PRIOR_FIRST / PRIOR_DRAFT  # the geometric mean of D is first / (1 - go_on)
        self.drafts = _Chain(PRIOR_FIRST, go_on, rest_from=2)
        self.accepts = _Chain(PRIOR_ACCEPT, PRIOR_ACCEPT, rest_from=1)
        self._sums: tuple[list[float], list[float]] | None = None

    @property
    def first(self) -> float:
        """P(D >= 1): a round drafts at all."""
        return self.drafts.hits[0] / self.drafts.trials[0]

    def observe(self, size: int, draft: int, accepted: int, next_draft: int) -> None:
        if size == 1:
            return
        # the next draft comes from the lookahead if the whole draft was accepted, else from
        # the fork past the accepted tokens: at most that many positions were left to draft
        room = size - 1 if accepted == draft else size - 1 - accepted
        self.drafts.observe(next_draft, min(next_draft + 1, room))
        self.accepts.observe(accepted, min(accepted + 1, draft))
        self._sums = None

    def _cumulative(self) -> tuple[list[float], list[float]]:
        """(sums of P(D >= k), sums of P(the k-th draft token is committed)) over k < n, by n."""
        if self._sums is None:
            d, a = self.drafts.survival(), self.accepts.survival()
            self._sums = (
                _prefix_sums(d),
                _prefix_sums([x * y for x, y in zip(d, a, strict=True)]),
            )
        return self._sums

    def drafted(self, size: int) -> float:
        """E[min(size - 1, D)]: draft tokens a round of `size` verifies."""
        return self._cumulative()[0][min(size - 1, POSITIONS)]

    def committed(self, size: int) -> float:
        """Tokens a round of `size` commits per row: the bonus token and the accepted drafts
        (the k-th is there with P(D >= k) and accepted with P(the first k accepted))."""
        return 1 + self._cumulative()[1][min(size - 1, POSITIONS)]

    def tokens(self, size: int) -> float:
        """Tokens of one row of a round without the fork: the pending token, the draft and the
        lookahead masks (1: a plain AR step)."""
        if size == 1:
            return 1
        return 1 + self.drafted(size) + size

    def branch(self, size: int) -> float:
        """The fork's tokens a round of `size` carries if it forks: s when there is a draft."""
        return size * self.first if size > 1 else 0.0


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
                other = self._other(rows, size)
                self._due = explore_interval(self.cost, rows, size, other, self.drafting) - 1
                if self._since >= self._due:  # the cost model keeps learning both choices
                    self._exploring, self._since, self._due = EXPLORE_STEPS, -1, EXPLORE - 1
            self._since += 1
            if self._exploring:  # both choices at this batch
                size, self._exploring = self._other(rows, size), self._exploring - 1
            self._decided = (step, size)
        return min(self._decided[1], limit)

    def _other(self, rows: int, size: int) -> int:
        return 1 if size > 1 else best_size(self.cost, rows, self.drafting, SIZES[-1], 2)


def auto(seq: Sequence, planner: Planner, fork: ForkRule = always_fork):
    """The policy generator; `fork` as for self_spec (the scheduler's rule)."""

    def size_rule(seq: Sequence, ready: list[int], limit: int) -> int:
        if len(seq.blocks) > 1:  # the round just finished (blocks[0] is the prefill's token)
            b = seq.blocks[-1]
            planner.drafting.observe(b.size, b.draft, b.tokens - 1, b.next_draft)
        return planner.size(limit)

    return self_spec(seq, fork=fork, size_rule=size_rule)
