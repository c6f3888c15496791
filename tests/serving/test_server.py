"""The real tritonserver (nvidia-pytriton's 2.51 binary) on free ports with a tiny random model:
exact tokens against the in-process sampler, streaming, the HTTP generate endpoints, concurrent
modes, cancellation, bad inputs. One server for the module."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from client.api import ClientError, GrpcClient, HttpClient
from dlm.pipeline import Pipeline
from model_repository.local_server import LocalServer
from model_repository.processes import poll_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    s = LocalServer(
        tiny_checkpoint,
        tmp_path_factory.mktemp("triton"),
        ["--backend", "torch", "--threads", "1", "--heartbeat-ms", "20"],
    )
    yield s
    s.stop()
    stopped = s.tail(200)
    assert "in-flight inferences" not in stopped or "Found 0 model" in stopped, stopped


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.load(tiny_checkpoint)


@pytest.fixture()
def grpc(server):
    c = GrpcClient(f"127.0.0.1:{server.grpc}", timeout=120)
    yield c
    c.close()


MODES = [
    ("ar", {}),
    ("diffusion", {}),
    ("diffusion", {"steps": 4, "threshold": 0.5}),
    ("diffusion", {"factor": 1.5}),
    ("self_spec", {"block_length": 4}),
    ("ar", {"repetition_penalty": 1.2, "frequency_penalty": 1.0}),
    ("self_spec", {"block_length": 4, "frequency_penalty": 0.5, "presence_penalty": 0.8}),
]
PROMPT = "def f(x):\n    return"


def reference(pipe, mode, knobs, max_tokens=24, prompt=PROMPT):
    res = pipe.generate([pipe.request(prompt, mode=mode, max_tokens=max_tokens, **knobs)])[0]
    return res, pipe.tokenizer.decode(res.token_ids)


def dlm_direct(server, pipe, request):
    """The `dlm` model called directly (not through the ensemble): its output token ids."""
    import tritonclient.grpc as g

    from serving.requests import to_wire

    ids, payload = to_wire(request)
    a = g.InferInput("input_ids", [1, len(ids)], "INT32")
    a.set_data_from_numpy(ids.reshape(1, -1))
    b = g.InferInput("request", [1, 1], "BYTES")
    b.set_data_from_numpy(np.array([[payload.encode()]], dtype=object))
    got, c = [], g.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    done = threading.Event()

    def callback(result, error):
        got.append((result, error))
        if error or result.get_response().parameters["triton_final_response"].bool_param:
            done.set()

    c.start_stream(callback=callback)
    c.async_stream_infer("dlm", [a, b], enable_empty_final_response=True)
    assert done.wait(60)
    c.stop_stream()
    assert all(error is None for _, error in got), got
    data = [r for r, _ in got if r.get_response().outputs and not r.as_numpy("heartbeat")[0, 0]]
    assert len(data) == 1  # heartbeats aside, one response without streaming
    return data[0].as_numpy("output_ids").reshape(-1).tolist()


@pytest.mark.parametrize("mode,knobs", MODES)
def test_greedy_output_equals_in_process(server, pipe, grpc, mode, knobs):
    ref, ref_text = reference(pipe, mode, knobs)
    one = grpc.generate(PROMPT, 24, mode=mode, stream=False, **knobs)
    assert one.responses == 1
    assert one.text == ref_text
    assert (one.num_output_tokens, one.num_forward_passes) == (
        ref.num_output_tokens,
        ref.num_forward_passes,
    )
    assert (
        dlm_direct(server, pipe, pipe.request(PROMPT, mode=mode, max_tokens=24, **knobs))
        == ref.token_ids
    )
    streamed = grpc.generate(PROMPT, 24, mode=mode, stream=True, **knobs)
    assert streamed.text == one.text and streamed.responses > 1
    assert streamed.num_output_tokens == ref.num_output_tokens


@pytest.mark.parametrize("mode", ["ar", "diffusion", "self_spec"])
def test_command_line_agrees(server, grpc, tiny_checkpoint, mode):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dlm",
            "generate",
            "--model",
            str(tiny_checkpoint),
            "--prompt",
            PROMPT,
            "--mode",
            mode,
            "--max-tokens",
            "20",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    cli = json.loads(out.stdout)
    got = grpc.generate(PROMPT, 20, mode=mode, stream=False)
    assert got.text == cli["text"]
    assert (got.num_output_tokens, got.num_forward_passes) == (
        cli["num_output_tokens"],
        cli["num_forward_passes"],
    )


def test_http_generate_endpoints(server, pipe):
    _, ref_text = reference(pipe, "self_spec", {}, max_tokens=16)
    http = HttpClient(f"127.0.0.1:{server.http}", timeout=120)
    one = http.generate(PROMPT, 16, mode="self_spec")
    assert one.text == ref_text and one.responses == 1
    streamed = http.generate(PROMPT, 16, mode="self_spec", stream=True)
    assert streamed.text == ref_text and streamed.responses > 1
    with pytest.raises(ClientError, match=r"threshold=2\.0: must be a number in \(0, 1\]"):
        http.generate(PROMPT, 16, threshold=2.0)
    # TensorRT-LLM's flag as genai-perf sends it
    status, answer = http_generate_raw(
        server,
        json.dumps(
            {
                "text_input": PROMPT,
                "max_tokens": 16,
                "mode": "self_spec",
                "exclude_input_in_output": True,
            }
        ).encode(),
    )
    assert status == 200 and json.loads(answer)["text_output"] == ref_text


def test_concurrent_requests_in_different_modes(server, pipe):
    cases = [(m, k, p) for m, k in MODES for p in ("import os\n", "class A:\n")]
    results: dict[int, object] = {}

    def run(i, mode, knobs, prompt):
        c = GrpcClient(f"127.0.0.1:{server.grpc}", timeout=120)
        try:
            results[i] = c.generate(prompt, 30, mode=mode, stream=i % 2 == 0, **knobs)
        except Exception as e:  # reported below with the case
            results[i] = e
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i, *case)) for i, case in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for i, (mode, knobs, prompt) in enumerate(cases):
        ref, ref_text = reference(pipe, mode, knobs, max_tokens=30, prompt=prompt)
        got = results[i]
        assert not isinstance(got, Exception), f"{mode} {knobs}: {got}"
        assert got.text == ref_text, f"{mode} {knobs} {prompt!r}"
        assert got.num_forward_passes == ref.num_forward_passes


def wait_for(condition, timeout=120.0) -> bool:
    """Poll until `condition()` holds; `timeout` only stops a broken server hanging the suite."""
    return bool(poll_until(condition, timeout, 0.02))


# Every engine pass of the `held` server lasts at least this long (fill --pass-delay-ms): a
# request of n passes is in flight for n x HOLD_MS by construction, on any machine.
HOLD_MS = 20
# Requests in flight share this many KV positions there: one 400-token request at a time.
HELD_KV_BUDGET = 450
# Its request limits (fill --max-prompt-tokens / --max-output-tokens), not the defaults.
HELD_PROMPT, HELD_OUTPUT = 200, 600


@pytest.fixture(scope="module")
def held(tiny_checkpoint, tmp_path_factory):
    s = LocalServer(
        tiny_checkpoint,
        tmp_path_factory.mktemp("triton_held"),
        [
            *("--backend", "torch", "--threads", "1", "--heartbeat-ms", str(HOLD_MS)),
            *("--pass-delay-ms", str(HOLD_MS), "--kv-budget-tokens", str(HELD_KV_BUDGET)),
            *("--max-queued", "1"),
            *("--max-prompt-tokens", str(HELD_PROMPT), "--max-output-tokens", str(HELD_OUTPUT)),
        ],
    )
    yield s
    s.stop()


def in_flight(server, client, **knobs):
    """Start a 400-token AR request on `client` in a thread, return once the server runs it:
    (thread, outcome dict: "result" or "error" once it ends)."""
    outcome: dict = {}
    started = threading.Event()

    def run():
        try:
            outcome["result"] = client.generate(
                PROMPT, 400, lambda u: started.set(), mode="ar", **knobs
            )
        except ClientError as e:
            outcome["error"] = str(e)
        started.set()

    thread = threading.Thread(target=run)
    thread.start()
    if knobs.get("stream"):
        assert started.wait(120), outcome  # its first tokens came back
    else:
        assert wait_for(lambda: server.metric("dlm_engine_live_sequences") == 1), server.tail()
        assert wait_for(lambda: server.metric("dlm_sequences_in_flight") == 1), server.tail()
    assert not outcome, f"over before the test could act on it: {outcome}"
    return thread, outcome


@pytest.mark.parametrize("stream", [True, False])
def test_cancellation_stops_the_request_and_frees_its_cache(held, stream):
    assert wait_for(lambda: held.metric("dlm_engine_live_sequences") == 0)
    c = GrpcClient(f"127.0.0.1:{held.grpc}", timeout=120)
    if stream:
        got = c.generate(PROMPT, 400, mode="ar", stream=True, cancel_after=3)
        assert got.responses == 3 and got.num_output_tokens < 400
        at_cancel = held.metric("dlm_engine_passes")
    else:
        thread, outcome = in_flight(held, c, stream=False)
        assert held.metric("dlm_engine_live_sequences") == 1  # the gauge sees it first
        at_cancel = held.metric("dlm_engine_passes")
        c.client.stop_stream(cancel_requests=True)
        thread.join(120)
        assert "cancelled" in outcome.get("error", ""), outcome
    assert wait_for(lambda: held.metric("dlm_engine_live_sequences") == 0), held.tail()
    assert held.metric("dlm_sequences_in_flight") == 0
    ran = held.metric("dlm_engine_passes") - at_cancel
    print(f"stream={stream}: {ran:.0f} passes ran after the cancel")
    # The cancellation travels postprocessing -> dlm while passes go on; each pass
    # takes at least HOLD_MS, so this bound allows 0.5 s for that trip.
    assert ran <= 500 / HOLD_MS
    c.close()


def test_kv_budget_queues_then_refuses_with_busy(held):
    """Through Triton: a request in flight holds the KV budget; the next one waits in the queue
    (max_queued 1), one more is refused with `busy:`, one that could never fit too; once the
    first is cancelled the waiting one runs to the end."""
    assert wait_for(lambda: held.metric("dlm_engine_live_sequences") == 0)
    first = GrpcClient(f"127.0.0.1:{held.grpc}", timeout=120)
    thread, outcome = in_flight(held, first, stream=True)
    too_big = GrpcClient(f"127.0.0.1:{held.grpc}", timeout=120)
    with pytest.raises(ClientError, match=f"busy: .*kv_budget_tokens={HELD_KV_BUDGET}"):
        too_big.generate(PROMPT, HELD_KV_BUDGET, mode="ar")
    too_big.close()
    later: dict[int, object] = {}

    def run(i):
        c = GrpcClient(f"127.0.0.1:{held.grpc}", timeout=120)
        try:
            later[i] = c.generate(PROMPT, 40, mode="ar")
        except ClientError as e:
            later[i] = str(e)
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(later) == 1), later  # one refused, one waits behind the first
    (refused,) = later.values()
    assert "busy: 1 requests already wait for KV memory (max_queued=1)" in refused, refused
    assert thread.is_alive() and not outcome
    first.client.stop_stream(cancel_requests=True)
    thread.join(120)
    for t in threads:
        t.join(120)
    waited = [r for r in later.values() if not isinstance(r, str)]
    assert len(waited) == 1 and waited[0].num_output_tokens == 40, later
    first.close()


def test_the_request_limits_are_the_deployments(held):
    """fill's --max-prompt-tokens / --max-output-tokens bound what a request may ask, below and
    above the defaults (768 / 512): the errors name the deployment's limits."""
    c = GrpcClient(f"127.0.0.1:{held.grpc}", timeout=120)
    with pytest.raises(ClientError, match=f"must be an integer in \\[1, {HELD_OUTPUT}\\]"):
        c.generate(PROMPT, HELD_OUTPUT + 1, mode="ar")
    with pytest.raises(ClientError, match=f"must be at most {HELD_PROMPT} tokens"):
        c.generate("x = 1\n" * HELD_PROMPT, 4, mode="ar")
    assert c.generate(PROMPT, 2, mode="ar").num_output_tokens == 2  # the server serves on
    c.close()


