"""The dlm scheduler thread's logic, against a TorchEngine in process (as in the `dlm` model)."""

import dataclasses
import os
import threading
import time

import numpy as np
import pytest

from dlm.engine import HeldEngine, TorchEngine
from dlm.pipeline import DEFAULT_MODEL, Pipeline
from dlm.sampling import GenerationRequest, generate
from serving import cancel
from serving.engine import MeteredEngine
from serving.orchestrator import Orchestrator, event_arrays
from tests.conftest import random_prompts, tiny_model

END = 0  # pad: an end_id this random model never produced, so that lengths are exercised


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture()
def engine(model):
    return MeteredEngine(TorchEngine(model))


class Client:
    """Collects one request's events."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.events, self.cancel_after = [], cancel_after

    def __call__(self, event) -> None:
        self.events.append(event)

    def is_cancelled(self) -> bool:
        data = [e for e in self.events if not e.heartbeat]
        return self.cancel_after is not None and len(data) >= self.cancel_after

    @property
    def final(self):
        finals = [e for e in self.events if e.final]
        assert len(finals) == 1, f"{len(finals)} final events"
        assert self.events[-1].final
        return finals[0]


def drain(orch: Orchestrator, limit: int = 10_000) -> None:
    for _ in range(limit):
        orch.run_once()
        if not orch.jobs and not orch._queue:
            return
    raise AssertionError("requests did not finish")


def requests(mode, n=5, **kw):
    kw.setdefault("end_id", END)
    return [GenerationRequest(list(p), mode=mode, **kw) for p in random_prompts(n, seed=11)]


CASES = [
    ("ar", {}),
    ("diffusion", {"threshold": 0.3}),
    ("diffusion", {"steps": 4}),
    ("self_spec", {"block_length": 4}),
]


@pytest.mark.parametrize("mode,knobs", CASES)
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_outputs_equal_in_process_generate(model, engine, mode, knobs, temperature):
    reference = generate(
        TorchEngine(model), requests(mode, max_tokens=21, temperature=temperature, **knobs)
    )
    orch = Orchestrator(engine)
    clients = []
    for r in requests(mode, max_tokens=21, temperature=temperature, **knobs):
        clients.append(Client())
        orch.submit(r, clients[-1])
    drain(orch)
    for c, ref in zip(clients, reference, strict=True):
        assert len(c.events) == 1  # not streaming: exactly one event
        assert c.final.output_ids == ref.token_ids
        assert c.final.num_forward_passes == ref.num_forward_passes
        assert c.final.finish_reason == ref.finish_reason
    assert engine.live_sequences == 0  # every cache released


def test_streaming_events_grow_to_the_final_answer(engine):
    orch = Orchestrator(engine)
    c = Client()
    orch.submit(requests("self_spec", n=1, max_tokens=30)[0], c, stream=True)
    drain(orch)
    shown, passes = 0, 0
    for e in c.events:
        assert e.shown == shown and len(e.output_ids) > shown or e.final
        assert e.num_forward_passes >= passes and e.num_output_tokens == len(e.output_ids)
        shown, passes = len(e.output_ids), e.num_forward_passes
    assert c.final.num_output_tokens == 30 and len(c.events) > 1


def test_a_text_stream_sends_at_most_one_response_per_interval(engine):
    """The first tokens at once, then nothing until the interval has passed (an hour here: only
    the final answer), and the texts still add up; heartbeats never stand in for news."""
    orch = Orchestrator(engine, stream_interval_s=3600.0)
    c = Client()
    orch.submit(requests("ar", n=1, max_tokens=12)[0], c, stream=True)
    drain(orch)
    first, final = c.events
    assert first.shown == 0 and len(first.output_ids) >= 1 and not first.final
    assert final.shown == len(first.output_ids) and len(final.output_ids) == 12
    orch = Orchestrator(engine, heartbeat_s=0.0, stream_interval_s=3600.0)
    c = Client()
    orch.submit(requests("ar", n=1, max_tokens=12)[0], c, stream=True)
    drain(orch)
    assert not any(e.heartbeat for e in c.events)  # every AR step had a token to send
    assert [len(e.output_ids) for e in c.events] == list(range(1, 13))


def test_block_views_stream_every_pass_whatever_the_interval(engine):
    def views(interval: float) -> list:
        orch = Orchestrator(engine, stream_interval_s=interval)
        c = Client()
        request = requests("diffusion", n=1, max_tokens=16, threshold=0.99)[0]
        orch.submit(request, c, stream=True, block_views=True)
        drain(orch)
        return [e.block_view for e in c.events]

    assert views(3600.0) == views(0.0) and len(views(0.0)) > 2


def test_block_views_start_at_the_first_mask(engine):
    orch = Orchestrator(engine)
    c = Client()
    orch.submit(
        requests("diffusion", n=1, max_tokens=16, threshold=0.99)[0],
        c,
        stream=True,
        block_views=True,
    )
    drain(orch)
    mask = engine.config.mask_token_id
    views = [e.block_view for e in c.events if e.block_view is not None]
    assert views and all(v[0] == mask for v in views)
    assert c.final.block_view is None


def test_self_spec_views_show_the_draft():
    # The shipped model (a random one never drafts: its confidence stays under the threshold).
    pipe = Pipeline.load(DEFAULT_MODEL)
    orch = Orchestrator(MeteredEngine(pipe.engine))
    c = Client()
    req = pipe.request("def fibonacci(n):\n", mode="self_spec", max_tokens=48)
    orch.submit(req, c, stream=True, block_views=True)
    drain(orch)
    mask = pipe.engine.config.mask_token_id
    views = [e.block_view for e in c.events if e.block_view is not None]
    assert views and all(len(v) <= req.block_length - 1 for v in views)
    # drafts (proposed tokens ahead of the masks) are shown, never a mask before a proposal
    assert any(v[0] != mask for v in views)
    assert all(set(v[v.index(mask) :]) == {mask} for v in views if mask in v)
    assert c.final.block_view is None


def test_client_cancellation_stops_within_a_pass_and_frees_the_cache(engine):
    orch = Orchestrator(engine)
    c = Client(cancel_after=3)
    orch.submit(requests("ar", n=1, max_tokens=200)[0], c, c.is_cancelled, stream=True)
    drain(orch)
    assert c.final.finish_reason == "cancelled"
    assert engine.passes == 3  # no pass ran after the one whose event made it cancel
    assert engine.live_sequences == 0


def test_cancel_sent_by_postprocessing(engine):
    """The ensemble path: postprocessing sends the request's key (serving.cancel); the cache is
    freed before the next pass."""
    inbox = cancel.Inbox(pid=2**30 + os.getpid())  # not this process's own address
    try:
        orch = Orchestrator(engine, inbox=inbox)
        c = Client()
        orch.submit(requests("ar", n=1, max_tokens=200)[0], c, stream=True)
        for _ in range(3):
            orch.run_once()
        passes = engine.passes
        assert cancel.send([c.events[-1].key]) == []
        orch.run_once()
        assert c.final.finish_reason == "cancelled"
        assert engine.passes == passes and engine.live_sequences == 0
        assert cancel.send([cancel.key(1, pid=2**22 + 12345)]) != []  # no such instance
    finally:
        inbox.close()


def test_bad_request_gets_its_own_error(engine):
    orch = Orchestrator(engine)
    bad, good = Client(), Client()
    orch.submit(GenerationRequest([5, 6], mode="ar", max_tokens=0), bad)
    orch.submit(requests("ar", n=1, max_tokens=5)[0], good)
    drain(orch)
    assert bad.final.error.startswith("max_tokens=0")
    assert good.final.error is None and good.final.num_output_tokens == 5


def test_engine_failure_fails_what_was_in_flight_and_recovers(model, engine):
    class Flaky(MeteredEngine):
        def step(self, passes):
            if self.steps == 2:
                self.steps += 1
                raise RuntimeError("the engine is down")
            return super().step(passes)

    flaky = Flaky(TorchEngine(model))
    orch = Orchestrator(flaky)
    first = [Client(), Client()]
    for c, r in zip(first, requests("ar", n=2, max_tokens=10), strict=True):
        orch.submit(r, c)
    drain(orch)
    assert all("engine step failed: the engine is down" in c.final.error for c in first)
    assert flaky.live_sequences == 0  # the failed ones were released
    again = Client()
    orch.submit(requests("ar", n=1, max_tokens=10)[0], again)
    drain(orch)
    assert again.final.num_output_tokens == 10
    assert flaky.live_sequences == 0


def test_heartbeats_for_silent_requests(engine):
    orch = Orchestrator(engine, heartbeat_s=0.0)
    c = Client()
    orch.submit(requests("ar", n=1, max_tokens=6)[0], c)
    drain(orch)
    beats = [e for e in c.events if e.heartbeat]
    # One per step but the last: 6 passes for 6 tokens (the prefill gives the first).
    assert len(beats) == 5 and all(not e.output_ids and not e.final for e in beats)
    assert [e for e in c.events if not e.heartbeat] == [c.final]


def test_scheduler_thread(model, engine):
    reference = generate(TorchEngine(model), requests("diffusion", n=6, max_tokens=17))
    orch = Orchestrator(engine).start()
    done = threading.Semaphore(0)
    clients = []
    for r in requests("diffusion", n=6, max_tokens=17):
        c = Client()
        clients.append(c)
        orch.submit(r, lambda e, c=c: (c(e), e.final and done.release()), stream=True)
    for _ in clients:
        assert done.acquire(timeout=60)
    orch.stop()
    assert [c.final.output_ids for c in clients] == [r.token_ids for r in reference]


def test_a_slow_send_holds_up_no_pass(engine):
    """The scheduler thread queues responses (serving.outbox): while a send hangs, the passes
    of every request go on to their ends; the responses then follow, each request's in order."""
    release = threading.Event()
    slow, quick, done = Client(), Client(), threading.Semaphore(0)
    orch = Orchestrator(engine).start()
    try:
        orch.submit(
            requests("ar", n=1, max_tokens=8)[0],
            lambda e: (release.wait(60), slow(e), e.final and done.release()),
            stream=True,
        )
        orch.submit(requests("ar", n=1, max_tokens=30)[0], lambda e: (quick(e), done.release()))
        deadline = time.monotonic() + 60
        while (orch.jobs or orch._queue or engine.passes < 30) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not orch.jobs and engine.passes == 8 + 30, "a hanging send held up the passes"
        assert not slow.events and not quick.events  # all still queued behind the first send
        release.set()
        assert done.acquire(timeout=60) and done.acquire(timeout=60)
    finally:
        orch.stop()
    assert slow.final.num_output_tokens == 8 and quick.final.num_output_tokens == 30
    assert [e.num_output_tokens for e in slow.events] == sorted(
        e.num_output_tokens for e in slow.events
    )


