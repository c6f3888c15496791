"""Generate through the `ensemble` model: gRPC streaming (tritonclient) or HTTP generate.

Both clients take the request schema's inputs (`dlm.schema`: max_tokens, stream, temperature,
random_seed, stop_words, end_id, mode, block_length, threshold, steps, factor, ...; None = the
server's default) as keyword arguments and return a `Result`; `on_update(Update)` sees every
streamed response, and with `return_block_text=True` the block being denoised (masked positions
as placeholders).
"""

from __future__ import annotations

import functools
import json
import queue
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dlm.schema import BY_NAME, KNOBS, TYPES

# Every input is a [1, n] tensor (batch of one).
# Input name -> (NumPy dtype, Triton data type), from the request schema.
INPUT_TYPES = {k.name: (np.dtype(TYPES[k.dtype][1]).type, k.dtype) for k in KNOBS}


class ClientError(RuntimeError):
    """The server's error for a request (a bad knob names the field), or a transport error."""


@dataclass
class Update:
    text: str  # newly committed text
    block_text: str  # the block being denoised ("" unless asked for)
    num_output_tokens: int
    num_forward_passes: int


@dataclass
class Result:
    text: str
    num_output_tokens: int
    num_forward_passes: int
    seconds: float
    responses: int
    first_response_seconds: float | None = None
    updates: list[Update] = field(default_factory=list, repr=False)

    @property
    def tokens_per_forward(self) -> float:
        return self.num_output_tokens / max(1, self.num_forward_passes)

    @property
    def tokens_per_second(self) -> float:
        return self.num_output_tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"tokens {self.num_output_tokens}  forward passes {self.num_forward_passes}  "
            f"TPF {self.tokens_per_forward:.2f}  {self.seconds:.3f} s  "
            f"{self.tokens_per_second:.1f} tokens/s"
        )


def request_values(prompt: str, max_tokens: int, **knobs) -> dict:
    """The request's inputs as Python values, None-valued knobs left out."""
    unknown = sorted(set(knobs) - set(INPUT_TYPES))
    if unknown:
        raise TypeError(f"unknown knobs {unknown}; known: {sorted(INPUT_TYPES)}")
    values = {"text_input": prompt, "max_tokens": max_tokens}
    values.update({k: v for k, v in knobs.items() if v is not None})
    if "stop_words" in values and not values["stop_words"]:
        del values["stop_words"]
    for name, value in values.items():
        for text in value if BY_NAME[name].many else [value]:
            if isinstance(text, str):
                try:
                    text.encode()
                except UnicodeEncodeError as e:
                    raise ClientError(f"{name}: must be valid UTF-8 text ({e.reason})") from None
    return values


def _array(name: str, value) -> np.ndarray:
    dtype = INPUT_TYPES[name][0]
    items = list(value) if BY_NAME[name].many else [value]
    if dtype is np.object_:
        items = [v.encode() if isinstance(v, str) else v for v in items]
    return np.array([items], dtype=dtype)


class _Collector:
    def __init__(self, on_update: Callable[[Update], None] | None) -> None:
        self.on_update, self.t0 = on_update, time.perf_counter()
        self.parts: list[str] = []
        self.updates: list[Update] = []
        self.first: float | None = None

    def add(self, u: Update) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.t0
        self.parts.append(u.text)
        self.updates.append(u)
        if self.on_update is not None:
            self.on_update(u)

    def result(self) -> Result:
        last = self.updates[-1] if self.updates else Update("", "", 0, 0)
        return Result(
            "".join(self.parts),
            last.num_output_tokens,
            last.num_forward_passes,
            time.perf_counter() - self.t0,
            len(self.updates),
            self.first,
            self.updates,
        )