BAD = [
    ({"mode": "fast"}, "mode='fast': must be one of ar, diffusion, self_spec"),
    ({"max_tokens": 0}, "max_tokens=0: must be an integer in [1, 512]"),
    ({"max_tokens": 513}, "max_tokens=513: must be an integer in [1, 512]"),
    ({"block_length": 0}, "block_length=0: must be an integer in [1, 128]"),
    ({"steps": 3, "block_length": 8}, "steps=3: must be a divisor of block_length=8"),
    ({"threshold": 0.0}, "threshold=0.0: must be a number in (0, 1]"),
    ({"threshold": 1.5}, "threshold=1.5: must be a number in (0, 1]"),
    ({"factor": 20.0}, "factor=20.0: must be a number in (0, 16]"),
    ({"prompt": ""}, "text_input='': must be a non-empty prompt"),
    ({"prompt": "x = 1\n" * 800}, "tokens>': must be at most 768 tokens"),
]


@pytest.mark.parametrize("knobs,message", BAD)
def test_bad_input_gets_a_clear_error_and_the_server_stays_up(server, grpc, knobs, message):
    knobs = dict(knobs)
    prompt, max_tokens = knobs.pop("prompt", PROMPT), knobs.pop("max_tokens", 8)
    with pytest.raises(ClientError) as e:
        grpc.generate(prompt, max_tokens, **knobs)
    assert message in str(e.value)
    assert server.ready()
    assert grpc.generate(PROMPT, 4, mode="ar").num_output_tokens == 4