@pytest.mark.parametrize("threaded", [False, True])
def test_a_failed_send_drops_the_request_before_the_next_pass(model, threaded):
    """A response that cannot be sent (the client is gone) ends the request: its cache is
    freed before the next pass and nothing more is sent to it; the others go on."""
    engine = MeteredEngine(TorchEngine(model))
    orch = Orchestrator(engine)
    if threaded:
        orch.outbox.start()
    calls, other = [], Client()

    def gone(event):
        calls.append(event)
        raise RuntimeError("the client is gone")

    orch.submit(requests("ar", n=1, max_tokens=200)[0], gone, stream=True)
    orch.submit(requests("ar", n=1, max_tokens=12)[0], other)
    orch.run_once()  # the prefill; its event fails
    orch.outbox.flush()
    orch.run_once()  # drops it, then the other's next pass
    assert len(orch.jobs) == 1 and len(calls) == 1
    drain(orch)
    orch.outbox.close()
    assert other.final.num_output_tokens == 12 and len(calls) == 1
    assert engine.live_sequences == 0 and orch.kv_in_use == 0


def test_event_arrays_shapes(engine):
    orch = Orchestrator(engine)
    c = Client()
    orch.submit(requests("ar", n=1, max_tokens=3)[0], c)
    drain(orch)
    arrays = event_arrays(c.final)
    assert arrays["output_ids"].shape == (1, 3) and arrays["output_ids"].dtype == np.int32
    assert arrays["block_ids"].shape == (1, 0)
    assert arrays["final"].tolist() == [[True]] and arrays["seq_key"].dtype == np.int64
    assert arrays["error"].tolist() == [[b""]]  # an error rides on the last response's tensors
    assert event_arrays(dataclasses.replace(c.final, error="boom"))["error"].tolist() == [[b"boom"]]


