"""Custom metrics of the `dlm` model, served by Triton on its metrics port
(Prometheus text at http://127.0.0.1:8002/metrics, beside Triton's own `nv_*` families).

`pb` is the Python backend's `triton_python_backend_utils` (or a fake in tests): the families
are made with `pb.MetricFamily(name, description, kind)` and `family.Metric(labels=...)`.

dlm_requests{mode}                   counter    requests admitted
dlm_forward_passes{mode}             counter    forward passes run (prefill and commit included)
dlm_output_tokens{mode}              counter    tokens committed
dlm_tokens_per_forward{mode}         histogram  per finished request: tokens / passes
dlm_self_spec_accepted_tokens{mode} histogram  per speculative round: tokens committed
dlm_self_spec_draft_tokens{mode}    histogram  per speculative round: draft tokens verified
                                               (0: no draft was ready)
dlm_self_spec_block_size{mode=auto} histogram  per auto round: the block size it chose
                                               (1 = an AR step)
dlm_canvas_denoising_steps           histogram  per DiffusionGemma canvas: denoising steps run
dlm_canvas_tokens_per_step           histogram  per canvas: tokens committed / denoising steps
dlm_engine_pass_seconds{rows,tokens} gauge     the engine's cost model (dlm.cost), as measured
                                               (the models that serve mode=auto)
dlm_sequences_in_flight              gauge      requests in the scheduler
dlm_engine_live_sequences            gauge      sequences whose KV cache the engine holds
dlm_engine_steps / _passes           counter    engine calls (steps), and passes run in them
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from dlm import cost
from dlm.gemma import MODEL_TYPE as GEMMA
from dlm.sampling import MODES, GenerationRequest
from dlm.sampling.sequence import Sequence
from serving.engine import MeteredEngine

# Per-pass counts and gauges are reported at most this often (and when the scheduler goes idle):
# each update is an IPC to the server, and a pass of a small model takes a few ms.
FLUSH_S = 0.1
TPF_BUCKETS = [1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]
ACCEPT_BUCKETS = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0]
DRAFT_BUCKETS = [0.0, *ACCEPT_BUCKETS]
SPECULATIVE = ("self_spec", "auto")  # the modes that run self-speculation rounds
STEP_BUCKETS = [1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0, 1024.0]


class _Families:
    """Makes MetricFamily objects and keeps them alive: the backend refuses to update a Metric
    whose family was garbage-collected."""

    def __init__(self, pb) -> None:
        self.mf, self.kept = pb.MetricFamily, []
        self.COUNTER, self.GAUGE, self.HISTOGRAM = self.mf.COUNTER, self.mf.GAUGE, self.mf.HISTOGRAM

    def __call__(self, **kw):
        self.kept.append(self.mf(**kw))
        return self.kept[-1]


class ServingMetrics:
    """The orchestrator's metrics (see `serving.orchestrator.NullMetrics`)."""

    def __init__(self, pb, engine: MeteredEngine, model: str = "dlm") -> None:
        mf = _Families(pb)
        self.engine = engine
        label = {"model": model}

        def per_mode(name: str, doc: str, kind, **kw) -> dict:
            family = mf(name=name, description=doc, kind=kind)
            return {m: family.Metric(labels={**label, "mode": m}, **kw) for m in MODES}

        self.requests = per_mode(
            "dlm_requests", "Requests admitted, per generation mode", mf.COUNTER
        )
        self.passes = per_mode(
            "dlm_forward_passes", "Forward passes run, per generation mode", mf.COUNTER
        )
        self.tokens = per_mode(
            "dlm_output_tokens", "Output tokens committed, per generation mode", mf.COUNTER
        )
        self.tpf = per_mode(
            "dlm_tokens_per_forward",
            "Tokens per forward pass of each finished request",
            mf.HISTOGRAM,
            buckets=TPF_BUCKETS,
        )
        self.accepted = per_mode(
            "dlm_self_spec_accepted_tokens",
            "Tokens committed per self-speculation round (accepted drafts + 1)",
            mf.HISTOGRAM,
            buckets=ACCEPT_BUCKETS,
        )
        self.drafts = per_mode(
            "dlm_self_spec_draft_tokens",
            "Draft tokens verified per speculative round (0: none was ready)",
            mf.HISTOGRAM,
            buckets=DRAFT_BUCKETS,
        )
        self.sizes = mf(  # self_spec's is the request's block
            name="dlm_self_spec_block_size",
            description="Block size auto chose for each of its rounds (1: an AR step)",
            kind=mf.HISTOGRAM,
        ).Metric(labels={**label, "mode": "auto"}, buckets=ACCEPT_BUCKETS)
        self.canvas_steps = mf(
            name="dlm_canvas_denoising_steps",
            description="Denoising steps per DiffusionGemma canvas",
            kind=mf.HISTOGRAM,
        ).Metric(labels=label, buckets=STEP_BUCKETS)
        self.canvas_tpf = mf(
            name="dlm_canvas_tokens_per_step",
            description="Tokens committed per denoising step of a canvas",
            kind=mf.HISTOGRAM,
        ).Metric(labels=label, buckets=TPF_BUCKETS)
        self.pass_seconds = []  # kept: a Metric that is garbage-collected is no longer exported
        if "auto" in engine.config.modes:
            self._pass_seconds(mf, label)
        self.inflight = mf(
            name="dlm_sequences_in_flight",
            description="Requests in the dlm scheduler",
            kind=mf.GAUGE,
        ).Metric(labels=label)
        self._inflight = 0
        self.live = mf(
            name="dlm_engine_live_sequences",
            description="Sequences whose KV cache the engine holds",
            kind=mf.GAUGE,
        ).Metric(labels=label)
        self.steps = mf(
            name="dlm_engine_steps", description="Engine calls (steps)", kind=mf.COUNTER
        ).Metric(labels=label)
        self.engine_passes = mf(
            name="dlm_engine_passes", description="Passes run by the engine", kind=mf.COUNTER
        ).Metric(labels=label)
        self._seen = (0, 0, 0)  # live, steps, passes last reported
        self._pending = _Pending()
        self._inflight_now, self._flushed = 0, 0.0
        self.families = mf

    def _pass_seconds(self, mf, label: dict) -> None:
        pass_seconds = mf(
            name="dlm_engine_pass_seconds",
            description="The engine's measured pass time by rows and tokens per row (dlm.cost)",
            kind=mf.GAUGE,
        )
        model = cost.for_engine(self.engine)
        for r, line in zip(model.rows, model.seconds, strict=True):
            for t, seconds in zip(model.tokens, line, strict=True):
                labels = {**label, "rows": str(r), "tokens": str(t)}
                self.pass_seconds.append(pass_seconds.Metric(labels=labels))
                self.pass_seconds[-1].set(seconds)

    def admitted(self, request: GenerationRequest) -> None:
        self._pending.admitted[request.mode] += 1

    def progressed(self, mode: str, passes: int, tokens: int) -> None:
        counts = self._pending.progress.setdefault(mode, [0, 0])
        counts[0] += passes
        counts[1] += tokens

    def finished(self, seq: Sequence) -> None:
        """Keeps what a finished request's histograms observe (sent with the next report)."""
        mode, got = seq.request.mode, self._pending.observed
        if seq.nfe:
            got.append((self.tpf[mode], len(seq.output) / seq.nfe))
        if seq.cfg.family == GEMMA:
            for block in seq.blocks:
                got.append((self.canvas_steps, block.passes))
                got.append((self.canvas_tpf, block.tokens / max(1, block.passes)))
        if mode in SPECULATIVE:
            for block in seq.blocks[1:]:  # blocks[0] is the prefill's token
                if mode == "auto":
                    got.append((self.sizes, block.size))
                if block.size > 1:  # an AR step of auto: 1 token, no draft (one IPC, not three)
                    got.append((self.accepted[mode], block.tokens))
                    got.append((self.drafts[mode], block.draft))

    def in_flight(self, n: int) -> None:
        self._inflight_now = n

    def report(self, now: bool = False) -> Callable[[], None] | None:
        """What accumulated since the last report, as a function that sends it (every update
        is an IPC to the server: about 30 us idle, 0.1 ms and more under load; a self_spec
        request's rounds alone are about 50 histogram observations), for the outbox thread;
        None until FLUSH_S after the last one, unless `now`."""
        if not now and time.monotonic() - self._flushed < FLUSH_S:
            return None
        self._flushed = time.monotonic()
        p, self._pending = self._pending, _Pending()
        counts = [(self.requests[m], n) for m, n in p.admitted.items()]
        for mode, (passes, tokens) in p.progress.items():
            counts += [(self.passes[mode], passes), (self.tokens[mode], tokens)]
        e, (live, steps, passes) = self.engine, self._seen
        counts += [(self.steps, e.steps - steps), (self.engine_passes, e.passes - passes)]
        updates = [(metric.increment, n) for metric, n in counts if n]
        updates += [(metric.observe, value) for metric, value in p.observed]
        if self._inflight_now != self._inflight:
            updates.append((self.inflight.set, self._inflight_now))
            self._inflight = self._inflight_now
        if e.live_sequences != live:
            updates.append((self.live.set, e.live_sequences))
        self._seen = (e.live_sequences, e.steps, e.passes)
        if not updates:
            return None

        def send() -> None:
            for update, value in updates:
                update(value)

        return send


@dataclass
class _Pending:
    """What the scheduler counted since the last report."""

    admitted: Counter = field(default_factory=Counter)  # mode -> requests
    progress: dict[str, list[int]] = field(default_factory=dict)  # mode -> [passes, tokens]
    observed: list[tuple] = field(default_factory=list)  # (histogram, value)