def test_one_stream_carries_request_after_request(grpc):
    """GrpcClient keeps its stream open between requests that end with their final response,
    and opens a new one after a request it cancelled."""
    assert grpc.generate(PROMPT, 4, mode="ar").num_output_tokens == 4
    stream = grpc._responses
    assert stream is not None
    assert grpc.generate(PROMPT, 6, mode="self_spec", stream=True).num_output_tokens == 6
    assert grpc._responses is stream
    got = grpc.generate(PROMPT, 400, mode="ar", stream=True, cancel_after=2)
    assert got.responses == 2 and grpc._responses is None
    assert grpc.generate(PROMPT, 4, mode="diffusion").num_output_tokens == 4
    assert grpc._responses is not None


def test_wrong_type_is_refused_naming_the_input(server, grpc):
    import tritonclient.grpc as g

    text = g.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"def"]], dtype=object))
    bad = g.InferInput("max_tokens", [1, 1], "FP32")
    bad.set_data_from_numpy(np.array([[8.0]], np.float32))
    errors = []
    done = threading.Event()
    grpc.end_stream()  # the one its requests keep open: this raw request takes a stream of its own
    grpc.client.start_stream(callback=lambda result, error: (errors.append(error), done.set()))
    grpc.client.async_stream_infer("ensemble", [text, bad])
    assert done.wait(30)
    grpc.client.stop_stream()
    assert errors[0] is not None and "max_tokens" in str(errors[0])
    assert grpc.generate(PROMPT, 4, mode="ar").num_output_tokens == 4


