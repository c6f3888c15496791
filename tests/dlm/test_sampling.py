"""The three modes on tiny random models: exactness, batching, schedules, stopping."""

import numpy as np
import pytest

from dlm.engine import PassResult, TorchEngine
from dlm.sampling import GenerationRequest, RequestError, generate
from dlm.sampling.loop import Scheduler
from dlm.sampling.select import by_count, by_factor, by_threshold, schedule
from dlm.sampling.self_spec import confident_prefix
from tests.conftest import random_prompts, tiny_model

END = 63  # a token id the tests use as end_id, so random models rarely stop early


@pytest.fixture(scope="module")
def engine():
    return TorchEngine(tiny_model())


def reqs(prompts, **kw):
    kw.setdefault("end_id", END)
    return [GenerationRequest(list(p), **kw) for p in prompts]


def test_self_spec_equals_ar_in_ragged_batches(engine):
    prompts = random_prompts(12, lo=2, hi=40, seed=1)
    for block in (4, 8, 16):
        ar = generate(engine, reqs(prompts, mode="ar", max_tokens=30))
        ss = generate(engine, reqs(prompts, mode="self_spec", max_tokens=30, block_length=block))
        for a, s in zip(ar, ss, strict=False):
            assert s.token_ids == a.token_ids


def test_self_spec_equals_ar_on_a_confident_model():
    # A model whose drafts are often right: scale the head so confidences are high.
    m = tiny_model(seed=3)
    m.diffusion_head.weight.data *= 8
    e = TorchEngine(m)
    prompts = random_prompts(6, seed=2)
    ar = generate(e, reqs(prompts, mode="ar", max_tokens=40))
    ss = generate(e, reqs(prompts, mode="self_spec", max_tokens=40))
    assert [r.token_ids for r in ss] == [r.token_ids for r in ar]
    rounds = [b for r in ss for b in r.blocks[1:]]
    assert all(b.passes == 1 for b in rounds)  # every round is one verify + lookahead pass
    assert any(b.tokens > 1 for b in rounds)  # drafts were accepted
    assert sum(r.num_output_tokens for r in ss) > sum(r.num_forward_passes for r in ss)


class CountingEngine:
    """A scripted engine for the self_spec policy: the text counts up by one. Causal positions
    and the fork predict it right; the lookahead masks after a draft get their third token wrong,
    so drafts are rejected and the fork has something to do. Records every pass."""

    def __init__(self, cfg):
        self.config, self.passes = cfg, []

    def step(self, passes):
        self.passes += passes
        results = []
        for p in passes:
            trunk = len(p.tokens) - p.fork
            causal = trunk - p.tail
            out = [t + 1 for t in p.tokens[:causal]]
            base = p.tokens[causal - 1] + 1  # the lookahead's first position
            out += [base + o + (100 if o == 2 else 0) for o in range(p.tail)]
            out += [p.tokens[0] + 1 + j for j in range(p.fork)]
            results.append(PassResult(np.array(out[-p.n_out :]), np.full(p.n_out, 0.9, np.float32)))
        return results

    def release(self, seq_id):
        pass


@pytest.mark.parametrize("fork", [False, True])
def test_self_spec_forks_as_the_engines_build_decided(fork):
    """Whether a round forks is the build's decision (`self_spec_fork`, dlm.sampling.blocks);
    what it commits is the same either way."""
    e = CountingEngine(tiny_model().cfg)
    e.self_spec_fork = fork
    (r,) = generate(e, reqs([[10]], mode="self_spec", max_tokens=30, block_length=8))
    assert r.token_ids == list(range(11, 41))  # what AR would say
    rounds = e.passes[1:]
    drafts = [len(p.tokens) - 1 - p.tail - p.fork for p in rounds]
    accepted = [b.start - a.start - 1 for a, b in zip(rounds, rounds[1:], strict=False)]
    after_rejection = [d for d, a, k in zip(drafts[1:], drafts, accepted, strict=False) if k < a]
    assert after_rejection  # the lookahead's drafts were rejected
    if fork:
        assert all(p.fork == p.tail for p, d in zip(rounds, drafts, strict=True) if d)
        assert all(after_rejection)  # the fork drafted the next round every time
    else:
        assert not any(p.fork for p in rounds) and not any(after_rejection)


def test_drafts_are_cut_at_the_first_unconfident_position():
    assert confident_prefix([5, 6, 7, 8], [0.9, 0.5, 0.1, 0.9], 0.2) == [5, 6]
    assert confident_prefix([5, 6], [0.1, 0.9], 0.2) == []
    assert confident_prefix([5, 6], [0.3, 0.9], 0.0) == [5, 6]


