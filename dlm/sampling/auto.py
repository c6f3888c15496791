"""`mode=auto`: self-speculation that picks each round's block size from the engine's measured
cost (`dlm.cost`) at the batch in flight and the request's own acceptance so far.

A round of size s verifies a draft of up to s - 1 tokens and drafts s more (plus the fork's s
when there is a draft to reject): about 3s tokens in one pass, against 1 token for a plain AR
step (s = 1). With a per-token acceptance rate a, speculating at size s commits on average
1 + a + ... + a^(s-1) tokens per round (Leviathan et al. 2023). auto picks the s, up to the
request's `block_length`, that maximises committed tokens per second,

    (1 + a + ... + a^(s-1)) / pass_seconds(rows in the batch, tokens of the round),

so a machine where long passes cost about what short ones do gets long drafts, and one where
they are dear (a busy CPU, a large batch) gets AR steps. a starts at PRIOR and follows the
request's rounds: accepted draft tokens against the first rejected one of each round.

Lossless: every round is a self_spec round, whose committed tokens are the verifier's, so under
greedy decoding the output equals `ar` token for token (tested over ragged batches).
"""

from __future__ import annotations

from collections.abc import Callable

from dlm.cost import CostModel
from dlm.sampling.self_spec import self_spec
from dlm.sampling.sequence import Sequence

SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)  # candidate block sizes
# Acceptance before a request's first rounds: 3 accepted per rejected (a = 0.75); the shipped
# model accepts about 0.6 of its drafts (2.5 tokens per round at block 32).
PRIOR_ACCEPTED, PRIOR_REJECTED = 3.0, 1.0


def acceptance(seq: Sequence) -> float:
    """The request's per-token draft acceptance so far (the prior before any draft)."""
    accepted, rejected = PRIOR_ACCEPTED, PRIOR_REJECTED
    for b in seq.blocks:
        if b.draft:
            accepted += b.tokens - 1
            rejected += b.tokens - 1 < b.draft
    return accepted / (accepted + rejected)


def round_tokens(size: int) -> int:
    """Tokens of one row of a round of `size`: the pending token, the draft, the lookahead masks
    and the fork's (1: a plain AR step)."""
    return 1 if size == 1 else 3 * size


def expected_tokens(alpha: float, size: int) -> float:
    return sum(alpha**j for j in range(size))


def best_size(cost: CostModel, rows: int, alpha: float, limit: int) -> int:
    sizes = [s for s in SIZES if s < limit] + [limit]
    return max(
        sizes,
        key=lambda s: expected_tokens(alpha, s) / cost.pass_seconds(rows, round_tokens(s)),
    )


def auto(seq: Sequence, cost: CostModel, rows: Callable[[], int]):
    """The policy generator; `rows()` is the number of requests in the engine's next step."""

    def size_rule(seq: Sequence, ready: list[int], limit: int) -> int:
        return best_size(cost, rows(), acceptance(seq), limit)

    return self_spec(seq, size_rule=size_rule)
