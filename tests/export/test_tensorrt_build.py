"""TensorRT: the plain-code decisions are tested; building and running a plan needs TensorRT,
which is absent on these machines (not installable, see shared/ENVIRONMENT.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlm.engine import TorchEngine
from dlm.sampling import GenerationRequest, Limits, Scheduler
from export import tensorrt_build as tb
from export import tensorrt_engine as te
from export.contract import INPUTS
from tests.conftest import random_prompts, tiny_model

TRT_ABSENT = "TensorRT is absent here: not installable on these machines (ENVIRONMENT.md)"
needs_tensorrt = pytest.mark.skipif(not te.tensorrt_available(), reason=TRT_ABSENT)


def test_profiles_are_ordered_and_consistent():
    cfg = tiny_model().cfg  # max_position 512, block 8
    lim = Limits(max_prompt_tokens=100, max_output_tokens=60, max_block_length=16)
    step, prefill = te.optimization_profiles(cfg, lim, max_batch=8, opt_batch=4, opt_past=64)
    assert step.name == "step" and prefill.name == "prefill"
    for p in (step, prefill):
        for axis, (lo, opt, hi) in p.dims.items():
            assert 0 <= lo <= opt <= hi, (p.name, axis)
        assert p.dims["k"][2] <= p.dims["block"][2]
    assert step.dims == {
        "batch": (1, 4, 8),
        "block": (1, 8, 16),
        "past": (0, 64, 159),
        "k": (1, 8, 16),
        "history": (1, 1, 60),
    }
    assert prefill.dims["block"] == (1, 128, 160) and prefill.dims["past"] == (0, 0, 159)


def test_profiles_respect_the_model_context():
    cfg = tiny_model(max_position=64).cfg
    step, prefill = te.optimization_profiles(cfg, Limits(), max_batch=2, opt_past=256)
    assert step.dims["past"] == (0, 63, 63) and prefill.dims["block"][2] == 64
    assert step.dims["batch"] == (1, 2, 2)  # opt_batch capped at max_batch


def test_bidirectional_family_gets_one_profile_without_past():
    cfg = tiny_model(attention="bidirectional").cfg
    (full,) = te.optimization_profiles(cfg, Limits(max_prompt_tokens=50, max_output_tokens=30))
    assert full.dims["past"] == (0, 0, 0) and full.dims["block"][2] == 80


def test_profile_shapes_per_input():
    cfg = tiny_model().cfg
    step = te.optimization_profiles(cfg)[0]
    shapes = step.shapes(cfg)
    assert set(shapes) == set(INPUTS)
    lo, opt, hi = shapes["past_k"]
    assert lo == (cfg.num_layers, 1, cfg.num_kv_heads, 0, cfg.head_dim)
    assert opt[1] == step.dims["batch"][1] and opt[3] == step.dims["past"][1]
    assert shapes["out_index"][2] == (step.dims["batch"][2], step.dims["k"][2])
    assert shapes["seed"][0] == (1,)


class RecordingEngine(TorchEngine):
    """TorchEngine that records the dynamic axes of every engine call."""

    def __init__(self, model):
        super().__init__(model)
        self.calls: list[dict[str, int]] = []

    def step(self, passes):
        from dlm.engine import pack_batch

        feed = pack_batch(passes, [self.kv.cached(p.seq_id) for p in passes])
        self.calls.append(te.pass_dims(feed))
        return super().step(passes)


@pytest.mark.parametrize("attention", ["block_causal", "bidirectional"])
def test_every_sampler_call_fits_a_profile(attention):
    """Run the real samplers at the serving limits, with requests arriving while others decode
    (so prefill rows meet cached rows in one call); every engine call must fall inside one of
    the profiles built for those limits."""
    lim = Limits(max_prompt_tokens=40, max_output_tokens=24, max_block_length=8)
    model = tiny_model(attention=attention)
    engine = RecordingEngine(model)
    profiles = te.optimization_profiles(model.cfg, lim, max_batch=6)
    modes = ["ar", "diffusion", "self_spec"] if attention == "block_causal" else ["diffusion"]
    prompts = random_prompts(5, lo=1, hi=40, seed=2) + [[5] * 40]
    sched = Scheduler(engine, lim, max_batch=6)
    for i, p in enumerate(prompts):
        sched.add(GenerationRequest(p, mode=modes[i % len(modes)], max_tokens=24, end_id=63))
        sched.step()
    while len(sched):
        sched.step()
    assert engine.calls
    for dims in engine.calls:
        te.select_profile(profiles, dims)  # raises if none covers it
    if attention == "block_causal":  # a prompt of 40 met rows with a cached prefix
        assert any(d["past"] > 0 and d["block"] > 8 for d in engine.calls)
    assert max(d["block"] for d in engine.calls) == 40 + 24 * (attention != "block_causal")


def test_select_profile_prefers_step_and_names_the_miss():
    cfg = tiny_model().cfg
    lim = Limits(max_prompt_tokens=100, max_block_length=16)
    profiles = te.optimization_profiles(cfg, lim, max_batch=4)
    one = {"history": 1}
    assert te.select_profile(profiles, {"batch": 2, "block": 8, "past": 40, "k": 8, **one}) == 0
    assert te.select_profile(profiles, {"batch": 2, "block": 90, "past": 0, "k": 1, **one}) == 1
    with pytest.raises(ValueError, match="outside every optimization profile"):
        te.select_profile(profiles, {"batch": 5, "block": 8, "past": 0, "k": 8, **one})


@pytest.mark.parametrize(
    "requested,cap,expected",
    [
        ("auto", (9, 0), "bf16"),
        ("auto", (8, 0), "bf16"),
        ("auto", (7, 5), "fp16"),
        ("fp32", (7, 5), "fp32"),
        ("fp16", (9, 0), "fp16"),
        ("bf16", (8, 6), "bf16"),
    ],
)
def test_choose_precision(requested, cap, expected):
    assert tb.choose_precision(requested, cap) == expected


@pytest.mark.parametrize(
    "requested,cap,match",
    [
        ("bf16", (7, 5), "compute capability >= 8.0"),
        ("fp8", (8, 0), ">= 8.9"),
        ("fp8", (9, 0), "Q/DQ"),
        ("int4", (9, 0), "must be one of"),
    ],
)
def test_choose_precision_refusals(requested, cap, match):
    with pytest.raises(ValueError, match=match):
        tb.choose_precision(requested, cap)


def test_validation_tolerances():
    fp32 = tb.validation_tolerances("fp32", 4096)
    assert fp32["token"] == (0.0, 0.0)
    bf16 = tb.validation_tolerances("bf16", 4096)
    assert bf16["token"][0] == 4096.0 and bf16["new_k"][0] > fp32["new_k"][0]
    assert tb.validation_tolerances("fp16", 4096)["new_k"][0] < bf16["new_k"][0]


def test_dockerfile_pins_the_tensorrt_version_of_the_code():
    dockerfile = (Path(__file__).parents[2] / "docker" / "engine.Dockerfile").read_text()
    assert f"ARG TENSORRT_VERSION={te.TENSORRT_PIN}" in dockerfile
    major, minor = (int(x) for x in te.TENSORRT_PIN.split(".")[:2])
    assert te.TENSORRT_MIN <= (major, minor) < te.TENSORRT_BELOW


def test_require_tensorrt_says_it_is_absent():
    if te.tensorrt_available():
        pytest.skip("TensorRT is present: this checks the message where it is absent")
    with pytest.raises(ImportError, match="TensorRT is absent here"):
        te.require_tensorrt()
    with pytest.raises(ImportError, match="TensorRT is absent here"):
        te.TrtEngine("missing.plan", tiny_model().cfg)


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
def test_build_and_run_a_plan(tmp_path):  # pragma: no cover - needs TensorRT and a GPU
    import torch

    from dlm import checkpoint
    from export import parity
    from export.build import build

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    checkpoint.save(tiny_model(vocab_size=300), tmp_path / "m")
    m = build(tmp_path / "m", tmp_path / "e", backend="tensorrt", precision="fp32")
    assert m["tensorrt"]["validation"]["ok"], parity.format_generation_parity(
        m["tensorrt"]["validation"]["generation"]
    )
