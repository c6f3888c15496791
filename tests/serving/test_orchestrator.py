"""The dlm scheduler thread's logic, against a TorchEngine behind the denoiser's wire format."""

import threading

import numpy as np
import pytest

from dlm.engine import TorchEngine
from dlm.sampling import GenerationRequest, generate
from dlm.serving.denoiser import Denoiser
from dlm.serving.orchestrator import Orchestrator, RemoteEngine, event_arrays
from dlm.serving.wire import pack_passes
from tests.conftest import random_prompts, tiny_model

END = 0  # pad: an end_id this random model never produced, so that lengths are exercised


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture()
def denoiser(model):
    return Denoiser(TorchEngine(model))


def remote(denoiser, namespace=1):
    return RemoteEngine(denoiser.engine.config, denoiser, namespace=namespace)


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
        if not orch.jobs and not orch._queue and not orch.engine.to_release:
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
def test_outputs_equal_in_process_generate(model, denoiser, mode, knobs, temperature):
    reference = generate(
        TorchEngine(model), requests(mode, max_tokens=21, temperature=temperature, **knobs)
    )
    orch = Orchestrator(remote(denoiser))
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
    assert denoiser.live_sequences == 0  # every cache released


def test_streaming_events_grow_to_the_final_answer(denoiser):
    orch = Orchestrator(remote(denoiser))
    c = Client()
    orch.submit(requests("self_spec", n=1, max_tokens=30)[0], c, stream=True)
    drain(orch)
    shown, passes = 0, 0
    for e in c.events:
        assert e.shown == shown and len(e.output_ids) > shown or e.final
        assert e.num_forward_passes >= passes and e.num_output_tokens == len(e.output_ids)
        shown, passes = len(e.output_ids), e.num_forward_passes
    assert c.final.num_output_tokens == 30 and len(c.events) > 1


def test_block_views_start_at_the_first_mask(denoiser):
    orch = Orchestrator(remote(denoiser))
    c = Client()
    orch.submit(
        requests("diffusion", n=1, max_tokens=16, threshold=0.99)[0],
        c,
        stream=True,
        block_views=True,
    )
    drain(orch)
    mask = denoiser.engine.config.mask_token_id
    views = [e.block_view for e in c.events if e.block_view is not None]
    assert views and all(v[0] == mask for v in views)
    assert c.final.block_view is None


def test_client_cancellation_stops_within_a_pass_and_frees_the_cache(denoiser):
    orch = Orchestrator(remote(denoiser))
    c = Client(cancel_after=3)
    orch.submit(requests("ar", n=1, max_tokens=200)[0], c, c.is_cancelled, stream=True)
    drain(orch)
    assert c.final.finish_reason == "cancelled"
    assert denoiser.passes == 3  # no pass ran after the one whose event made it cancel
    assert denoiser.live_sequences == 0


def test_cancel_reported_by_the_denoiser(denoiser):
    """The ensemble path: postprocessing tells the denoiser, the denoiser tells the scheduler."""
    orch = Orchestrator(remote(denoiser))
    c = Client()
    orch.submit(requests("ar", n=1, max_tokens=200)[0], c, stream=True)
    for _ in range(3):
        orch.run_once()
    denoiser(pack_passes([], cancel=[c.events[-1].key]))
    for _ in range(3):
        orch.run_once()
    assert c.final.finish_reason == "cancelled"
    assert c.final.num_forward_passes <= 5
    drain(orch)
    assert denoiser.live_sequences == 0 and not denoiser.cancelled


def test_bad_request_gets_its_own_error(denoiser):
    orch = Orchestrator(remote(denoiser))
    bad, good = Client(), Client()
    orch.submit(GenerationRequest([5, 6], mode="ar", max_tokens=0), bad)
    orch.submit(requests("ar", n=1, max_tokens=5)[0], good)
    drain(orch)
    assert bad.final.error.startswith("max_tokens=0")
    assert good.final.error is None and good.final.num_output_tokens == 5


