"""The front door's request logic without a server: parsing, stop strings, error mapping."""

import pytest

from dlm import schema
from frontend.app import _api_error
from frontend.protocol import EXTENSIONS, MAX_CHOICES, ApiError, StopText, param_of, parse
from frontend.triton import TritonError, _own


def completion(**body):
    return parse({"model": "m", "prompt": "p", **body}, chat=False, default_max_tokens=64)


def test_extensions_are_the_schema_knobs_openai_lacks():
    assert set(EXTENSIONS) == {
        "end_id",
        "mode",
        "block_length",
        "threshold",
        "steps",
        "factor",
        "repetition_penalty",
        "return_block_text",
        # DiffusionGemma's canvas (dlm/sampling/canvas.py)
        "max_denoising_steps",
        "entropy_bound",
        "t_min",
        "t_max",
        "stability_threshold",
        "confidence_threshold",
    }
    # OpenAI's own names
    standard = {"max_tokens", "stream", "temperature", "frequency_penalty", "presence_penalty"}
    assert {k.name for k in schema.KNOBS if k.openai == ""} == set(EXTENSIONS) | standard


def test_parse_maps_fields_to_the_schema():
    p = completion(max_tokens=9, temperature=0.5, stop="x", seed=5, n=3, mode="self_spec")
    assert p.knobs == {
        "max_tokens": 9,
        "temperature": 0.5,
        "stop_words": ["x"],
        "mode": "self_spec",
    }
    assert p.seeds == [5, 6, 7] and p.choices == 3 and p.prompts == ["p"]
    assert completion().knobs == {"max_tokens": 64}  # the model's default
    assert completion(top_p=1, logprobs=None, user="u").knobs == {"max_tokens": 64}
    a, b = completion().seeds, completion().seeds
    assert a != b  # no seed: a fresh one per request


def test_parse_chat_renders_and_prefers_max_completion_tokens():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    p = parse({**body, "max_completion_tokens": 5, "max_tokens": 7}, True, lambda m: str(m))
    assert p.prompts == ["[{'role': 'user', 'content': 'hi'}]"] and p.knobs["max_tokens"] == 5


@pytest.mark.parametrize(
    "body,param",
    [
        ({"top_p": 0.9}, "top_p"),
        ({"n": MAX_CHOICES + 1}, "n"),
        ({"prompt": ["a"] * 9, "n": 2}, "n"),
        ({"prompt": []}, "prompt"),
        ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options"),
        ({"mode": 3}, "mode"),
        ({"whatever": 1}, "whatever"),
        ({"model": None}, "model"),
    ],
)
def test_parse_errors_name_the_field(body, param):
    with pytest.raises(ApiError) as e:
        completion(**body)
    assert e.value.status == 400 and e.value.param == param, e.value.message
    assert e.value.message.startswith(param), e.value.message


def test_stop_text_holds_back_a_possible_start_and_cuts_before_the_stop():
    s = StopText(["END", "\n\n"])
    assert [s.push(t) for t in ("ab", "cE", "N", "x")] == ["ab", "c", "", "ENx"]
    assert not s.stopped
    assert s.push("yE") == "y" and s.push("ND tail") == "" and s.stopped and s.text == "abcENxy"
    s = StopText(["\n\n"])
    assert s.push("a\n") == "a" and s.push("\nb") == "" and s.text == "a" and s.stopped
    s = StopText([])
    assert s.push("abc") == "abc" and s.flush() == ""


def test_triton_messages_map_to_fields_and_statuses():
    assert _own("in ensemble 'ensemble', mode='x': bad") == "mode='x': bad"
    assert param_of("random_seed=-1: must be", chat=False) == "seed"
    assert param_of("stop_words: must be UTF-8 text", chat=False) == "stop"
    assert param_of("text_input='': must be a non-empty prompt", chat=True) == "messages"
    assert param_of("engine step failed: boom", chat=False) is None
    cases = [
        (TritonError("threshold=2.0: must be"), 400, "threshold"),
        (TritonError("busy: 1 requests already wait"), 429, None),
        (TritonError("127.0.0.1:1: connection refused", unavailable=True), 503, None),
        (TritonError("engine step failed: boom"), 500, None),
    ]
    for error, status, param in cases:
        e = _api_error(error, chat=False)
        assert (e.status, e.param) == (status, param), e.body()


def test_image_parts_refused_by_name():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = {"model": "m", "messages": [{"role": "user", "content": [image]}]}
    with pytest.raises(ApiError, match=r"messages\[0\].content\[0\].type='image_url': only 'text'"):
        parse(body, chat=True, render=lambda m: "x")
