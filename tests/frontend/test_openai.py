"""The official `openai` client against the real front door on the real tritonserver."""

import json
import socket
import threading
import urllib.error
import urllib.request

import openai
import pytest

from client.api import GrpcClient
from dlm.tokenizer import PLAIN_CHAT_TEMPLATE, TextTokenizer
from model_repository.processes import poll_until
from tests.frontend.conftest import KEY, MODEL

pytestmark = pytest.mark.slow
NAME = "default"  # the id of models/default: its folder's name
PROMPT = "def read_config(path):\n"
MODES = ["ar", "diffusion", "self_spec", "auto"]


def http(url, body: bytes | dict | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of a GET, or of a POST of `body`."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def complete(oai, mode, max_tokens=40, **kw):
    return oai.completions.create(
        model=NAME,
        prompt=kw.pop("prompt", PROMPT),
        max_tokens=max_tokens,
        temperature=kw.pop("temperature", 0),
        extra_body={"mode": mode, **kw.pop("extra_body", {})},
        **kw,
    )


def test_models(oai, front):
    assert [m.id for m in oai.models.list().data] == [NAME]
    assert oai.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError) as e:
        oai.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found"
    assert http(f"{front.url}/health") == (200, {"ready": True})


@pytest.mark.parametrize("mode", ["self_spec", "auto"])
def test_greedy_self_speculation_equals_ar(oai, mode):
    ar, spec = complete(oai, "ar", 48), complete(oai, mode, 48)
    assert spec.choices[0].text == ar.choices[0].text and ar.choices[0].text
    assert spec.usage.completion_tokens == ar.usage.completion_tokens
    if mode == "self_spec":  # auto may take AR steps where drafting does not pay
        assert spec.usage.forward_passes < ar.usage.forward_passes


@pytest.mark.parametrize("mode", MODES)
def test_completions_as_direct_grpc_and_stream_equals_whole(oai, triton, mode):
    whole = complete(oai, mode)
    direct = GrpcClient(f"127.0.0.1:{triton.grpc}").generate(PROMPT, 40, mode=mode, temperature=0)
    choice, usage = whole.choices[0], whole.usage
    assert choice.text == direct.text and choice.finish_reason == "length"
    assert usage.completion_tokens == direct.num_output_tokens == 40
    if mode != "auto":  # auto's passes depend on what the server has learnt so far
        assert usage.forward_passes == direct.num_forward_passes
    assert usage.prompt_tokens == len(TextTokenizer(MODEL).encode(PROMPT))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    chunks = list(complete(oai, mode, stream=True, stream_options={"include_usage": True}))
    assert len(chunks) > 3
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-2].choices[0].finish_reason == "length"
    streamed, whole = chunks[-1].usage.model_dump(), usage.model_dump()
    if mode == "auto":  # (its passes depend on what the server has learnt so far)
        del streamed["forward_passes"], whole["forward_passes"]
    assert chunks[-1].choices == [] and streamed == whole