def test_engine_failure_fails_what_was_in_flight_and_recovers(denoiser):
    calls = {"n": 0}

    def flaky(arrays):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("denoiser is down")
        return denoiser(arrays)

    orch = Orchestrator(RemoteEngine(denoiser.engine.config, flaky, namespace=2))
    first = [Client(), Client()]
    for c, r in zip(first, requests("ar", n=2, max_tokens=10), strict=True):
        orch.submit(r, c)
    drain(orch)
    assert all("denoiser is down" in c.final.error for c in first)
    again = Client()
    orch.submit(requests("ar", n=1, max_tokens=10)[0], again)
    drain(orch)
    assert again.final.num_output_tokens == 10
    assert denoiser.live_sequences == 0  # the failed ones were released on a later call


def test_heartbeats_for_silent_requests(denoiser):
    orch = Orchestrator(remote(denoiser), heartbeat_s=0.0)
    c = Client()
    orch.submit(requests("ar", n=1, max_tokens=6)[0], c)
    drain(orch)
    beats = [e for e in c.events if e.heartbeat]
    # One per step but the last: 6 passes for 6 tokens (the prefill gives the first).
    assert len(beats) == 5 and all(not e.output_ids and not e.final for e in beats)
    assert [e for e in c.events if not e.heartbeat] == [c.final]


def test_two_schedulers_share_one_denoiser(model, denoiser):
    reference = generate(TorchEngine(model), requests("self_spec", n=4, max_tokens=12))
    orchs = [Orchestrator(remote(denoiser, namespace=n)) for n in (5, 6)]
    clients = [Client() for _ in range(4)]
    for i, r in enumerate(requests("self_spec", n=4, max_tokens=12)):
        orchs[i % 2].submit(r, clients[i])
    while any(o.jobs or o._queue for o in orchs):
        for o in orchs:
            o.run_once()
    assert [c.final.output_ids for c in clients] == [r.token_ids for r in reference]


def test_scheduler_thread(model, denoiser):
    reference = generate(TorchEngine(model), requests("diffusion", n=6, max_tokens=17))
    orch = Orchestrator(remote(denoiser)).start()
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


def test_event_arrays_shapes(denoiser):
    orch = Orchestrator(remote(denoiser))
    c = Client()
    orch.submit(requests("ar", n=1, max_tokens=3)[0], c)
    drain(orch)
    arrays = event_arrays(c.final)
    assert arrays["output_ids"].shape == (1, 3) and arrays["output_ids"].dtype == np.int32
    assert arrays["block_ids"].shape == (1, 0)
    assert arrays["final"].tolist() == [[True]] and arrays["seq_key"].dtype == np.int64


# ---------------------------------------------------------------- KV budget and the queue
def test_kv_budget_queues_beyond_it_and_admits_in_order(model, denoiser):
    reqs = requests("ar", n=4, max_tokens=10)
    block = denoiser.engine.config.block_length
    needs = [len(r.prompt_ids) + 10 + block for r in reqs]
    budget = needs[0] + needs[1]  # room for two at a time
    orch = Orchestrator(remote(denoiser), kv_budget_tokens=budget)
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


def test_request_above_the_whole_budget_is_refused_naming_the_limit(denoiser):
    orch = Orchestrator(remote(denoiser), kv_budget_tokens=20)
    c = Client()
    orch.submit(GenerationRequest([5, 6, 7], mode="ar", max_tokens=30, end_id=END), c)
    orch.run_once()
    assert c.final.finish_reason == "error"
    assert "busy:" in c.final.error and "kv_budget_tokens=20" in c.final.error
    assert not orch.jobs and orch.kv_in_use == 0


def test_full_queue_answers_busy_at_once(denoiser):
    orch = Orchestrator(remote(denoiser), max_queued=2)
    clients = [Client() for _ in range(3)]
    for c in clients:
        orch.submit(GenerationRequest([5, 6, 7], mode="ar", max_tokens=4, end_id=END), c)
    assert clients[2].final.finish_reason == "error"
    assert "max_queued=2" in clients[2].final.error and "busy" in clients[2].final.error
    drain(orch)
    assert [c.final.finish_reason for c in clients[:2]] == ["length", "length"]


def test_cancelled_while_queued_never_runs(denoiser):
    orch = Orchestrator(remote(denoiser), kv_budget_tokens=60)
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