class GrpcClient:
    """gRPC streaming (the ensemble is decoupled: even `stream=False` uses the stream API and
    gets exactly one response). One request at a time; the stream stays open from one request
    to the next (a stream per request cost about 1 ms of a 12 ms one-token request on the
    2-core VM: tritonclient starts a thread for each), and is closed after a request that did
    not end with its final response (cancelled, failed, timed out)."""

    def __init__(
        self, url: str = "127.0.0.1:8001", model: str = "ensemble", timeout: float = 600.0
    ) -> None:
        import tritonclient.grpc as grpcclient

        self.grpc, self.model, self.timeout, self.url = grpcclient, model, timeout, url
        self.client = grpcclient.InferenceServerClient(url)
        self._responses: queue.Queue | None = None  # the open stream's, None when closed

    def generate(
        self,
        prompt: str,
        max_tokens: int = 64,
        on_update: Callable[[Update], None] | None = None,
        cancel_after: int | None = None,
        **knobs,
    ) -> Result:
        """`cancel_after=n`: cancel the request after n responses (used by tests)."""
        inputs = grpc_inputs(request_values(prompt, max_tokens, **knobs))
        responses = self._stream()
        got = _Collector(on_update)
        ended = False  # the final response came: the stream carries nothing more of it
        try:
            try:
                self.client.async_stream_infer(self.model, inputs, enable_empty_final_response=True)
            except self.grpc.InferenceServerException as e:  # the stream broke: the callback
                try:  # has the reason (server unreachable, ...)
                    e = responses.get(timeout=5)[1] or e
                except queue.Empty:
                    pass
                raise ClientError(f"{self.url}: {_message(e)}") from None
            while True:
                try:
                    result, error = responses.get(timeout=self.timeout)
                except queue.Empty:
                    raise ClientError(f"no response within {self.timeout} s") from None
                if error is not None:
                    raise ClientError(_message(error))
                update, ended = grpc_response(result)
                if update is not None:
                    got.add(update)
                if ended or (cancel_after is not None and len(got.updates) >= cancel_after):
                    break
        finally:
            if not ended:
                self.end_stream(cancel=True)
        return got.result()

    def _stream(self) -> queue.Queue:
        if self._responses is None:
            responses: queue.Queue = queue.Queue()
            self.client.start_stream(callback=lambda result, error: responses.put((result, error)))
            self._responses = responses
        return self._responses

    def end_stream(self, cancel: bool = False) -> None:
        """Close the stream kept open between requests (`cancel`: its requests in flight too)."""
        self._responses = None
        self.client.stop_stream(cancel_requests=cancel)

    def close(self) -> None:
        self.end_stream()
        self.client.close()


def _message(error) -> str:
    return error.message() if hasattr(error, "message") else str(error)


def grpc_inputs(values: dict) -> list:
    """`request_values`' inputs as tritonclient gRPC InferInputs (sync and asyncio clients)."""
    from tritonclient.grpc import InferInput

    inputs = []
    for name, value in values.items():
        a = _array(name, value)
        t = InferInput(name, list(a.shape), INPUT_TYPES[name][1])
        t.set_data_from_numpy(a)
        inputs.append(t)
    return inputs


def grpc_response(result) -> tuple[Update | None, bool]:
    """(the Update of a streamed gRPC response, or None for one without outputs: a heartbeat or
    the empty final response; whether it is the request's last)."""
    response = result.get_response()
    update = _update(functools.partial(_grpc_output, result)) if response.outputs else None
    return update, response.parameters["triton_final_response"].bool_param


def _grpc_output(result, name: str):
    return _first(result.as_numpy(name))


def _first(a: np.ndarray | None):
    """The value of a [1, 1] output as a Python value (None if absent)."""
    if a is None or a.size == 0:
        return None
    v = a.reshape(-1)[0]
    return v.decode("utf-8") if isinstance(v, bytes) else v.item()


def _update(get: Callable[[str], object]) -> Update:
    """An Update from a response's outputs, `get(name)` giving each as a Python value."""
    return Update(
        get("text_output") or "",
        get("block_text") or "",
        int(get("num_output_tokens") or 0),
        int(get("num_forward_passes") or 0),
    )


class HttpClient:
    """HTTP through Triton's generate endpoints: `generate` (one JSON answer) or
    `generate_stream` (server-sent events, one per response)."""

    def __init__(
        self, url: str = "127.0.0.1:8000", model: str = "ensemble", timeout: float = 600.0
    ) -> None:
        self.base = url if url.startswith("http") else f"http://{url}"
        self.model, self.timeout = model, timeout

    def generate(
        self,
        prompt: str,
        max_tokens: int = 64,
        on_update: Callable[[Update], None] | None = None,
        endpoint: str | None = None,
        **knobs,
    ) -> Result:
        values = request_values(prompt, max_tokens, **knobs)
        endpoint = endpoint or ("generate_stream" if values.get("stream") else "generate")
        if endpoint not in ("generate", "generate_stream"):
            raise ValueError(f"endpoint={endpoint!r}: must be generate or generate_stream")
        body = json.dumps(values).encode()
        req = urllib.request.Request(
            f"{self.base}/v2/models/{self.model}/{endpoint}",
            body,
            {"Content-Type": "application/json"},
        )
        got = _Collector(on_update)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                if endpoint == "generate":
                    got.add(_http_update(json.loads(r.read())))
                else:
                    for line in r:
                        if line.startswith(b"data:"):
                            got.add(_http_update(json.loads(line[5:])))
        except urllib.error.HTTPError as e:
            raise ClientError(_http_error(e.read())) from None
        except (urllib.error.URLError, OSError) as e:  # unreachable, reset, timed out
            raise ClientError(f"{self.base}: {getattr(e, 'reason', e)}") from None
        return got.result()


def _http_update(obj: dict) -> Update:
    if "error" in obj:
        raise ClientError(obj["error"])
    return _update(obj.get)


def _http_error(body: bytes) -> str:
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError):
        return body.decode("utf-8", "replace")
