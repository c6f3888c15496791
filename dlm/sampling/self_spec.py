"""Self-speculation: bidirectional drafts checked by causal verify passes, one pass per round.

Every pass after the prefill carries [pending token, draft, block of masks]:
- the pending token and the draft run causally (written to the cache) and predict, at each
  position, the next token: the longest prefix where draft and verifier agree is accepted, plus
  the verifier's next token as a bonus; the cache is rolled back to the accepted length by the
  next pass's `start`. Under greedy decoding every committed token is the verifier's, so the
  output equals `ar` token for token;
- the masks after the draft attend bidirectionally to each other and to everything before them
  (one forward, mixed attention mask; the causal part cannot see them, so verification is
  unchanged). The first mask sits where the bonus goes; the ones after it are the next draft,
  kept only if the whole draft was accepted (else they were conditioned on a wrong token) and
  cut at the first position whose confidence is below `draft_threshold`;
- a second block of masks forks off the pending token (`PassRequest.fork`: same forward, its
  own path, seeing only the cache, the pending token and itself). It drafts for the case where
  the draft is rejected: its predictions must agree with the accepted tokens and the bonus, and
  the ones after the bonus become the next draft (cut the same way). Whether a round forks is
  the scheduler's choice (`fork`: a `ForkRule`); it changes the speed, never the tokens.

A round therefore costs one pass and yields the accepted drafts plus one token. Cutting drafts at
low confidence keeps the next lookahead usable more often: on the default model (16 held-out
prompts, 64 tokens) tokens per forward were 2.63 uncut, 2.69 at 0.2, 2.65 at 0.4, 2.50 at 0.6,
1.98 at 0.9, against 2.50 for a separate draft pass after every rejection; the fork raised 2.69
to 2.84 there, and 2.51 -> 2.62, 2.65 -> 2.76, 2.73 -> 2.93 at blocks 4, 6, 8 (12 prompts). Its
tokens cost what any tokens of the pass cost: nothing much on a GPU at a small batch, 0.15-0.2 ms
each in a round of 4-12 tokens on the 2-core CPU, where block-4 rounds without the fork ran 1.3x
the tokens/s of rounds with it (in process, 12 prompts, the same tokens). So whether rounds fork is
decided by the engine's pass times (`round_rate`): for self_spec once per build
(`dlm.sampling.blocks`, `Engine.self_spec_fork`: a request makes the same passes wherever the
build serves it), for auto every round at the batch in flight (`Scheduler`); an engine with no
such decision forks every round. Rows of a batch accept different lengths; each keeps its own
cache length, so batches need no padding.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

from dlm.cost import CostModel
from dlm.engine import PassRequest, PassResult
from dlm.sampling.sequence import BlockStats, Sequence

DRAFT_THRESHOLD = 0.2  # measured best of 0.0-0.9 on the default model (see above)
# What the fork adds to the draft tokens a round gets accepted: 7-12% on the default model (see
# above: 1.51 -> 1.62, 1.65 -> 1.76, 1.73 -> 1.93 accepted a round at blocks 4, 6, 8).
FORK_GAIN = 0.08

# Whether a round of `tokens` tokens (pending, draft, lookahead) with a draft of `draft` tokens
# also carries the fork's `branch` tokens.
ForkRule = Callable[[int, int, int], bool]


def always_fork(tokens: int, branch: int, draft: int) -> bool:
    return True


def never_fork(tokens: int, branch: int, draft: int) -> bool:
    return False


def engine_forks(engine) -> bool:
    """Whether self_spec's rounds fork on `engine` (or an engine it wraps): what its build
    decided (`self_spec_fork`, dlm.sampling.blocks), else they do."""
    inner = engine
    while inner is not None:
        if hasattr(inner, "self_spec_fork"):
            return bool(inner.self_spec_fork)
        inner = getattr(inner, "engine", None)
    return True


def round_rate(
    cost: CostModel, rows: int, tokens: float, branch: float, committed: float
) -> tuple[float, bool]:
    """(tokens committed per second, fork) of a round of `tokens` tokens a row at `rows` rows that
    is expected to commit `committed` tokens a row without the fork: with the fork's `branch`
    tokens more when that is the quicker, its accepted drafts FORK_GAIN more."""
    plain = committed / cost.pass_seconds(rows, tokens)
    if branch <= 0:
        return plain, False
    forked = (1 + (committed - 1) * (1 + FORK_GAIN)) / cost.pass_seconds(rows, tokens + branch)
    return (forked, True) if forked >= plain else (plain, False)


def confident_prefix(tokens, confidence, threshold: float) -> list[int]:
    """The tokens before the first one whose confidence is below `threshold`."""
    out = []
    for t, c in zip(tokens, confidence, strict=True):
        if c < threshold:
            break
        out.append(int(t))
    return out


# The block size of a round, given the sequence, the draft ready for it and the largest size
# allowed (block_length, or what is left of max_tokens); 1 is a plain AR step.
SizeRule = Callable[[Sequence, list[int], int], int]


def fixed_size(seq: Sequence, ready: list[int], limit: int) -> int:
    return limit


def self_spec(
    seq: Sequence,
    draft_threshold: float = DRAFT_THRESHOLD,
    fork: ForkRule = always_fork,
    size_rule: SizeRule = fixed_size,
) -> Generator[PassRequest, PassResult, None]:
    r, mask = seq.request, seq.cfg.mask_token_id
    out = yield seq.make_pass(0, r.prompt_ids, tail=0, write=True, n_out=1)
    cached = len(r.prompt_ids)
    pending = int(out.tokens[-1])  # committed, not yet in the cache
    seq.commit([pending])
    seq.blocks.append(BlockStats(tokens=1, passes=1))
    ready: list[int] = []  # the next draft, from the previous pass's masks
    while not seq.done:
        size = size_rule(seq, ready, min(r.block_length, seq.remaining + 1))
        draft = ready[: size - 1]
        lookahead = size if size > 1 else 0
        tokens = [pending] + draft + [mask] * lookahead
        # an empty draft cannot be rejected: nothing to fork for
        branch = lookahead if draft and fork(len(tokens), lookahead, len(draft)) else 0
        tokens += [mask] * branch
        seq.block_view = draft + [mask] * (size - 1 - len(draft))  # proposed, then unknown
        out = yield seq.make_pass(
            cached, tokens, tail=lookahead, write=True, n_out=len(tokens), fork=branch, known=draft
        )
        n = 1 + len(draft)
        verified = [int(t) for t in out.tokens[:n]]  # verified[j]: next token after j
        k = 0
        while k < len(draft) and draft[k] == verified[k]:
            k += 1
        accepted = draft[:k] + [verified[k]]
        ready = []
        if lookahead and k == len(draft):  # skip the bonus position's mask
            ready = confident_prefix(
                out.tokens[n + 1 : n + lookahead],
                out.confidence[n + 1 : n + lookahead],
                draft_threshold,
            )
        elif branch:  # rejected: the fork drafted from the pending token alone
            b = n + lookahead  # the fork's first position is the first draft's
            if [int(t) for t in out.tokens[b : b + k + 1]] == accepted:
                ready = confident_prefix(
                    out.tokens[b + k + 1 :], out.confidence[b + k + 1 :], draft_threshold
                )
        cached += 1 + k  # the pending token and the accepted drafts stay cached
        seq.commit(accepted)
        seq.blocks.append(BlockStats(len(accepted), 1, len(draft), size, forked=bool(branch)))
        pending = accepted[-1]
    seq.block_view = None
