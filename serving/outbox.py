"""The scheduler's responses, sent from a thread of their own in the order they were queued.

A response's send in Triton's Python backend is an IPC that waits until the server has taken it:
0.4 ms on an idle 2-core VM, several ms while the engine's threads hold the cores and the
ensemble runs its other steps. Sent from the scheduler thread, each send held up the next pass
of every request in flight: at 16 requests in flight a tenth of the scheduler's time went to
waiting on sends (heartbeats and final answers), `benchmarks/results/serving_overhead_cpu`.
With the outbox the scheduler queues a response and goes on; one thread sends them, so the
responses of a request keep their order. A send that fails (the client is gone) is reported to
its `on_error` from that thread; the scheduler drops the request before its next pass. The
metrics' reports travel the same way (`serving.metrics`: each update is an IPC too).

At most DEPTH wait: past that `put` waits (the scheduler is held back, as before the outbox,
only once the server falls that far behind: a stream of 16 requests queues 16 a step). Until
`start()` (unit tests driving the scheduler by hand), a response is sent at once, by the
caller: the same delivery, without the thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

STOP = object()
DEPTH = 256  # responses and reports waiting to be sent, at most


class Outbox:
    def __init__(self, depth: int = DEPTH) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None

    def start(self) -> Outbox:
        self._thread = threading.Thread(target=self._run, name="dlm-outbox", daemon=True)
        self._thread.start()
        return self

    def put(self, send: Callable[[], None], on_error: Callable[[], None] | None = None) -> None:
        """Send by calling `send()`, after everything put before it; `on_error()` if it raises."""
        if self._thread is None:
            self._deliver(send, on_error)
        else:
            self._queue.put((send, on_error))

    def flush(self) -> None:
        """Wait until every response put so far has been sent (or has failed)."""
        if self._thread is not None:
            self._queue.join()

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, then end the thread (at most `timeout` seconds)."""
        if self._thread is not None:
            self._queue.put((STOP, None))
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            send, on_error = self._queue.get()
            try:
                if send is STOP:
                    return
                self._deliver(send, on_error)
            finally:
                self._queue.task_done()

    @staticmethod
    def _deliver(send: Callable[[], None], on_error: Callable[[], None] | None) -> None:
        try:
            send()
        except Exception:
            log.exception("could not send to the server")
            if on_error is not None:
                on_error()
