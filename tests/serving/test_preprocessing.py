"""Text and knobs to a validated request: the same request as `python -m dlm generate` builds,
and an error naming the field for each bad input of DESIGN.md."""

import json

import numpy as np
import pytest

from dlm import schema
from dlm.pipeline import Pipeline
from dlm.sampling import RequestError
from serving.requests import Preprocessor, from_inputs, from_wire, to_wire


@pytest.fixture(scope="module")
def pre(tiny_checkpoint):
    return Preprocessor(tiny_checkpoint)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.load(tiny_checkpoint)


def inputs(text="def f(x):", max_tokens=16, **knobs):
    """Ensemble-style input arrays, [1, 1] each (batch of one)."""
    types = {k.name: np.dtype(schema.TYPES[k.dtype][1]) for k in schema.KNOBS}  # as a client
    values = {"text_input": text, "max_tokens": max_tokens, **knobs}
    out = {}
    for k, v in values.items():
        if k == "stop_words":
            out[k] = np.array([[s.encode() for s in v]], dtype=object)
        else:
            out[k] = np.array([[v.encode() if isinstance(v, str) else v]], dtype=types[k])
    return out


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"mode": "ar"},
        {"mode": "self_spec", "block_length": 4},
        {"threshold": 0.9, "temperature": 0.7, "seed": 2**63 + 5},
        {"steps": 2, "block_length": 8},
    ],
)
def test_same_request_as_the_pipeline(pre, pipe, knobs):
    """The ensemble's tensors (random_seed, [1, 1] arrays, stop_words as bytes) give the request
    that `python -m dlm generate` builds from the same knobs."""
    tensors = {("random_seed" if k == "seed" else k): v for k, v in knobs.items()}
    ids, payload = from_inputs(pre, inputs(max_tokens=9, stop_words=["\n\n"], **tensors))
    served, _ = from_wire(ids, payload)
    assert served == pipe.request("def f(x):", stop_words=["\n\n"], max_tokens=9, **knobs)
    assert served.prompt_ids == pipe.tokenizer.encode("def f(x):")
    assert served.stop_sequences == [pipe.tokenizer.encode("\n\n")]
    assert served.max_tokens == 9
    # The tiny checkpoint's generation_config.json: diffusion, block 8, unless a knob says not.
    assert served.mode == knobs.get("mode", "diffusion")
    assert served.block_length == knobs.get("block_length", 8)


@pytest.mark.parametrize("name", ["text_input", "max_tokens"])
def test_a_missing_required_input_is_named(pre, name):
    x = inputs(mode="ar")
    del x[name]
    with pytest.raises(RequestError, match=f"^{name}: required input missing"):
        from_inputs(pre, x)


def test_a_chosen_rule_replaces_the_default_rule(pipe):
    """A model whose default is the factor rule: a request naming a threshold or steps gets that
    rule alone; one naming none keeps the default."""
    factored = Pipeline(
        pipe.engine, pipe.tokenizer, {"factor": 1.0, "block_length": 8}, pipe.limits
    )
    r = factored.request("def f(x):")
    assert (r.factor, r.steps) == (1.0, None)
    r = factored.request("def f(x):", threshold=0.5)
    assert (r.factor, r.threshold) == (None, 0.5)
    r = factored.request("def f(x):", steps=4)  # not refused as factor together with steps
    assert (r.factor, r.steps) == (None, 4)
    stepped = Pipeline(pipe.engine, pipe.tokenizer, {"steps": 4, "block_length": 8}, pipe.limits)
    r = stepped.request("def f(x):", factor=2.0)
    assert (r.factor, r.steps) == (2.0, None)


def test_inputs_to_wire_and_back(pre, pipe):
    ids, payload = from_inputs(
        pre,
        inputs(
            mode="diffusion",
            threshold=0.9,
            random_seed=2**64 - 1,
            stop_words=["return", "\n"],
            stream=True,
        ),
    )
    req, delivery = from_wire(ids.reshape(1, -1), payload)
    assert req == pipe.request(
        "def f(x):",
        stop_words=["return", "\n"],
        max_tokens=16,
        mode="diffusion",
        threshold=0.9,
        seed=2**64 - 1,
    )
    assert req.threshold == 0.9  # FP32 0.9 arrives as 0.9, as on the command line
    assert delivery == {"stream": True, "block_views": False, "ensemble": True}
    assert ids.dtype == np.int32 and json.loads(payload)["stream"] is True
    direct = {"stream": False, "block_views": True, "ensemble": False}
    assert from_wire(*to_wire(req, block_views=True)) == (req, direct)