@pytest.mark.parametrize(
    "knobs",
    [
        {"threshold": 0.05},
        {"threshold": 0.9},
        {"factor": 1.0},
        {"steps": 4},
        {"steps": 8, "block_length": 8},
    ],
)
@pytest.mark.parametrize("cache", ["prefix", "none"])
def test_diffusion_cache_equals_recompute(engine, knobs, cache):
    """The reference samplers (a prefix cache rebuilt per block, or none) give our output."""
    prompts = random_prompts(6, seed=4)
    cached = generate(engine, reqs(prompts, mode="diffusion", max_tokens=27, **knobs))
    other = generate(engine, reqs(prompts, mode="diffusion", max_tokens=27, **knobs), cache=cache)
    for a, b in zip(cached, other, strict=True):
        assert a.token_ids == b.token_ids
        assert a.num_forward_passes == b.num_forward_passes


class Counting:
    """An engine that counts the tokens its passes carry."""

    def __init__(self, inner):
        self.inner, self.tokens = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, passes):
        self.tokens += sum(len(p.tokens) for p in passes)
        return self.inner.step(passes)


def test_reference_samplers_carry_more_tokens_per_pass(engine):
    """What the references cost: "prefix" recomputes the context once per block, "none" at
    every pass; ours never does after the prefill."""
    carried = {}
    for cache in ("full", "prefix", "none"):
        counting = Counting(engine)
        generate(
            counting,
            reqs(
                random_prompts(2, seed=6), mode="diffusion", max_tokens=24, steps=4, block_length=8
            ),
            cache=cache,
        )
        carried[cache] = counting.tokens
    assert carried["full"] < carried["prefix"] < carried["none"]


def test_unknown_cache_is_refused(engine):
    with pytest.raises(ValueError, match="cache='kv': must be one of full, prefix, none"):
        Scheduler(engine, cache="kv")


@pytest.mark.parametrize(
    "mode,knobs",
    [
        ("ar", {}),
        ("diffusion", {"threshold": 0.1}),
        ("diffusion", {"factor": 2.0}),
        ("diffusion", {"steps": 2}),
        ("self_spec", {}),
    ],
)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_batch_equals_one_by_one(engine, mode, knobs, temperature):
    prompts = random_prompts(5, seed=5)
    kw = dict(mode=mode, max_tokens=20, temperature=temperature, seed=11, **knobs)
    batch = generate(engine, reqs(prompts, **kw))
    for p, b in zip(prompts, batch, strict=False):
        (one,) = generate(engine, reqs([p], **kw))
        assert one.token_ids == b.token_ids and one.num_forward_passes == b.num_forward_passes


def test_seed_changes_samples_and_repeats(engine):
    p = random_prompts(1, seed=6)
    a = generate(engine, reqs(p, mode="ar", max_tokens=20, temperature=1.0, seed=1))[0]
    b = generate(engine, reqs(p, mode="ar", max_tokens=20, temperature=1.0, seed=1))[0]
    c = generate(engine, reqs(p, mode="ar", max_tokens=20, temperature=1.0, seed=2))[0]
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_forward_counts_follow_the_schedule(engine):
    p = random_prompts(1, seed=7)
    # steps = block length: one token per pass; per block: 1 seeded + 7 denoise passes + commit.
    r = generate(engine, reqs(p, mode="diffusion", max_tokens=24, block_length=8, steps=8))[0]
    assert r.num_output_tokens == 24
    assert [b.passes for b in r.blocks] == [8, 8, 7]  # the last block needs no commit pass
    assert r.num_forward_passes == 1 + 8 + 8 + 7  # prefill counted
    r = generate(engine, reqs(p, mode="diffusion", max_tokens=24, block_length=8, steps=2))[0]
    assert r.num_forward_passes == 1 + 3 + 3 + 2
    r = generate(engine, reqs(p, mode="ar", max_tokens=24))[0]
    assert r.num_forward_passes == 24


def test_threshold_above_every_confidence_still_progresses(engine):
    p = random_prompts(1, seed=8)
    r = generate(engine, reqs(p, mode="diffusion", max_tokens=16, block_length=8, threshold=1.0))[0]
    assert r.num_output_tokens == 16
    assert r.num_forward_passes == 1 + 8 + 7  # one token per denoise pass


