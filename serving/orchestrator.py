"""The `dlm` model's logic: one scheduler thread driving every request in flight.

Requests are queued from any thread (`submit`). Each loop iteration of the scheduler thread
admits the queued requests, drops the cancelled ones, runs ONE `Scheduler.step()` (one engine
call carrying the next pass of every request in flight: step-level continuous batching) and
emits per-request `Event`s. The engine and its KV cache live in this process, beside the
scheduler: a pass is a function call, a finished sequence's cache is freed at once.

Events, per request: with `stream`, the first committed tokens at once, then new tokens at most
once every `stream_interval_s` (what came meanwhile goes in one event: each response costs the
server's other processes about 1.5 ms of CPU on the 2-core VM, as much as a 16-row AR step's
pass when every token is one; `benchmarks/results/stream_interval_cpu`), and with `block_views`
every change of the block being denoised (the page shows each pass); always exactly one final
event (the only data event without `stream`): finished, cancelled, or failed with `error`.

Admission under a KV-memory budget: a request needs at most `kv_tokens(request)` cached
positions (prompt + max_tokens + one block of look-ahead). Requests are admitted in arrival
order while the sum over the requests in flight stays within `kv_budget_tokens`; the others wait
in the queue (first come, first served: a large request is not overtaken forever). A request
that could never fit (alone above the budget), or that arrives when `max_queued` requests
already wait, gets an immediate error that names the limit (`busy: ...`).

Cancellation is seen two ways: the `inbox`, drained before every pass (for ensemble requests,
Triton 2.51 marks only the steps scheduled after the cancellation, i.e. `postprocessing`, which
sends the request's key here: `serving.cancel`), and the request's own `is_cancelled()` (a `dlm`
request sent directly), asked every `cancel_check_s`. Either way its cache is freed before the
next pass. A shutdown notice in the inbox ends streams at once and the rest at its deadline. So
that a request with nothing to say still passes through `postprocessing` now and then (a non-
streaming one says nothing until its end), a `heartbeat` event (no data, dropped there) is
emitted for a request silent for `heartbeat_s`. Events are sent by `serving.outbox`, from a
thread of its own once started: a slow send does not hold up the next pass.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dlm.engine import Engine
from dlm.sampling import GenerationRequest, Limits, RequestError, Scheduler
from dlm.sampling.sequence import Sequence
from serving import cancel
from serving.outbox import Outbox

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.2  # an idle scheduler looks at its inbox this often (a shutdown notice)


@dataclass
class Event:
    output_ids: list[int]  # every token committed so far
    shown: int  # how many of them the previous event of this request covered
    num_forward_passes: int
    num_output_tokens: int
    # The rest of the block being denoised, from its first masked position (its committed
    # prefix is already in output_ids), mask ids included; None when not asked or not denoising.
    block_view: list[int] | None
    final: bool
    finish_reason: str | None = None  # eos | stop | length | cancelled | error
    error: str | None = None
    key: int = 0  # the sequence's key (`serving.cancel`: what postprocessing sends back)
    heartbeat: bool = False  # no data: only lets postprocessing see a cancellation

    @classmethod
    def ending(cls, reason: str, error: str | None = None, passes: int = 0) -> Event:
        """A final event without tokens: a request refused, cancelled or failed."""
        return cls([], 0, passes, 0, None, True, reason, error)


@dataclass
class Job:
    request: GenerationRequest
    emit: Callable[[Event], None]
    is_cancelled: Callable[[], bool]
    stream: bool
    block_views: bool
    seq: Sequence | None = None
    shown: int = 0
    view: list[int] | None = None
    counted_passes: int = 0
    counted_tokens: int = 0
    kv: int = 0  # its share of the KV budget while in flight
    done: bool = False
    last_sent: float = field(default_factory=time.monotonic)
    checked: float = 0.0  # when is_cancelled() was last asked (monotonic)


def kv_tokens(request: GenerationRequest, default_block: int) -> int:
    """Cached positions a request may hold at most (its share of the KV-memory budget):
    prompt + max_tokens + one block (the model's default block until validation sets it)."""
    return len(request.prompt_ids) + request.max_tokens + (request.block_length or default_block)


class NullMetrics:
    """The metrics interface the orchestrator reports to (see `serving.metrics`)."""

    def admitted(self, request: GenerationRequest) -> None: ...
    def progressed(self, mode: str, passes: int, tokens: int) -> None: ...
    def finished(self, seq: Sequence) -> None: ...
    def in_flight(self, n: int) -> None: ...
    def report(self, now: bool = False) -> Callable[[], None] | None:
        """What accumulated, as a function that sends it (on the outbox thread); None when
        nothing is due (`now`: whatever accumulated)."""
        return None


class Orchestrator:
    def __init__(
        self,
        engine: Engine,
        limits: Limits | None = None,
        max_batch: int = 64,
        metrics: NullMetrics | None = None,
        heartbeat_s: float | None = None,
        stream_interval_s: float = 0.0,
        kv_budget_tokens: int | None = None,
        max_queued: int | None = None,
        cache: str = "full",
        inbox: cancel.Inbox | None = None,
        cancel_check_s: float = 0.0,
    ) -> None:
        """kv_budget_tokens: most cached positions over the requests in flight (None: no
        budget); max_queued: most requests waiting for admission (None: no limit); cache: how
        diffusion keeps its context (`dlm.sampling.diffusion`; not "full" only to serve the
        reference samplers for benchmarks); inbox: where ensemble cancellations arrive;
        cancel_check_s: how often a request's own `is_cancelled()` is asked (an IPC to the
        server in the Python backend; 0: before every pass); stream_interval_s: the least time
        between two events of a text stream (0: one whenever tokens were committed)."""
        self.engine, self.heartbeat_s = engine, heartbeat_s
        self.stream_interval_s = stream_interval_s
        self.kv_budget_tokens, self.max_queued = kv_budget_tokens, max_queued
        self.kv_in_use = 0  # kv_tokens over the jobs in flight
        self.inbox, self.cancel_check_s = inbox, cancel_check_s
        self.pid = inbox.pid if inbox is not None else os.getpid()  # in every event's key
        self.scheduler = Scheduler(engine, limits, cache=cache, max_batch=max_batch)
        self.metrics = metrics or NullMetrics()
        self.jobs: dict[int, Job] = {}  # seq_id -> job, requests in flight
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lost_jobs: deque[Job] = deque()  # jobs whose response could not be sent
        self.outbox = Outbox()

    # ------------------------------------------------------------------ any thread
    def submit(
        self,
        request: GenerationRequest,
        emit: Callable[[Event], None],
        is_cancelled: Callable[[], bool] | None = None,
        stream: bool = False,
        block_views: bool = False,
    ) -> None:
        """Queue a request; `emit` is called from the scheduler thread (see module doc)."""
        job = Job(request, emit, is_cancelled or (lambda: False), stream, block_views)
        if self._stopping:
            self._fail(job, "the server is shutting down")
            return
        with self._cond:
            busy = self.max_queued is not None and len(self._queue) >= self.max_queued
            if not busy:
                self._queue.append(job)
                self._cond.notify()
        if busy:
            message = (
                f"busy: {len(self._queue)} requests already wait for KV memory "
                f"(max_queued={self.max_queued}); retry later"
            )
            self._send(job, Event.ending("error", message))

    def start(self) -> Orchestrator:
        self.outbox.start()
        self._thread = threading.Thread(target=self._run, name="dlm-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still queued or in flight get a final error event."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # stuck in a send the server no longer takes: leave it
                log.error("dlm scheduler did not stop in %.0f s; its requests are dropped", timeout)
                return
        self._fail_all("the server is shutting down")
        self.outbox.close()

    def _fail_all(self, message: str) -> None:
        with self._cond:
            queued, self._queue = list(self._queue), deque()
        for job in queued + list(self.jobs.values()):
            self._fail(job, message)

    # ------------------------------------------------------------------ scheduler thread
    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._queue or self.jobs or self._stopping):
                    self._report(now=True)  # idle: report what the last passes counted
                while not (self._queue or self.jobs or self._stopping):
                    self._cond.wait(IDLE_POLL_S)
                    if self.inbox is not None:  # idle: a shutdown notice still wants its answer
                        self.inbox.drain()
                        # still idle (a request may have come during the wait: then the
                        # next iteration ends its stream first and answers)
                        if self.inbox.deadline is not None and not self._queue:
                            self.outbox.flush()
                            self.inbox.acknowledge()
                if self._stopping:
                    return
            try:
                self.run_once()
            except Exception:  # the loop must survive: log it, fail what was in flight
                log.exception("dlm scheduler iteration failed")
                for job in list(self.jobs.values()):
                    self._fail(job, "internal error in the dlm scheduler (see server log)")

    def run_once(self) -> None:
        """One iteration: admit, drop cancelled, one batched step, emit events."""
        self._admit()
        self._drop_cancelled()
        if self.jobs:
            self._step()
        self.metrics.in_flight(len(self.jobs))
        self._report()

    def _report(self, now: bool = False) -> None:
        send = self.metrics.report(now)
        if send is not None:
            self.outbox.put(send)

    def _admit(self) -> None:
        """Admit queued jobs in order while the KV budget holds; the rest keep waiting."""
        while True:
            with self._cond:
                if not self._queue:
                    return
                job = self._queue[0]
                if job.is_cancelled():  # cancelled while waiting: it never ran
                    self._queue.popleft()
                    self._send(job, Event.ending("cancelled"))
                    continue
                need = self._kv_need(job)
                if need is not None and self.kv_in_use + need > self.kv_budget_tokens:
                    if need <= self.kv_budget_tokens:
                        return  # waits for a request in flight to finish
                    self._queue.popleft()
                    self._send(job, Event.ending("error", self._too_big(need)))
                    continue
                self._queue.popleft()
            try:
                job.seq = self.scheduler.add(job.request)
            except RequestError as e:
                self._send(job, Event.ending("error", str(e)))
                continue
            job.kv = kv_tokens(job.request, self.engine.config.block_length)  # now validated
            self.kv_in_use += job.kv
            self.jobs[job.seq.seq_id] = job
            self.metrics.admitted(job.request)

    def _kv_need(self, job: Job) -> int | None:
        if self.kv_budget_tokens is None:
            return None
        return kv_tokens(job.request, self.engine.config.block_length)

    def _too_big(self, need: int) -> str:
        return (
            f"busy: this request needs {need} KV positions (prompt + max_tokens + one block), "
            f"more than the server's whole budget kv_budget_tokens={self.kv_budget_tokens}; "
            "shorten the prompt or max_tokens"
        )

    def _drop_cancelled(self) -> None:
        while self._lost_jobs:  # a response could not be sent: stop generating for it
            job = self._lost_jobs.popleft()
            if job.seq is not None and job.seq.seq_id in self.jobs:
                self.scheduler.cancel(job.seq)
                self.jobs.pop(job.seq.seq_id)
                self._release_kv(job)
        sent = self.inbox.drain() if self.inbox is not None else set()
        deadline = self.inbox.deadline if self.inbox is not None else None
        if deadline is not None:
            # Streams end at once: Triton 2.51, stopping, no longer delivers their next
            # responses (seen here: they stall until its exit timeout). One-answer requests
            # may still finish until the deadline.
            for job in [j for j in self.jobs.values() if j.stream or time.monotonic() >= deadline]:
                self._fail(job, "the server is shutting down")
            self.outbox.flush()
            self.inbox.acknowledge()  # the streams' errors are sent: the server may stop
            if time.monotonic() >= deadline:
                self._fail_all("the server is shutting down")
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if now - job.checked < self.cancel_check_s and job.seq.seq_id not in sent:
                continue
            job.checked = now
            try:
                cancelled = job.is_cancelled()
            except Exception as e:
                log.exception("is_cancelled() failed for sequence %d", job.seq.seq_id)
                self._fail(job, f"could not check cancellation: {e}")
                continue
            if cancelled or job.seq.seq_id in sent:
                self.scheduler.cancel(job.seq)
                self._finish(job, "cancelled")

    def _step(self) -> None:
        try:
            self.scheduler.step()
        except Exception as e:
            log.exception("engine step failed")
            for job in list(self.jobs.values()):
                self._fail(job, f"engine step failed: {e}")
            return
        now = time.monotonic()
        progress: dict[str, list[int]] = {}  # mode -> [passes, tokens], one report per mode
        for job in list(self.jobs.values()):
            seq = job.seq
            counts = progress.setdefault(job.request.mode, [0, 0])
            counts[0] += seq.nfe - job.counted_passes
            counts[1] += len(seq.output) - job.counted_tokens
            job.counted_passes, job.counted_tokens = seq.nfe, len(seq.output)
            if seq.seq_id not in self.scheduler.pending:
                self.metrics.finished(seq)
                self._finish(job, seq.finish_reason or "length")
                continue
            event = self._event(job, final=False) if job.stream else None
            if event is not None and self._stream_due(job, event, now):
                self._send(job, event)
                continue
            if self.heartbeat_s is not None and now - job.last_sent >= self.heartbeat_s:
                self._send(
                    job,
                    Event(
                        [],
                        0,
                        seq.nfe,
                        len(seq.output),
                        None,
                        False,
                        key=cancel.key(seq.seq_id, self.pid),
                        heartbeat=True,
                    ),
                )
        for mode, (passes, tokens) in progress.items():
            self.metrics.progressed(mode, passes, tokens)

    def _stream_due(self, job: Job, event: Event, now: float) -> bool:
        """Whether a stream's event goes out now: a changed block view at once, new tokens at
        once for the first, else once `stream_interval_s` has passed since the last event (or
        the heartbeat's interval, if shorter: a stream with news sends them, not a heartbeat)."""
        if job.block_views and event.block_view != job.view:
            return True
        if len(event.output_ids) <= job.shown:
            return False
        wait = self.stream_interval_s
        if self.heartbeat_s is not None:
            wait = min(wait, self.heartbeat_s)
        return job.shown == 0 or now - job.last_sent >= wait

    def _event(self, job: Job, final: bool, reason: str | None = None) -> Event:
        seq = job.seq
        # The block being decoded past the committed text (the sampler's view), while there is one.
        view = list(seq.block_view) if job.block_views and seq.block_view and not final else None
        return Event(
            list(seq.output),
            min(job.shown, len(seq.output)),
            seq.nfe,
            len(seq.output),
            view,
            final,
            reason,
            key=cancel.key(seq.seq_id, self.pid),
        )

    def _release_kv(self, job: Job) -> None:
        self.kv_in_use -= job.kv
        job.kv = 0

    def _finish(self, job: Job, reason: str) -> None:
        self.jobs.pop(job.seq.seq_id, None)
        self._release_kv(job)
        self._send(job, self._event(job, final=True, reason=reason))

    def _fail(self, job: Job, message: str) -> None:
        if job.seq is not None:
            self.scheduler.cancel(job.seq)  # no-op unless pending; frees the cache
            self.jobs.pop(job.seq.seq_id, None)
            self._release_kv(job)
        self._send(job, Event.ending("error", message, job.seq.nfe if job.seq else 0))

    def _send(self, job: Job, event: Event) -> None:
        if job.done:
            return
        job.done, job.last_sent = event.final, time.monotonic()
        if not event.heartbeat:
            job.shown, job.view = len(event.output_ids), event.block_view
        self.outbox.put(functools.partial(job.emit, event), functools.partial(self._lost, job))

    def _lost(self, job: Job) -> None:
        """From the outbox: `job`'s response could not be sent (the client is gone). Nothing
        more is sent to it, and the scheduler thread drops it before the next pass."""
        job.done = True
        self._lost_jobs.append(job)


def event_arrays(event: Event) -> dict[str, np.ndarray]:
    """An event as the `dlm` model's output tensors (batch of one) for `postprocessing`."""
    row = np.asarray(event.output_ids, np.int32).reshape(1, -1)
    view = np.asarray(event.block_view or [], np.int32).reshape(1, -1)
    return {
        "output_ids": row,
        "shown": np.array([[event.shown]], np.int32),
        "final": np.array([[event.final]], bool),
        "num_forward_passes": np.array([[event.num_forward_passes]], np.int32),
        "num_output_tokens": np.array([[event.num_output_tokens]], np.int32),
        "block_ids": view,
        "seq_key": np.array([[event.key]], np.int64),
        "heartbeat": np.array([[event.heartbeat]], bool),
        "error": np.array([[(event.error or "").encode()]], np.object_),
    }