@pytest.mark.parametrize("mode", MODES)
def test_chat_renders_the_plain_template(oai, mode):
    messages = [{"role": "system", "content": "Python only."}, {"role": "user", "content": "hi"}]
    chat = oai.chat.completions.create(
        model=NAME,
        messages=messages,
        max_completion_tokens=32,
        temperature=0,
        extra_body={"mode": mode},
    )
    rendered = TextTokenizer(MODEL).apply_chat_template(messages, PLAIN_CHAT_TEMPLATE)
    assert rendered == "system: Python only.\nuser: hi\nassistant:"
    same = complete(oai, mode, 32, prompt=rendered)
    assert chat.choices[0].message.content == same.choices[0].text
    assert chat.choices[0].message.role == "assistant" and chat.object == "chat.completion"
    stream = oai.chat.completions.create(
        model=NAME,
        messages=messages,
        max_tokens=32,
        temperature=0,
        stream=True,
        extra_body={"mode": mode},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings_end_the_text_before_them(oai):
    full = complete(oai, "ar", 48).choices[0].text
    stop = full.split("\n")[1][4:9]  # text the greedy answer writes later, across tokens
    expected = full[: full.index(stop)]
    assert stop and expected
    for given in (stop, ["@@never@@", stop]):
        got = complete(oai, "ar", 48, stop=given).choices[0]
        assert got.text == expected and got.finish_reason == "stop"
        chunks = list(complete(oai, "ar", 48, stop=given, stream=True))
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_seed_and_n(oai):
    def sample(**kw):
        return complete(oai, "ar", 16, temperature=1.0, **kw)

    one = sample(seed=7).choices[0].text
    assert sample(seed=7).choices[0].text == one
    fan = sample(seed=7, n=3)
    assert [c.index for c in fan.choices] == [0, 1, 2]
    assert [c.text for c in fan.choices] == [one] + [sample(seed=s).choices[0].text for s in (8, 9)]
    assert len({c.text for c in fan.choices}) > 1  # different seeds, different samples
    assert fan.usage.completion_tokens == 48
    texts = oai.completions.create(
        model=NAME, prompt=["x = 1\n", "import os\n"], n=2, max_tokens=8, temperature=0
    )
    assert [c.index for c in texts.choices] == [0, 1, 2, 3]
    assert texts.choices[0].text == texts.choices[1].text != texts.choices[2].text


def test_penalties_are_openai_fields_and_keep_self_spec_lossless(oai):
    """frequency_penalty and presence_penalty as the client sends them, repetition_penalty as an
    extension: every mode applies them, and self_spec and auto still write ar's text."""
    knobs = {"frequency_penalty": 1.2, "presence_penalty": 0.5}
    extra = {"repetition_penalty": 1.3}
    texts = {m: complete(oai, m, 32, extra_body=extra, **knobs).choices[0].text for m in MODES}
    assert texts["ar"] == texts["self_spec"] == texts["auto"]
    assert texts["ar"] != complete(oai, "ar", 32).choices[0].text


BAD = [
    ({"top_p": 0.5}, "top_p", "top_p=0.5 is not supported"),
    ({"logprobs": 2}, "logprobs", "logprobs=2 is not supported"),
    ({"presence_penalty": 3.0}, "presence_penalty", "presence_penalty=3.0: must be a number in"),
    ({"echo": True}, "echo", "not supported"),
    ({"extra_body": {"tools": [{"type": "function"}]}}, "tools", "not supported"),
    ({"extra_body": {"banana": 1}}, "banana", "banana: unknown field (supported: model, prompt"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"max_tokens": 513}, "max_tokens", "max_tokens=513: must be an integer in [1, 512]"),
    ({"temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"n": 17}, "n", "less than or equal to 16"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"extra_body": {"mode": "fast"}}, "mode", "mode='fast': must be one of ar, diffusion"),
    ({"extra_body": {"threshold": 2.0}}, "threshold", "threshold=2.0: must be a number in (0, 1]"),
    ({"extra_body": {"steps": 3, "block_length": 8}}, "steps", "steps=3: must be a divisor"),
    ({"prompt": ""}, "prompt", "text_input='': must be a non-empty prompt"),
    ({"prompt": [1, 2, 3]}, "prompt", "prompt: Input should be a valid string"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("knobs,param,message", BAD)
def test_bad_fields_are_named(oai, knobs, param, message, stream):
    knobs = dict(knobs)
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(
            model=NAME,
            prompt=knobs.pop("prompt", PROMPT),
            max_tokens=knobs.pop("max_tokens", 8),
            stream=stream,
            **knobs,
        )
    error = e.value.body
    assert error["param"] == param and message in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert complete(oai, "ar", 4).usage.completion_tokens == 4  # still serving


def test_unknown_model_and_body_errors(oai, front):
    with pytest.raises(openai.NotFoundError) as e:
        oai.completions.create(model="gpt-4", prompt="x", max_tokens=4)
    assert e.value.body["param"] == "model"
    status, r = http(f"{front.url}/v1/completions", b"{not json")
    assert status == 400 and "not JSON" in r["error"]["message"]
    status, r = http(f"{front.url}/v1/completions", b" " * (2 << 20))
    assert status == 413 and "request body over" in r["error"]["message"]
    status, r = http(f"{front.url}/v1/chat/completions", {"model": NAME, "messages": []})
    assert status == 400 and r["error"]["param"] == "messages"
    assert http(f"{front.url}/v1/nothing")[0] == 404


def test_api_key(keyed):
    with openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    status, r = http(f"{keyed.url}/v1/completions", {})
    assert status == 401 and r["error"]["type"] == "authentication_error"
    with openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=KEY, max_retries=0) as c:
        assert c.completions.create(model=NAME, prompt="x", max_tokens=4).usage.completion_tokens
    with urllib.request.urlopen(f"{keyed.url}/") as page:  # the page itself is open
        assert page.status == 200


def _body(stream: bool) -> bytes:
    return json.dumps(
        {
            "model": NAME,
            "prompt": PROMPT,
            "max_tokens": 500,
            "stream": stream,
            "mode": "ar",
            "end_id": 0,
        }  # an end token the model never writes: 500 passes
    ).encode()


def _post(front, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", front.port))
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return s


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_and_frees_the_sequence(front, triton, stream):
    live = lambda: triton.metric("dlm_engine_live_sequences")  # noqa: E731
    assert poll_until(lambda: live() == 0, 60)
    s = _post(front, _body(stream))
    if stream:
        got = b""
        while b"data:" not in got:  # tokens are coming
            part = s.recv(65536)
            assert part, f"connection closed after {got!r}"
            got += part
    else:
        assert poll_until(lambda: live() == 1, 60), triton.tail()
    at_close = triton.metric("dlm_engine_passes")
    s.close()
    assert poll_until(lambda: live() == 0, 60), triton.tail()
    ran = triton.metric("dlm_engine_passes") - at_close
    print(f"stream={stream}: {ran:.0f} passes after the disconnect")
    # of 500: cancelled; each pass takes at least HOLD_MS, so the cancel had 250 x HOLD_MS
    # (1.25 s) to arrive
    assert ran < 250


def test_concurrent_requests(oai):
    results = {}

    def run(mode):
        results[mode] = complete(oai, mode, 24).choices[0].text

    threads = [threading.Thread(target=run, args=(m,)) for m in MODES * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == len(MODES)
    assert results["ar"] == results["self_spec"] == results["auto"]


def test_triton_unreachable_is_503(tmp_path):
    from frontend.process import FrontDoor
    from model_repository.local_server import free_ports

    nobody, port = free_ports(2)
    f = FrontDoor(f"127.0.0.1:{nobody}", port, MODEL, log=open(tmp_path / "log", "wb")).start()
    try:
        assert http(f"{f.url}/health") == (503, {"ready": False})
        status, r = http(f"{f.url}/v1/completions", {"model": NAME, "prompt": "x"})
        assert status == 503 and r["error"]["type"] == "server_error", r
        assert f"127.0.0.1:{nobody}" in r["error"]["message"]
    finally:
        f.stop()