def test_metrics_port(server, grpc):
    grpc.generate(PROMPT, 12, mode="diffusion")
    # reported after the answer, from the dlm instance's outbox thread
    assert wait_for(lambda: server.metric("dlm_tokens_per_forward_count", mode="diffusion") >= 1)
    assert server.metric("dlm_requests", mode="diffusion") >= 1
    assert server.metric("dlm_forward_passes", mode="diffusion") >= 1
    assert server.metric("dlm_tokens_per_forward_count", mode="diffusion") >= 1
    assert server.metric("nv_inference_request_success", model="ensemble") >= 1
    with pytest.raises(KeyError, match="dlm_no_such_metric"):
        server.metric("dlm_no_such_metric")
    with pytest.raises(KeyError, match="dlm_requests"):
        server.metric("dlm_requests", mode="no_such_mode")


# ------------------------------------------------------- bad input through every entry point
def raw_grpc(server, tensors):
    """One ensemble request over gRPC streaming with the given (name, array, datatype) inputs;
    returns (error message or None, text or None)."""
    import tritonclient.grpc as g

    inputs = []
    for name, array, dtype in tensors:
        t = g.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        inputs.append(t)
    c = g.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    got, done = [], threading.Event()

    def callback(result, error):
        got.append((result, error))
        if error or result.get_response().parameters["triton_final_response"].bool_param:
            done.set()

    c.start_stream(callback=callback)
    c.async_stream_infer("ensemble", inputs, enable_empty_final_response=True)
    assert done.wait(60)
    c.stop_stream()
    c.close()
    errors = [str(e) for _, e in got if e is not None]
    if errors:
        return errors[0], None
    texts = [r.as_numpy("text_output") for r, _ in got if r.get_response().outputs]
    return None, b"".join(t.reshape(-1)[0] for t in texts).decode()


