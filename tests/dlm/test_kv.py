"""The PyTorch engine's KV cache read and written in place (dlm.kv) against the layout the ONNX
graph runs (past as inputs, `KVStore`): the same tokens and passes in every mode, ragged
batches, cancellations mid-block, slots reused after release and grown when full."""

import numpy as np
import pytest

from benchmarks.kv_layout import PastAsInputs
from dlm import kv as kv_mod
from dlm.engine import KVStore, TorchEngine
from dlm.sampling import GenerationRequest, Scheduler, generate
from tests.conftest import random_prompts, tiny_model

END = 63
MODES = ("ar", "diffusion", "self_spec", "auto")


def confident(seed: int = 3):
    model = tiny_model(seed=seed)
    model.diffusion_head.weight.data *= 8  # confident: diffusion commits several per pass
    return model.eval()


def requests(prompts, mode, **kw):
    return [GenerationRequest(list(p), mode=mode, end_id=END, max_tokens=30, **kw) for p in prompts]


def same(got, want, passes: bool = True):
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    if passes:
        assert [g.num_forward_passes for g in got] == [w.num_forward_passes for w in want]


@pytest.mark.parametrize("mode", MODES)
def test_slots_give_the_tokens_and_passes_of_past_as_inputs(mode, one_thread):
    model = confident()
    slots, reference = TorchEngine(model), PastAsInputs(model)
    prompts = random_prompts(10, lo=2, hi=40, seed=4)  # ragged: 10 rows, 8 slots at first
    for kw in ({}, {"temperature": 0.8, "seed": 5}, {"frequency_penalty": 0.5}):
        got = generate(slots, requests(prompts, mode, **kw))
        # auto's passes follow the step times it measures: its tokens are ar's either way
        same(got, generate(reference, requests(prompts, mode, **kw)), passes=mode != "auto")
    assert slots.kv.slots == 16 and len(slots.kv) == 0  # grown once, every slot released
    assert sorted(slots.kv.free) == list(range(16))


def test_cancelled_mid_block_frees_its_slot_and_the_others_go_on(one_thread):
    model = tiny_model(seed=3).eval()  # unsure: a block takes a pass per token or so
    engine = TorchEngine(model)
    prompts = random_prompts(4, lo=5, hi=30, seed=6)
    want = generate(PastAsInputs(model), requests(prompts, "diffusion", block_length=8))
    sched = Scheduler(engine, max_batch=8)
    seqs = [sched.add(r) for r in requests(prompts, "diffusion", block_length=8)]
    for _ in range(2):  # the prefills, then a denoise pass inside the first block
        sched.step()
    assert seqs[1].block_view is not None and len(engine.kv) == 4  # mid-block
    sched.cancel(seqs[1])
    assert len(engine.kv) == 3 and 1 in engine.kv.free
    late = sched.add(requests(prompts[1:2], "diffusion", block_length=8)[0])
    sched.step()
    assert engine.kv.slot[late.seq_id] == 1  # the freed slot, its old K/V still in it
    while len(sched):
        sched.step()
    for i, seq in ((0, seqs[0]), (2, seqs[2]), (3, seqs[3]), (1, late)):
        assert seq.output == want[i].token_ids, i
        assert seq.nfe == want[i].num_forward_passes
    assert len(engine.kv) == 0


def test_rows_in_slots_apart_are_gathered(one_thread, monkeypatch):
    """After releases a batch's slots are not consecutive: its rows are gathered, same tokens."""
    model = confident()
    engine = TorchEngine(model)
    prompts = random_prompts(5, lo=3, hi=25, seed=8)
    sched = Scheduler(engine, max_batch=8)
    seqs = [sched.add(r) for r in requests(prompts, "self_spec", block_length=4)]
    sched.step()
    for s in (seqs[1], seqs[3]):
        sched.cancel(s)
    layouts = []

    def recorded(*args):
        layouts.append(kv_mod.SlotPass(*args))
        return layouts[-1]

    monkeypatch.setattr("dlm.engine.SlotPass", recorded)
    while len(sched):
        sched.step()
    assert not layouts[0].consecutive  # rows in slots 0, 2, 4
    kept = [prompts[i] for i in (0, 2, 4)]
    want = generate(PastAsInputs(model), requests(kept, "self_spec", block_length=4))
    assert [seqs[i].output for i in (0, 2, 4)] == [w.token_ids for w in want]


def test_a_slot_is_reused_after_release(one_thread):
    engine = TorchEngine(confident())
    prompts = random_prompts(3, lo=3, hi=20, seed=9)
    first = generate(engine, requests(prompts, "ar"))
    assert sorted(engine.kv.free) == list(range(kv_mod.FIRST_SLOTS))
    again = generate(engine, requests(prompts, "ar"))  # the same slots, old K/V still in them
    same(again, first)


