"""The forward pass: cache equivalence, attention patterns, ragged batches, RoPE variants."""

import torch
import torch.nn.functional as F

from dlm.config import YarnScaling
from dlm.model import grouped_attention, pass_mask
from tests.conftest import tiny_model


def run(model, ids, past=None, past_len=0, tail=0, fork=0):
    ids = torch.tensor([ids])
    pk, pv = past if past is not None else model.empty_past(1)
    n = ids.shape[1]
    out_index = torch.arange(n)[None]
    lengths = (torch.tensor([x]) for x in (past_len, n, tail, fork))
    return model(ids, pk, pv, *lengths, out_index)


def test_causal_cache_equals_full_recompute():
    m = tiny_model()
    seq = [5, 9, 17, 33, 40, 41, 7, 12]
    full, k, v = run(m, seq)
    _, k1, v1 = run(m, seq[:5])
    part, _, _ = run(m, seq[5:], past=(k1, v1), past_len=5)
    torch.testing.assert_close(part, full[:, 5:], atol=1e-5, rtol=1e-5)


def test_block_pass_sees_later_block_positions():
    m = tiny_model()
    seq = [5, 9, 17, 33, 40, 41]
    causal, _, _ = run(m, seq)
    block, _, _ = run(m, seq, tail=3)
    torch.testing.assert_close(block[:, :3], causal[:, :3])  # prefix stays causal
    assert not torch.allclose(block[:, 3], causal[:, 3])  # first block position sees the rest


def test_grouped_attention_equals_sdpa_over_repeated_kv():
    """The exported graph's attention (query heads grouped over shared K/V heads) is the eager
    one's: SDPA over K/V repeated per query head, under a ragged, forked pass mask."""
    g = torch.Generator().manual_seed(0)
    b, heads, kv_heads, t, past, d = 3, 6, 2, 5, 4, 8
    q = torch.randn(b, heads, t, d, generator=g)
    k, v = (torch.randn(b, kv_heads, past + t, d, generator=g) for _ in range(2))
    lengths = ([4, 0, 2], [5, 3, 1], [2, 0, 1], [1, 0, 0])
    mask = pass_mask(*(torch.tensor(x) for x in lengths), past + t, t)
    rep = heads // kv_heads
    expected = F.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=mask[:, None]
    )
    torch.testing.assert_close(grouped_attention(q, k, v, mask), expected)


def test_pass_mask_shapes_and_padding():
    zero = torch.tensor([0, 0])
    mask = pass_mask(torch.tensor([2, 0]), torch.tensor([3, 1]), torch.tensor([0, 1]), zero, 5, 3)
    assert mask.shape == (2, 3, 5)  # keys: [past padded to 2 | 3 new]
    assert mask[0, 0].tolist() == [True, True, True, False, False]
    assert mask[1, 0].tolist() == [False, False, True, False, False]
    assert mask[1, 2].tolist() == [False, False, True, False, False]  # a pad: the first new token
    # the slot layout (dlm.kv): a row's new tokens right after its own cache, keys up to the
    # longest row; the same pattern, moved
    slots = pass_mask(
        torch.tensor([2, 0]),
        torch.tensor([3, 1]),
        torch.tensor([0, 1]),
        zero,
        5,
        3,
        new_start=torch.tensor([2, 0]),
    )
    assert torch.equal(slots[0], mask[0])
    assert slots[1, 0].tolist() == [True, False, False, False, False]
    assert slots[1, 2].tolist() == [True, False, False, False, False]


def test_pass_mask_fork():
    # one cached position; new: root, 2 draft tokens, 2 tail masks, then a fork of 2
    mask = pass_mask(*(torch.tensor([x]) for x in (1, 7, 2, 2)), 8, 7)[0].int().tolist()
    assert mask == [
        [1, 1, 0, 0, 0, 0, 0, 0],  # root: causal
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],  # tail: sees the path before it and itself
        [1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 1],  # fork: the cache, the root and itself
        [1, 1, 0, 0, 0, 0, 1, 1],
    ]


def test_fork_equals_its_own_pass():
    """A fork computes what a separate pass [root, fork tokens] would, and leaves the first
    path as it was without it: two drafts for the price of one forward."""
    m = tiny_model()
    prefix, root, draft, masks = [5, 9, 17], 33, [40, 41], [3, 3, 3]
    _, pk, pv = run(m, prefix)
    past = (pk, pv)
    both, k, _ = run(m, [root, *draft, *masks, *masks], past, 3, tail=3, fork=3)
    trunk, k_trunk, _ = run(m, [root, *draft, *masks], past, 3, tail=3)
    alone, _, _ = run(m, [root, *masks], past, 3, tail=3)
    torch.testing.assert_close(both[:, :6], trunk, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[:, 6:], alone[:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k[:, :, :, :6], k_trunk, atol=1e-5, rtol=1e-5)


def test_ragged_batch_equals_rows():
    m = tiny_model()
    a, b = [5, 9, 17, 33, 40], [8, 11]
    ids = torch.tensor([a, b + [0, 0, 0]])
    pk, pv = m.empty_past(2)
    out_index = torch.tensor([[4], [1]])
    zero = torch.tensor([0, 0])
    logits, _, _ = m(ids, pk, pv, zero, torch.tensor([5, 2]), zero, zero, out_index)
    la, _, _ = run(m, a)
    lb, _, _ = run(m, b)
    torch.testing.assert_close(logits[0, 0], la[0, 4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, 0], lb[0, 1], atol=1e-5, rtol=1e-5)


def test_yarn_and_query_scaling_run_and_change_outputs():
    base = tiny_model()
    scaled = tiny_model(
        yarn=YarnScaling(factor=4.0, original_max_position=64),
        query_scale_beta=0.5,
        query_scale_max_position=4,
    )
    seq = list(range(4, 30))
    a, _, _ = run(base, seq)
    b, _, _ = run(scaled, seq)
    assert torch.isfinite(b).all()
    assert not torch.allclose(a, b)


def test_dream_shift_moves_logits_by_one():
    plain = tiny_model(qkv_bias=True, attention="bidirectional")
    shifted = tiny_model(qkv_bias=True, attention="bidirectional", logits_shift=True)
    seq = [5, 9, 17, 33]
    a, _, _ = run(plain, seq, tail=4)
    b, _, _ = run(shifted, seq, tail=4)
    torch.testing.assert_close(b[:, 1:], a[:, :-1])