def text(value: bytes, shape=(1, 1)):
    return ("text_input", np.array([value] * int(np.prod(shape)), dtype=object).reshape(shape))


def i32(name, v):
    return (name, np.array([[v]], np.int32), "INT32")


def f32(name, v):
    return (name, np.array([[v]], np.float32), "FP32")


GRPC_BAD = [
    ("megabyte prompt", [(*text(b"x" * 2**20), "BYTES"), i32("max_tokens", 4)], "1048576 bytes"),
    ("invalid UTF-8", [(*text(b"def \xff\xfe"), "BYTES"), i32("max_tokens", 4)], "must be UTF-8"),
    (
        "NaN temperature",
        [(*text(b"def"), "BYTES"), i32("max_tokens", 4), f32("temperature", np.nan)],
        "temperature=nan: must be a number in [0, 100]",
    ),
    (
        "inf threshold",
        [(*text(b"def"), "BYTES"), i32("max_tokens", 4), f32("threshold", np.inf)],
        "threshold=inf: must be a number in (0, 1]",
    ),
    ("max_tokens missing", [(*text(b"def"), "BYTES")], "max_tokens: required input missing"),
    ("text_input missing", [i32("max_tokens", 4)], "text_input: required input missing"),
    (
        "text_input missing beside mode",
        [i32("max_tokens", 4), ("mode", np.array([[b"ar"]], dtype=object), "BYTES")],
        "text_input: required input missing",
    ),
    (
        "text_input [1, 2]",
        [(*text(b"def", (1, 2)), "BYTES"), i32("max_tokens", 4)],
        "text_input",
    ),
    (
        "max_tokens [1, 2]",
        [(*text(b"def"), "BYTES"), ("max_tokens", np.array([[4, 5]], np.int32), "INT32")],
        "max_tokens",
    ),
]


@pytest.mark.parametrize("case,tensors,message", GRPC_BAD, ids=[c[0] for c in GRPC_BAD])
def test_bad_input_over_grpc(server, case, tensors, message):
    error, _ = raw_grpc(server, tensors)
    assert error is not None and message in error, f"{case}: {error}"
    assert server.ready() and server.ready("ensemble")


