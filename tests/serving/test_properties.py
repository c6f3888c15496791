"""Property-based tests (hypothesis): the request validator never lets a bad value through nor
fails with anything but a RequestError; the incremental detokeniser's streamed texts always
concatenate to decode(all ids), whatever the ids and however the stream is cut."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlm.config import preset
from dlm.sampling import MODES, GenerationRequest, Limits, RequestError
from dlm.tokenizer import TextTokenizer
from serving.detok import REPLACEMENT, text_delta

CFG = preset("tiny", vocab_size=300)
LIMITS = Limits(max_prompt_tokens=40, max_output_tokens=30, max_block_length=16)
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
ints = st.one_of(st.integers(-5, 600), anything)
floats = st.one_of(st.floats(-1, 2), st.sampled_from([0.0, 1.0, math.nan, math.inf]), anything)


VALID = {
    "mode": st.sampled_from(MODES),
    "max_tokens": st.integers(1, 30),
    "block_length": st.one_of(st.none(), st.sampled_from([1, 2, 4, 8, 16])),
    "threshold": st.floats(0.01, 1.0),
    "steps": st.one_of(st.none(), st.just(1)),
    "factor": st.none(),  # one rule: steps may be given
    "temperature": st.floats(0.0, 100.0),
    "seed": st.integers(0, 2**64 - 1),
    "end_id": st.one_of(st.none(), st.integers(0, 299)),
}
ODD = {
    "mode": anything,
    "max_tokens": ints,
    "block_length": st.one_of(st.integers(-1, 20), anything),
    "threshold": floats,
    "steps": st.one_of(st.integers(-1, 20), anything),
    "factor": st.one_of(floats, st.floats(0.01, 20.0)),
    "temperature": floats,
    "seed": st.one_of(st.integers(-1, 2**64), anything),
    "end_id": st.one_of(st.integers(-2, 310), anything),
}


@FAST
@given(data=st.data())
def test_validate_accepts_only_values_in_range(data):
    prompt = data.draw(st.lists(st.integers(-2, 310), max_size=50), label="prompt")
    knobs = {k: data.draw(v, label=k) for k, v in VALID.items()}
    for name in data.draw(
        st.lists(st.sampled_from(sorted(ODD)), min_size=1, max_size=2), label="odd"
    ):
        knobs[name] = data.draw(ODD[name], label=f"odd {name}")
    req = GenerationRequest(prompt, **knobs)
    try:
        req.validate(CFG, LIMITS)
    except RequestError as e:
        assert "must be" in str(e)  # names the field and the allowed range
        return
    assert req.mode in MODES
    assert 1 <= len(req.prompt_ids) <= LIMITS.max_prompt_tokens
    assert all(0 <= t < CFG.vocab_size for t in req.prompt_ids)
    for name in ("max_tokens", "block_length", "seed", "end_id"):
        value = getattr(req, name)
        assert type(value) is int, (name, value)  # not bool, not float, not str
    assert 1 <= req.max_tokens <= LIMITS.max_output_tokens
    assert len(req.prompt_ids) + req.max_tokens <= CFG.max_position
    assert 1 <= req.block_length <= LIMITS.max_block_length
    assert type(req.threshold) in (int, float) and 0 < req.threshold <= 1
    assert type(req.temperature) in (int, float) and 0 <= req.temperature <= 100
    assert req.steps is None or (type(req.steps) is int and req.block_length % req.steps == 0)
    assert req.factor is None or (type(req.factor) in (int, float) and 0 < req.factor <= 16)
    assert req.factor is None or req.steps is None
    assert 0 <= req.seed < 2**64 and 0 <= req.end_id < CFG.vocab_size


@pytest.fixture(scope="module")
def decode(tiny_checkpoint):
    return TextTokenizer(tiny_checkpoint).decode


@FAST
@given(data=st.data())
def test_stream_concatenates_to_decode(decode, data):
    ids = data.draw(st.lists(st.integers(0, 299), max_size=40), label="ids")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=8), label="cuts"))
    cuts.append(len(ids))
    texts, shown = [], 0
    for i, n in enumerate(cuts):
        final = i == len(cuts) - 1
        texts.append(text_delta(decode, ids[:n], shown, final))
        shown = n
    full = decode(ids)
    assert "".join(texts) == full
    # A non-final response never ends in the replacement character of a partial UTF-8 char.
    assert all(not t.endswith(REPLACEMENT) for t in texts[:-1])
