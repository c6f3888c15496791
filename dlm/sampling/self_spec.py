"""Self-speculation: a bidirectional draft of a block, checked by one causal verify pass.

The draft pass fills the block after the pending token; the verify pass runs the drafted block
causally (writing it to the cache) and predicts, at each position, the next token. The longest
prefix where draft and verifier agree is accepted, plus the verifier's next token as a bonus;
the cache is rolled back to the accepted length by the next pass's `start`. Under greedy decoding
every committed token is the verifier's, so the output equals `ar` token for token. Rows of a
batch accept different lengths; each keeps its own cache length, so batches need no padding.

Lookahead (default): the verify pass also carries a block of masks after the draft, attending
bidirectionally to each other and to everything before them (one forward, mixed attention mask).
The causal part cannot see them, so verification is unchanged; when the whole draft is accepted
those masks are already the draft of the next round, which then needs no draft pass.
"""

from __future__ import annotations

from collections.abc import Generator

from dlm.engine import PassRequest, PassResult
from dlm.sampling.sequence import BlockStats, Sequence


def self_spec(seq: Sequence, lookahead: bool = True) -> Generator[PassRequest, PassResult, None]:
    r, mask = seq.request, seq.cfg.mask_token_id
    out = yield seq.make_pass(0, r.prompt_ids, tail=0, write=True, n_out=1)
    cached = len(r.prompt_ids)
    pending = int(out.tokens[-1])  # committed, not yet in the cache
    seq.commit([pending])
    seq.blocks.append(BlockStats(tokens=1, passes=1))
    ready: list[int] | None = None  # a draft made by the previous round's lookahead
    while not seq.done:
        size = min(r.block_length, seq.remaining + 1)
        passes = 0
        if size == 1:
            draft: list[int] = []
        elif ready is not None:
            draft = ready[: size - 1]
        else:
            seq.block_view = [pending] + [mask] * (size - 1)
            out = yield seq.make_pass(
                cached, seq.block_view, tail=size, write=False, n_out=size - 1
            )
            draft = [int(t) for t in out.tokens]
            passes += 1
        seq.block_view = None
        extra = size if lookahead and draft else 0
        tokens = [pending] + draft + [mask] * extra
        out = yield seq.make_pass(cached, tokens, tail=extra, write=True, n_out=len(tokens))
        passes += 1
        verified = [int(t) for t in out.tokens[:size]]  # verified[j]: next token after j
        k = 0
        while k < len(draft) and draft[k] == verified[k]:
            k += 1
        accepted = draft[:k] + [verified[k]]
        # All accepted: the lookahead masks after the bonus position are the next draft.
        ready = [int(t) for t in out.tokens[size + 1 :]] if extra and k == len(draft) else None
        cached += 1 + k  # the pending token and the accepted drafts stay cached
        seq.commit(accepted)
        seq.blocks.append(BlockStats(tokens=len(accepted), passes=passes))
        pending = accepted[-1]
