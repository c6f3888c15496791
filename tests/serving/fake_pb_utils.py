"""A fake `triton_python_backend_utils`: enough of the Python backend to run our `model.py`
adapters in process. Metrics are kept in `METRICS` for inspection."""

from __future__ import annotations

import threading

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
METRICS: dict[tuple, float] = {}  # (family name, sorted labels) -> value (histograms: count)
_lock = threading.Lock()


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    CANCELLED = "CANCELLED"
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message: str, code=None) -> None:
        self._message, self.code = message, code

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors=(), error: TritonError | None = None) -> None:
        self._outputs, self._error = list(output_tensors), error

    def output_tensors(self):
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self):
        return self._error


class ResponseSender:
    def __init__(self) -> None:
        self.sent: list[tuple[InferenceResponse | None, int]] = []
        self.closed = threading.Event()

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self.closed.is_set():
            raise RuntimeError("send after the final flag")
        self.sent.append((response, flags))
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.closed.set()


class Request:
    """What `execute()` receives; also what a BLS `InferenceRequest` becomes."""

    def __init__(self, inputs: dict[str, np.ndarray], cancelled: bool = False) -> None:
        self.inputs = [Tensor(k, v) for k, v in inputs.items()]
        self.cancelled = cancelled
        self.sender = ResponseSender()

    def get_response_sender(self) -> ResponseSender:
        return self.sender

    def is_cancelled(self) -> bool:
        return self.cancelled


def get_input_tensor_by_name(request: Request, name: str) -> Tensor | None:
    return next((t for t in request.inputs if t.name() == name), None)


class Logger:
    lines: list[str] = []

    @classmethod
    def log_info(cls, msg: str) -> None:
        cls.lines.append(msg)

    log_warn = log_error = log_verbose = log_info


class Metric:
    def __init__(self, key: tuple, buckets=None) -> None:
        self.key, self.buckets = key, buckets
        METRICS.setdefault(key, 0.0)

    def increment(self, value: float) -> None:
        with _lock:
            METRICS[self.key] += value

    def set(self, value: float) -> None:
        METRICS[self.key] = value

    def observe(self, value: float) -> None:
        with _lock:
            METRICS[self.key] += 1


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def Metric(self, labels: dict, buckets=None) -> Metric:  # noqa: N802 (the backend's name)
        if (self.kind == self.HISTOGRAM) != (buckets is not None):
            raise ValueError("buckets are required for histograms and only for them")
        return Metric((self.name, tuple(sorted(labels.items()))), buckets)
