"""serving.metrics: what a finished request's rounds put in the histograms."""

from types import SimpleNamespace

from dlm import cost
from dlm.engine import TorchEngine
from dlm.sampling import GenerationRequest
from dlm.sampling.sequence import BlockStats
from serving.engine import MeteredEngine
from serving.metrics import ServingMetrics
from tests.conftest import tiny_model
from tests.serving import fake_pb_utils as pb


def test_auto_ar_steps_count_only_as_block_sizes():
    """Every round of auto is a block size (1: an AR step); only the speculative rounds are
    accepted and draft tokens (each observation is an IPC to the server)."""
    engine = TorchEngine(tiny_model())
    engine.cost_model = cost.CostModel([1, 8], [1, 96], [[0.01] * 2] * 2, "flat")  # no timing
    metrics = ServingMetrics(pb, MeteredEngine(engine))
    blocks = [BlockStats(1, 1), BlockStats(1, 1, 0, 1), BlockStats(3, 1, 2, 4)]
    blocks += [BlockStats(1, 1, 0, 1)]
    seq = SimpleNamespace(
        request=GenerationRequest([1, 2], mode="auto"),
        nfe=4,
        output=[5] * 6,
        cfg=engine.config,
        blocks=blocks,
    )
    before = dict(pb.METRICS)
    metrics.finished(seq)
    metrics.report(now=True)()

    def observed(name):
        key = (name, (("mode", "auto"), ("model", "dlm")))
        return pb.METRICS[key] - before.get(key, 0)

    assert observed("dlm_self_spec_block_size") == 3
    assert observed("dlm_self_spec_accepted_tokens") == 1
    assert observed("dlm_self_spec_draft_tokens") == 1
    assert observed("dlm_tokens_per_forward") == 1
    # self_spec's block is the request's: its rounds are accepted and draft tokens only
    seq.request = GenerationRequest([1, 2], mode="self_spec")
    seq.blocks = [BlockStats(1, 1), BlockStats(3, 1, 2, 4), BlockStats(2, 1, 3, 4)]
    metrics.finished(seq)
    metrics.report(now=True)()
    spec = (("mode", "self_spec"), ("model", "dlm"))
    assert (
        pb.METRICS[("dlm_self_spec_accepted_tokens", spec)]
        - before.get(("dlm_self_spec_accepted_tokens", spec), 0)
        == 2
    )
    assert observed("dlm_self_spec_block_size") == 3  # auto's only
    assert ("dlm_self_spec_block_size", spec) not in pb.METRICS