def http_generate_raw(server, body: bytes, endpoint: str = "generate"):
    """(status, raw answer) of POST /v2/models/ensemble/<endpoint>."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http}/v2/models/ensemble/{endpoint}",
        body,
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


HTTP_BAD = [
    ("megabyte prompt", {"text_input": "x" * 2**20, "max_tokens": 4}, "1048576 bytes"),
    ("max_tokens missing", {"text_input": "def"}, "max_tokens"),
    ("threshold overflows FP32", {"text_input": "d", "max_tokens": 4, "threshold": 1e39}, "thr"),
    ("lone surrogate", {"text_input": "def \udcff", "max_tokens": 4}, "text_input: must be UTF-8"),
    (
        "NaN literal",
        b'{"text_input": "def", "max_tokens": 4, "temperature": NaN}',
        "temperature=nan: must be a number in [0, 100]",
    ),
    # Triton's own JSON parser answers these (not ours to word)
    ("not JSON", b'{"text_input": "def", "max_tok', "failed to parse the request JSON"),
    (
        "exclude_input_in_output false",
        {"text_input": "def", "max_tokens": 4, "exclude_input_in_output": False},
        "exclude_input_in_output: only true is supported",
    ),
    ("wrong type", {"text_input": "def", "max_tokens": "four"}, "Unable to parse"),
    # Required inputs, beside other inputs (Triton 2.51 alone answered 200 without any text)
    ("text_input missing", {"max_tokens": 4, "mode": "ar"}, "text_input: required input missing"),
    ("max_tokens missing beside mode", {"text_input": "d", "mode": "ar"}, "max_tokens: required"),
    ("text_input missing, stream", {"max_tokens": 4, "stream": True}, "text_input: required"),
]


@pytest.mark.parametrize("endpoint", ["generate", "generate_stream"])
@pytest.mark.parametrize("case,body,message", HTTP_BAD, ids=[c[0] for c in HTTP_BAD])
def test_bad_input_over_http_generate(server, case, body, message, endpoint):
    assert message, "every case names what its error must say"
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, answer = http_generate_raw(server, raw, endpoint)
    assert status >= 400, f"{case}: {status} {answer[:200]}"
    assert message in answer, f"{case}: {answer[:300]}"
    assert server.ready() and server.ready("ensemble")


def test_bad_input_over_http_infer(server):
    """HTTP /infer (the ensemble is decoupled, /infer refuses it: preprocessing directly),
    binary tensors: invalid UTF-8 and NaN get their own errors, the valid request its ids."""
    import tritonclient.http as h

    c = h.InferenceServerClient(f"127.0.0.1:{server.http}", concurrency=4)

    def request(prompt: bytes, temperature: float = 0.0):
        t = h.InferInput("text_input", [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[prompt]], dtype=object), binary_data=True)
        m = h.InferInput("max_tokens", [1, 1], "INT32")
        m.set_data_from_numpy(np.array([[4]], np.int32), binary_data=True)
        temp = h.InferInput("temperature", [1, 1], "FP32")
        temp.set_data_from_numpy(np.array([[temperature]], np.float32), binary_data=True)
        return c.async_infer("preprocessing", [t, m, temp])

    pending = [request(b"def f"), request(b"\xff\xfe"), request(b"def", np.nan), request(b"x")]
    outcomes = []
    for p in pending:
        try:
            outcomes.append(p.get_result().as_numpy("input_ids").size)
        except Exception as e:  # InferenceServerException: the per-request error
            outcomes.append(str(e))
    c.close()
    assert isinstance(outcomes[0], int) and outcomes[0] > 0
    assert "text_input: must be UTF-8" in outcomes[1]
    assert "temperature=nan" in outcomes[2]
    assert isinstance(outcomes[3], int)


@pytest.mark.parametrize("missing", ["text_input", "max_tokens"])
def test_missing_input_over_http_infer(server, missing):
    """JSON /infer: to preprocessing, a 400 naming the input; to the (decoupled) ensemble,
    Triton's refusal of /infer itself."""
    given = {
        "text_input": {"datatype": "BYTES", "data": ["def"]},
        "max_tokens": {"datatype": "INT32", "data": [4]},
        "mode": {"datatype": "BYTES", "data": ["ar"]},
    }
    del given[missing]
    body = {"inputs": [{"name": k, "shape": [1, 1], **v} for k, v in given.items()]}
    for model, code, message in [
        ("preprocessing", 400, f"{missing}: required input missing"),
        ("ensemble", 501, "decoupled"),
    ]:
        status, answer = http_post(server, f"/v2/models/{model}/infer", json.dumps(body).encode())
        assert (status, message in answer) == (code, True), f"{model}: {status} {answer}"
    assert server.ready("ensemble")


