"""Repetition, frequency and presence penalties (dlm.passes): their arithmetic, their range
checks, and that self-speculation and auto still equal ar under them."""

import numpy as np
import pytest
import torch

from dlm.passes import penalize
from dlm.pipeline import DEFAULT_MODEL, Pipeline
from dlm.sampling import GenerationRequest, RequestError
from tests.conftest import tiny_model
from tests.dlm.test_auto import flat

PENALTIES = [
    {"repetition_penalty": 1.3},
    {"frequency_penalty": 0.8},
    {"presence_penalty": 1.5},
    # below 0, repeating is rewarded: drafts repeat, and a verify slot that did not count the
    # draft tokens before it would accept what ar does not (it catches that mistake)
    {"frequency_penalty": -2.0},
    {"repetition_penalty": 0.9, "frequency_penalty": -1.0, "presence_penalty": 0.7},
]


def penalize_numpy(logits, ids, lens, rep, freq, pres):
    """The definition, one output position at a time."""
    out = logits.astype(np.float64).copy()
    for b in range(logits.shape[0]):
        for k in range(logits.shape[1]):
            counts = np.bincount(ids[b, : lens[b, k]], minlength=logits.shape[2])
            seen = counts > 0
            row = out[b, k]
            row[seen] = np.where(row[seen] > 0, row[seen] / rep[b], row[seen] * rep[b])
            out[b, k] = row - freq[b] * counts - pres[b] * seen
    return out


def test_penalize_matches_its_definition_per_position():
    rng = np.random.default_rng(0)
    b, k, v, h = 3, 5, 11, 7
    logits = rng.standard_normal((b, k, v)).astype(np.float32)
    ids = rng.integers(0, 4, (b, h))  # repeats: counts above 1
    lens = rng.integers(0, h + 1, (b, k))
    rep, freq, pres = (
        np.array(x, np.float32) for x in ([1.5, 1.0, 0.7], [0.5, 0, -1], [0, 2, 0.3])
    )
    got = penalize(*(torch.from_numpy(x) for x in (logits, ids, lens, rep, freq, pres)))
    want = penalize_numpy(logits, ids, lens, rep, freq, pres)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)


def test_positions_that_count_nothing_are_left_exactly_as_they_were():
    logits = torch.randn(2, 3, 9)
    ids = torch.tensor([[1, 1, 2], [0, 0, 0]])
    lens = torch.tensor([[0, 2, 0], [0, 0, 0]])
    ones, twos = torch.ones(2), torch.full((2,), 2.0)
    got = penalize(logits, ids, lens, 1.7 * ones, twos, twos)
    assert torch.equal(got[:, [0, 2]], logits[:, [0, 2]]) and torch.equal(got[1], logits[1])
    assert not torch.equal(got[0, 1], logits[0, 1])
    neutral = penalize(logits, ids, torch.full((2, 3), 3), ones, 0 * ones, 0 * ones)
    assert torch.equal(neutral, logits)


PROMPTS = ["import os\n\n\nclass Cache:\n", "def read_config(path):\n", "for i in range(10):\n    "]


@pytest.fixture(scope="module")
def pipe():
    """The shipped model: its drafts are often right, so verify slots past the first (those
    that count draft tokens) decide many tokens."""
    pipe = Pipeline.load(DEFAULT_MODEL)
    pipe.engine.cost_model = flat()
    return pipe


@pytest.mark.parametrize("penalties", PENALTIES)
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_self_speculation_and_auto_equal_ar_under_penalties(pipe, penalties, temperature):
    """Verify slot j counts the draft tokens before it, as an ar step at that position does:
    the outputs stay ar's token for token, greedy and seeded, in a ragged batch."""

    def run(mode, knobs, **kw):
        knobs = {"max_tokens": 40, "temperature": temperature, **knobs, **kw}
        return pipe.generate(
            [pipe.request(p, mode=mode, seed=9 + i, **knobs) for i, p in enumerate(PROMPTS)]
        )

    ar = [g.token_ids for g in run("ar", penalties)]
    assert ar != [g.token_ids for g in run("ar", {})]  # the penalties matter here
    spec = run("self_spec", penalties, block_length=8)
    assert [g.token_ids for g in spec] == ar == [g.token_ids for g in run("auto", penalties)]
    accepted = sum(b.tokens - 1 for g in spec for b in g.blocks)  # draft tokens accepted
    assert accepted >= 8, accepted


def test_penalties_cut_repetition(pipe):
    """What they are for: a frequency penalty makes greedy completions use more distinct
    tokens, in every mode."""

    def distinct(mode, **knobs):
        out = pipe.generate([pipe.request(p, mode=mode, max_tokens=64, **knobs) for p in PROMPTS])
        return sum(len(set(g.token_ids)) for g in out)

    for mode in ("ar", "diffusion", "self_spec"):
        assert distinct(mode, frequency_penalty=1.0) > distinct(mode), mode


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("repetition_penalty", 0.0, "repetition_penalty=0.0: must be a number in (0, 10]"),
        ("repetition_penalty", float("nan"), "repetition_penalty=nan: must be a number in"),
        ("frequency_penalty", 2.5, "frequency_penalty=2.5: must be a number in [-2, 2]"),
        ("presence_penalty", -3, "presence_penalty=-3: must be a number in [-2, 2]"),
        ("presence_penalty", True, "presence_penalty=True: must be a number in [-2, 2]"),
    ],
)
def test_penalties_out_of_range_are_refused_by_name(field, value, message):
    r = GenerationRequest([5, 6], mode="ar", **{field: value})
    with pytest.raises(RequestError) as e:
        r.validate(tiny_model().cfg)
    assert message in str(e.value)