def test_slots_grow_longer_as_passes_reach_past_them(one_thread, monkeypatch):
    monkeypatch.setattr(kv_mod, "FIRST_CAPACITY", 16)
    model = confident()
    engine = TorchEngine(model)
    assert engine.kv.capacity == 16
    prompts = random_prompts(3, lo=10, hi=40, seed=10)
    for mode in ("ar", "self_spec"):
        want = generate(PastAsInputs(model), requests(prompts, mode))
        same(generate(engine, requests(prompts, mode)), want)
    assert 16 < engine.kv.capacity <= model.cfg.max_position  # doubled as the passes reached


def test_a_pass_whose_queries_see_every_key_runs_without_a_mask():
    """`dlm.kv.dense`: one shape for every row and AR steps or bidirectional blocks only (the
    attention then runs unmasked, a fused kernel's case); anything else keeps its mask."""
    import numpy as np

    def feed(past, n, tail, fork, t):
        arr = lambda x: np.array(x, np.int64)  # noqa: E731
        return {
            "past_len": arr(past),
            "n_new": arr(n),
            "tail": arr(tail),
            "fork": arr(fork),
            "input_ids": np.zeros((len(n), t), np.int64),
        }

    assert kv_mod.dense(feed([5], [1], [0], [0], 1))  # an AR step
    assert kv_mod.dense(feed([5, 5], [8, 8], [8, 8], [0, 0], 8))  # denoise passes, one shape
    assert not kv_mod.dense(feed([5], [8], [0], [0], 8))  # causal: a commit pass
    assert not kv_mod.dense(feed([5, 6], [1, 1], [0, 0], [0, 0], 1))  # ragged caches
    assert not kv_mod.dense(feed([5, 5], [8, 4], [8, 4], [0, 0], 8))  # padded
    assert not kv_mod.dense(feed([5], [9], [4], [4], 9))  # a fork


def test_past_as_inputs_reuses_its_storage_and_pads_with_zeros():
    """`KVStore.gather` fills the same storage pass after pass: a smaller batch after a larger
    one gets each row's own past and zeros after it, never what the larger batch left there."""
    cfg = tiny_model().cfg
    store = KVStore(cfg, lambda shape: np.zeros(shape, np.float32))
    kv_shape = (cfg.num_layers, cfg.num_kv_heads, 0, cfg.head_dim)
    rng = np.random.default_rng(0)
    for sid, n in enumerate((9, 5, 7)):
        k, v = (
            rng.normal(size=kv_shape[:2] + (n,) + kv_shape[3:]).astype(np.float32) for _ in "kv"
        )
        store.write(sid, 0, k, v)
    big_k, _ = store.gather([0, 1, 2], [9, 5, 7])
    storage = big_k.base
    k, v = store.gather([2, 1], [7, 3])
    assert k.base is storage and k.shape == (cfg.num_layers, 2, cfg.num_kv_heads, 7, cfg.head_dim)
    np.testing.assert_array_equal(k[:, 0], store.k[2][:, :, :7])
    np.testing.assert_array_equal(v[:, 1, :, :3], store.v[1][:, :, :3])
    assert not k[:, 1, :, 3:].any() and not v[:, 1, :, 3:].any()
    fresh = store.gather([0], [0])  # a sequence with nothing cached yet: zeros
    assert fresh[0].shape[3] == 0


def test_a_held_cache_takes_its_memory_once_and_never_grows(one_thread, monkeypatch):
    """`SlotCache.hold` (a server on a GPU, at load): room for its sequences at their longest,
    taken at once; the passes then never grow it, and give the same tokens."""
    monkeypatch.setattr(kv_mod, "FIRST_CAPACITY", 16)
    model = confident()
    engine = TorchEngine(model, graphs=True)
    engine.hold(12, 128)
    storage, slots, capacity = engine.kv.k.data_ptr(), engine.kv.slots, engine.kv.capacity
    assert slots == 12 + 1  # and the scratch slot
    assert capacity == 128
    prompts = random_prompts(12, lo=3, hi=40, seed=12)
    for mode in ("ar", "self_spec"):
        want = generate(TorchEngine(model), requests(prompts, mode))
        same(generate(engine, requests(prompts, mode)), want)
    assert (engine.kv.k.data_ptr(), engine.kv.slots, engine.kv.capacity) == (
        storage,
        slots,
        capacity,
    )
    engine.hold(2, 10 * model.cfg.max_position)  # longer than the context: the context
    assert engine.kv.capacity == model.cfg.max_position and engine.kv.slots == 13
    engine.kv.slots_of([0])
    with pytest.raises(RuntimeError, match="sequences hold slots already"):
        engine.hold(20, 128)