# ---------------------------------------------------------------- KV budget and the queue
def test_kv_budget_queues_beyond_it_and_admits_in_order(model, engine):
    reqs = requests("ar", n=4, max_tokens=10)
    block = engine.config.block_length
    needs = [len(r.prompt_ids) + 10 + block for r in reqs]
    budget = needs[0] + needs[1]  # room for two at a time
    orch = Orchestrator(engine, kv_budget_tokens=budget)
    clients = [Client() for _ in reqs]
    for r, c in zip(reqs, clients, strict=True):
        orch.submit(r, c)
    most = 0
    for _ in range(10_000):
        orch.run_once()
        most = max(most, len(orch.jobs))
        assert orch.kv_in_use <= budget
        if not orch.jobs and not orch._queue:
            break
    assert most == 2  # the other two waited, then ran
    assert orch.kv_in_use == 0
    assert [c.final.finish_reason for c in clients] == ["length"] * 4
    assert all(c.final.num_output_tokens == 10 for c in clients)


def test_request_above_the_whole_budget_is_refused_naming_the_limit(engine):
    orch = Orchestrator(engine, kv_budget_tokens=20)
    c = Client()
    orch.submit(GenerationRequest([5, 6, 7], mode="ar", max_tokens=30, end_id=END), c)
    orch.run_once()
    assert c.final.finish_reason == "error"
    assert "busy:" in c.final.error and "kv_budget_tokens=20" in c.final.error
    assert not orch.jobs and orch.kv_in_use == 0