def http_post(server, path: str, body: bytes = b"{}", headers: dict | None = None):
    """(status, text) of a POST to the server's HTTP port."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{server.http}{path}", body, headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def test_repository_api_needs_the_admin_key(server, grpc):
    """The restricted model-repository API of the running server: without the key (or with a
    wrong one) an unload is refused and the model keeps serving; the index answers the key."""
    for headers in ({}, {"dlm-admin-key": "not-the-key"}):
        status, answer = http_post(server, "/v2/repository/models/dlm/unload", b"{}", headers)
        assert status == 403 and "dlm-admin-key" in answer, (status, answer)
    status, answer = http_post(server, "/v2/repository/index", b"{}", {})
    assert status == 403, answer
    import tritonclient.grpc as g

    with pytest.raises(g.InferenceServerException, match="dlm-admin-key"):
        grpc.client.unload_model("dlm")
    assert server.api.states()["dlm"] == "READY"  # tritonclient, with the key in its headers
    assert grpc.generate(PROMPT, 4, mode="ar").num_output_tokens == 4


def test_valid_neighbours_of_bad_requests_succeed(server, pipe):
    """Valid and invalid requests at once (they meet in preprocessing's dynamic batcher):
    each invalid one gets its error, each valid one its exact output."""
    _, ref_text = reference(pipe, "ar", {}, max_tokens=8)
    cases = [
        [
            (*text(PROMPT.encode()), "BYTES"),
            i32("max_tokens", 8),
            ("mode", np.array([[b"ar"]], dtype=object), "BYTES"),
        ],
        [(*text(b"\xff"), "BYTES"), i32("max_tokens", 8)],
        [(*text(b"def"), "BYTES"), i32("max_tokens", 8), f32("threshold", np.nan)],
        [(*text(b"def"), "BYTES"), i32("max_tokens", 0)],
    ] * 2
    results: dict[int, tuple] = {}
    threads = [
        threading.Thread(target=lambda i=i, t=t: results.__setitem__(i, raw_grpc(server, t)))
        for i, t in enumerate(cases)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(len(cases)):
        error, got = results[i]
        if i % 4 == 0:
            assert error is None and got == ref_text, (i, error, got)
        else:
            assert error is not None and "must be" in error, (i, error)


def run_client(server, *args, http=False):
    url = f"127.0.0.1:{server.http if http else server.grpc}"
    return subprocess.run(
        [sys.executable, "-m", "client", "--url", url, *(["--http"] if http else []), *args],
        capture_output=True,
        cwd=ROOT,
        timeout=180,
    )


CLIENT_BAD = [
    (
        "nan threshold",
        ["--threshold", "nan"],
        1,
        "threshold=nan: must be a number in (0, 1]",
    ),
    ("huge max_tokens", ["--max-tokens", "100000"], 1, "max_tokens=100000: must be"),
    ("infinite temperature", ["--temperature", "inf"], 1, "temperature=inf: must be"),
    ("unknown mode", ["--mode", "fast"], 2, "--mode: invalid choice: 'fast'"),
    ("not a number", ["--threshold", "high"], 2, "--threshold: invalid float value: 'high'"),
    ("empty stop word", ["--stop", ""], 1, "stop_words"),
    ("steps not a divisor", ["--steps", "3", "--block-length", "8"], 1, "steps=3"),
]


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
@pytest.mark.parametrize("case,args,rc,message", CLIENT_BAD, ids=[c[0] for c in CLIENT_BAD])
def test_client_cli_bad_input(server, case, args, rc, message, http):
    r = run_client(server, "--prompt", PROMPT, "--no-stream", *args, http=http)
    err = r.stderr.decode()
    assert r.returncode == rc, f"{case}: rc {r.returncode}\n{err}"
    assert message in err and "Traceback" not in err, f"{case}: {err}"
    assert rc == 2 or (err.startswith("error: ") and len(err.strip().splitlines()) == 1), err
    assert server.ready() and server.ready("ensemble")


def test_client_cli_invalid_utf8_prompt_and_no_server(server):
    # argv bytes that are not UTF-8 arrive as lone surrogates: one clear line, no traceback
    r = run_client(server, "--prompt", b"def \xff(x):", "--max-tokens", "4")
    err = r.stderr.decode()
    assert (
        r.returncode == 1
        and err.startswith("error: ")
        and "text_input" in err
        and "Traceback" not in err
    ), err
    for http in ([], ["--http"]):
        r = subprocess.run(
            [sys.executable, "-m", "client", "--url", "127.0.0.1:1", "--prompt", "x", *http],
            capture_output=True,
            cwd=ROOT,
            timeout=120,
        )
        err = r.stderr.decode()
        assert r.returncode == 1 and err.startswith("error: ") and "Traceback" not in err, err
    ok = run_client(server, "--prompt", PROMPT, "--max-tokens", "4", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["num_output_tokens"] >= 1