BAD = [
    ({"mode": "fast"}, "mode='fast': must be one of ar, diffusion, self_spec"),
    ({"max_tokens": 0}, "max_tokens=0: must be an integer in [1, 512]"),
    ({"max_tokens": 100000}, "max_tokens=100000: must be an integer in [1, 512]"),
    ({"threshold": 1.5}, "threshold=1.5: must be a number in (0, 1]"),
    ({"threshold": 0.0}, "threshold=0.0: must be a number in (0, 1]"),
    ({"factor": -1.0}, "factor=-1.0: must be a number in (0, 16]"),
    ({"block_length": 0}, "block_length=0: must be an integer in [1, 128]"),
    ({"steps": 3, "block_length": 8}, "steps=3: must be a divisor of block_length=8"),
    ({"text": ""}, "text_input=''"),
    ({"text": "x" * 5000}, "text_input="),
    ({"temperature": -1.0}, "temperature=-1.0"),
    ({"end_id": 100000}, "end_id=100000"),
    ({"stop_words": [""]}, "stop_words"),
    ({"repetition_penalty": 0.0}, "repetition_penalty=0.0: must be a number in (0, 10]"),
    ({"frequency_penalty": 2.5}, "frequency_penalty=2.5: must be a number in [-2, 2]"),
    ({"presence_penalty": -9.0}, "presence_penalty=-9.0: must be a number in [-2, 2]"),
]


@pytest.mark.parametrize("knobs,message", BAD)
def test_bad_inputs_name_the_field(pre, knobs, message):
    with pytest.raises(RequestError) as e:
        from_inputs(pre, inputs(**knobs))
    assert str(e.value).startswith(message.split(":")[0])
    assert message in str(e.value)


def test_exclude_input_in_output_true_is_accepted_false_refused(pre):
    ids, payload = from_inputs(pre, inputs())
    ids_true, payload_true = from_inputs(pre, inputs(exclude_input_in_output=True))
    assert ids_true.tolist() == ids.tolist() and payload_true == payload
    with pytest.raises(RequestError, match="exclude_input_in_output: only true is supported"):
        from_inputs(pre, inputs(exclude_input_in_output=False))


def test_text_must_be_utf8(pre):
    bad = {
        "text_input": np.array([[b"\xff\xfe"]], dtype=object),
        "max_tokens": np.array([[4]], np.int32),
    }
    with pytest.raises(RequestError, match="text_input: must be UTF-8"):
        from_inputs(pre, bad)


def test_one_value_per_scalar(pre):
    x = inputs()
    x["max_tokens"] = np.array([[4, 5]], np.int32)
    with pytest.raises(RequestError, match="max_tokens: must hold exactly one value"):
        from_inputs(pre, x)


@pytest.mark.parametrize(
    "knobs,message",
    [
        ({"temperature": np.nan}, "temperature=nan: must be a number in [0, 100]"),
        ({"temperature": np.inf}, "temperature=inf: must be a number in [0, 100]"),
        ({"threshold": np.nan}, "threshold=nan: must be a number in (0, 1]"),
        ({"threshold": -np.inf}, "threshold=-inf: must be a number in (0, 1]"),
        ({"factor": np.nan}, "factor=nan: must be a number in (0, 16]"),
    ],
)
def test_non_finite_floats_are_refused(pre, knobs, message):
    with pytest.raises(RequestError) as e:
        from_inputs(pre, inputs(**knobs))
    assert message in str(e.value)


def test_a_megabyte_prompt_is_refused_before_tokenising(pre, monkeypatch):
    def no_tokenising(*args, **kwargs):
        raise AssertionError("the tokeniser ran over the megabyte")

    monkeypatch.setattr(pre.tokenizer, "encode", no_tokenising)
    with pytest.raises(RequestError, match=r"text_input=<1048576 bytes>: must be at most 24576"):
        from_inputs(pre, inputs(text="x" * 2**20))


def test_invalid_utf8_in_stop_words_and_mode(pre):
    x = inputs()
    x["stop_words"] = np.array([[b"ok", b"\xc3"]], dtype=object)
    with pytest.raises(RequestError, match="stop_words: must be UTF-8"):
        from_inputs(pre, x)
    x = inputs()
    x["mode"] = np.array([[b"\xff"]], dtype=object)
    with pytest.raises(RequestError, match="mode: must be UTF-8"):
        from_inputs(pre, x)


@pytest.mark.parametrize(
    "payload,message",
    [
        ("[]", "request: must be a JSON object"),
        ('{"mode": "ar", "path": "/etc/passwd"}', "request: unknown fields ['path']"),
        ('{"max_tokens": true}', "max_tokens=True: must be an integer"),
        ('{"stop_sequences": [["a"]]}', "stop_words"),
    ],
)
def test_dlm_payload_sent_directly_is_checked(pre, payload, message):
    """The `dlm` model is reachable by clients too: its JSON payload is no trusted input."""
    ids = np.array([5, 6, 7], np.int32)
    with pytest.raises(ValueError) as e:
        request, _ = from_wire(ids, payload)
        request.validate(pre.config)
    assert message in str(e.value)