def test_full_queue_answers_busy_at_once(engine):
    orch = Orchestrator(engine, max_queued=2)
    clients = [Client() for _ in range(3)]
    for c in clients:
        orch.submit(GenerationRequest([5, 6, 7], mode="ar", max_tokens=4, end_id=END), c)
    assert clients[2].final.finish_reason == "error"
    assert "max_queued=2" in clients[2].final.error and "busy" in clients[2].final.error
    drain(orch)
    assert [c.final.finish_reason for c in clients[:2]] == ["length", "length"]


def test_cancelled_while_queued_never_runs(engine):
    orch = Orchestrator(engine, kv_budget_tokens=60)
    first, waiting = Client(), Client(cancel_after=0)
    orch.submit(GenerationRequest([5, 6, 7], mode="ar", max_tokens=20, end_id=END), first)
    orch.submit(
        GenerationRequest([5, 6, 7], mode="ar", max_tokens=20, end_id=END),
        waiting,
        is_cancelled=waiting.is_cancelled,
    )
    drain(orch)
    assert first.final.finish_reason == "length"
    assert waiting.final.finish_reason == "cancelled" and waiting.final.num_forward_passes == 0


def test_shutdown_notice_ends_what_is_left_after_its_grace(engine):
    """What `model_repository.serve` sends before SIGTERM: a stream ends at once, one-answer
    requests go on during the grace; past it, those in flight and queued end with an error
    before the next pass."""
    inbox = cancel.Inbox(pid=2**30 + os.getpid())
    try:
        orch = Orchestrator(engine, inbox=inbox, kv_budget_tokens=80)  # room for 19 + 51
        running, queued, streamed = Client(), Client(), Client()
        orch.submit(
            GenerationRequest([5, 6], mode="ar", max_tokens=9, end_id=END), streamed, stream=True
        )
        for c in (running, queued):
            orch.submit(GenerationRequest([5, 6, 7], mode="ar", max_tokens=40, end_id=END), c)
        orch.run_once()
        assert cancel.shutdown([inbox.pid], grace_s=3600, wait_s=0) == 0  # nobody ran yet
        orch.run_once()
        assert streamed.final.error == "the server is shutting down"
        assert inbox.deadline is not None and not running.events and not queued.events
        inbox.deadline = time.monotonic()  # the grace is over
        passes = engine.passes
        orch.run_once()
        assert engine.passes == passes and engine.live_sequences == 0
        for c in (running, queued):
            assert c.final.error == "the server is shutting down"
    finally:
        inbox.close()


def test_shutdown_waits_for_the_instances_to_end_their_streams(model):
    """The scheduler thread answers a shutdown notice once its streams have ended, idle too.
    Passes held 10 ms: the 400-token stream is still running when the notice comes."""
    inbox = cancel.Inbox(pid=2**30 + os.getpid())
    orch = Orchestrator(MeteredEngine(HeldEngine(TorchEngine(model), 0.01)), inbox=inbox).start()
    try:
        c = Client()
        orch.submit(
            GenerationRequest([5, 6], mode="ar", max_tokens=400, end_id=END), c, stream=True
        )
        assert cancel.shutdown([inbox.pid], grace_s=3600, wait_s=120) == 1
        assert c.final.error == "the server is shutting down"
        assert cancel.shutdown([inbox.pid], grace_s=3600, wait_s=120) == 1  # idle now
    finally:
        orch.stop()
        inbox.close()