def test_stops_at_end_id_and_stop_sequences(engine):
    p = random_prompts(1, seed=9)
    free = generate(engine, reqs(p, mode="ar", max_tokens=20))[0].token_ids
    stop_at = free[5]
    first = free.index(stop_at)
    for mode in ("ar", "diffusion", "self_spec"):
        r = generate(engine, reqs(p, mode=mode, max_tokens=20, end_id=stop_at))[0]
        if mode != "diffusion":
            assert r.token_ids == free[:first] and r.finish_reason == "eos"
        assert stop_at not in r.token_ids
    r = generate(engine, reqs(p, mode="ar", max_tokens=20, stop_sequences=[free[3:5]]))[0]
    assert r.token_ids == free[:3] and r.finish_reason == "stop"
    r = generate(engine, reqs(p, mode="ar", max_tokens=7))[0]
    assert r.token_ids == free[:7] and r.finish_reason == "length"


@pytest.mark.parametrize(
    "field,value",
    [
        ("mode", "beam"),
        ("max_tokens", 0),
        ("max_tokens", 10**6),
        ("threshold", 0.0),
        ("threshold", float("nan")),
        ("temperature", -1.0),
        ("steps", 3),
        ("block_length", 0),
        ("factor", 0.0),
        ("factor", float("inf")),
        ("factor", 17.0),
    ],
)
def test_bad_requests_name_the_field(engine, field, value):
    r = GenerationRequest([5, 6], **{field: value})
    with pytest.raises(RequestError, match=field):
        r.validate(engine.config)


def test_factor_and_steps_are_one_rule_too_many(engine):
    r = GenerationRequest([5, 6], factor=1.0, steps=4, block_length=8)
    with pytest.raises(RequestError, match=r"factor=1.0: must be left out when steps is given"):
        r.validate(engine.config)


def test_factor_rule():
    conf = np.array([0.95, 0.3, 0.8, 0.7, 0.99])
    masked = np.ones(5, bool)
    # sorted 0.99, 0.95, 0.8, 0.7, 0.3: (n + 1) * (1 - c_n) = 0.02, 0.15, 0.8, 1.5, 4.2
    assert by_factor(conf, masked, 0.01).tolist() == [False, False, False, False, True]
    assert by_factor(conf, masked, 0.5).tolist() == [True, False, False, False, True]
    assert by_factor(conf, masked, 1.0).tolist() == [True, False, True, False, True]
    assert by_factor(conf, masked, 5.0).all()
    partly = np.array([True, False, True, True, False])  # 0.95, 0.8, 0.7: 0.1, 0.6, 1.2
    assert by_factor(conf, partly, 1.0).tolist() == [True, False, True, False, False]
    assert not by_factor(conf, np.zeros(5, bool), 1.0).any()


def test_factor_commits_more_as_it_grows(engine):
    prompts = random_prompts(4, seed=12)
    passes = [
        sum(
            r.num_forward_passes
            for r in generate(engine, reqs(prompts, mode="diffusion", max_tokens=24, factor=f))
        )
        for f in (0.01, 1.0, 16.0)
    ]
    one_at_a_time = generate(
        engine, reqs(prompts, mode="diffusion", max_tokens=24, steps=32, block_length=32)
    )
    assert passes[0] == sum(r.num_forward_passes for r in one_at_a_time)
    assert passes[0] >= passes[1] >= passes[2]


def test_empty_prompt_rejected(engine):
    with pytest.raises(RequestError, match="text_input"):
        GenerationRequest([]).validate(engine.config)


def test_bidirectional_family_decodes_by_diffusion_only():
    e = TorchEngine(tiny_model(attention="bidirectional"))
    p = random_prompts(3, seed=10)
    r = generate(e, reqs(p, mode="diffusion", max_tokens=16, steps=8))
    assert all(x.num_output_tokens == 16 and x.num_forward_passes == 16 for x in r)
    with pytest.raises(RequestError, match="mode"):
        GenerationRequest([5], mode="ar").validate(e.config)


def test_select_edge_cases():
    conf = np.array([0.2, 0.95, 0.5, 0.97])
    all_masked = np.ones(4, bool)
    assert by_threshold(conf, all_masked, 0.9).tolist() == [False, True, False, True]
    assert by_threshold(conf, all_masked, 0.99).tolist() == [False, False, False, True]
    none = np.zeros(4, bool)
    assert not by_threshold(conf, none, 0.5).any()
    some = np.array([True, False, True, False])
    assert by_threshold(conf, some, 0.99).tolist() == [False, False, True, False]
    assert by_count(conf, all_masked, 2).tolist() == [False, True, False, True]
    ties = np.array([0.5, 0.5, 0.5, 0.5])
    assert by_count(ties, all_masked, 1).tolist() == [True, False, False, False]
    assert schedule(7, 4) == [2, 2, 2, 1] and schedule(3, 8) == [1, 1, 1]
