"""The PyTorch engine's padded passes (dlm.graphs), what a CUDA graph captures and replays: the
eager engine's tokens and passes in every mode, with sampling, ragged batches and a growing
cache; no host read or data-dependent shape in the pass (a capture's requirement, checked
under FakeTensorMode); batches outside the buckets run eagerly. The capture itself needs CUDA."""

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from dlm import graphs as graphs_mod
from dlm import kv as kv_mod
from dlm.engine import PassRequest, TorchEngine, pack_batch
from dlm.sampling import GenerationRequest, generate
from plugins.denoise_step.reference import denoise_step_torch
from tests.conftest import random_prompts, tiny_model
from tests.dlm.test_kv import END, confident, requests, same

KNOBS = ({}, {"temperature": 0.8, "seed": 5}, {"frequency_penalty": 0.5})


@pytest.mark.parametrize("mode", ("ar", "diffusion", "self_spec", "auto"))
def test_padded_passes_give_the_eager_tokens_and_passes(mode, one_thread):
    model = confident()
    prompts = random_prompts(10, lo=2, hi=40, seed=4)  # ragged: 10 rows padded to 16
    for kw in KNOBS:
        padded, eager = TorchEngine(model, graphs=True), TorchEngine(model, graphs=False)
        got = generate(padded, requests(prompts, mode, **kw))
        # auto's passes follow the step times it measures: its tokens are ar's either way
        same(got, generate(eager, requests(prompts, mode, **kw)), passes=mode != "auto")
        assert len(padded.kv) == 0
        shapes = padded.graphs.graphs
        if "frequency_penalty" in kw:  # penalised passes run eagerly (the prefills: too large)
            assert mode == "auto" or not shapes
            continue
        assert shapes and all(
            r in graphs_mod.ROWS and t in graphs_mod.TOKENS for r, t, *_ in shapes
        )
        assert any(sample for *_, sample in shapes) == ("temperature" in kw)


# Triton's interpreter reads its scalars from 1-element arrays (NumPy deprecates that)
@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")
@pytest.mark.parametrize("graphs", (True, False))
def test_the_fused_triton_denoise_step_gives_the_same_tokens(graphs, one_thread):
    """The engine's DenoiseStep on CUDA (`default_denoise_step`), here in Triton's interpreter
    (TRITON_INTERPRET=1, tests/conftest.py): the PyTorch step's tokens, greedy and sampled."""
    triton_kernel = pytest.importorskip("plugins.denoise_step.triton_kernel")
    model = confident()
    prompts = random_prompts(3, lo=2, hi=12, seed=7)
    for mode, kw in (("ar", {}), ("self_spec", {"temperature": 0.8, "seed": 5})):
        fused = TorchEngine(model, graphs=graphs, denoise_step=triton_kernel.denoise_step_triton)

        def short(mode=mode, kw=kw):
            return [
                GenerationRequest(list(p), mode=mode, end_id=END, max_tokens=10, **kw)
                for p in prompts
            ]

        same(generate(fused, short()), generate(TorchEngine(model, graphs=False), short()))


def test_a_logits_shift_family_gives_the_same_tokens(one_thread):
    model = tiny_model(seed=2, logits_shift=True)
    prompts = random_prompts(5, lo=3, hi=20, seed=1)
    for mode in ("ar", "diffusion"):
        want = generate(TorchEngine(model, graphs=False), requests(prompts, mode))
        same(generate(TorchEngine(model, graphs=True), requests(prompts, mode)), want)


def test_graphs_of_a_cache_that_grew_are_dropped(one_thread, monkeypatch):
    monkeypatch.setattr(kv_mod, "FIRST_CAPACITY", 16)
    model = confident()
    engine = TorchEngine(model, graphs=True)
    storage = engine.kv.k.data_ptr()
    prompts = random_prompts(12, lo=10, hi=40, seed=10)  # 12 rows: more slots, longer slots
    for mode in ("ar", "self_spec"):
        want = generate(TorchEngine(model, graphs=False), requests(prompts, mode))
        same(generate(engine, requests(prompts, mode)), want)
    assert engine.kv.capacity > 16 and engine.kv.slots > kv_mod.FIRST_SLOTS + 1
    assert engine.kv.k.data_ptr() != storage
    assert engine.graphs._storage == engine.kv.k.data_ptr()  # its graphs are of today's cache
    assert max(keys for _, _, _, keys, _ in engine.graphs.graphs) <= engine.kv.capacity


def passes_of(kind: str) -> list[PassRequest]:
    """Two rows of a pass of each kind: an AR step, a sampled draft, a fork (self_spec)."""
    if kind == "ar":
        return [PassRequest(0, 4, [9], 0, True, 1), PassRequest(1, 2, [7], 0, True, 1)]
    if kind == "sampled":
        return [
            PassRequest(0, 4, [9, 3, 3, 3], 3, True, 4, temperature=0.7, seed=11),
            PassRequest(1, 2, [7, 3], 1, True, 2),
        ]
    return [
        PassRequest(0, 4, [9, 3, 3, 8, 3], 2, True, 5, fork=2),
        PassRequest(1, 2, [7], 0, True, 1),
    ]


@pytest.mark.parametrize("kind", ("ar", "sampled", "fork"))
def test_a_padded_pass_reads_nothing_back_on_the_host(kind):
    """FakeTensorMode raises on an op whose result's shape or a Python value depends on the
    data (a `.item()`, `nonzero`, a boolean index): what a CUDA graph cannot capture."""
    engine = TorchEngine(tiny_model(), graphs=True)
    prefix = [PassRequest(i, 0, list(range(5, 5 + n)), 0, True, 1) for i, n in ((0, 4), (1, 2))]
    engine.step(prefix)
    passes = passes_of(kind)
    feed = pack_batch(passes, [4, 2])
    with torch.inference_mode():
        engine.run_batch(passes, feed)  # a real run first: the graph's buffers hold this pass
        graph = engine.graphs.graphs[engine.graphs.shape(feed)]
        with FakeTensorMode(allow_non_fake_inputs=True):
            graph.forward()
        with (
            pytest.raises(Exception, match="local_scalar_dense"),
            FakeTensorMode(allow_non_fake_inputs=True),
        ):
            # the eager DenoiseStep asks the device whether a row samples: it could not be captured
            denoise_step_torch(
                torch.zeros(2, 3, 8), torch.zeros(2), torch.zeros(2, dtype=torch.int64)
            )


def test_passes_outside_the_buckets_run_eagerly():
    engine = TorchEngine(tiny_model(), graphs=True)
    shape = engine.graphs.shape

    def feed(rows: int, tokens: int, **kw) -> dict[str, np.ndarray]:
        passes = [PassRequest(i, 0, [5] * tokens, 0, True, 1, **kw) for i in range(rows)]
        return pack_batch(passes, [0] * rows)

    assert shape(feed(3, 5)) == (4, 8, 1, graphs_mod.MIN_KEYS, False)
    assert shape(feed(1, 100, temperature=0.5)) is None  # more tokens than the largest bucket
    assert shape(feed(1, 40, temperature=0.5)) == (1, 64, 1, graphs_mod.MIN_KEYS, True)
    long = pack_batch([PassRequest(0, 90, [5], 0, True, 1)], [90])
    assert shape(long) == (1, 1, 1, 128, False)  # keys: 91 -> the next power of two
    cap = engine.kv.capacity
    assert shape(pack_batch([PassRequest(0, cap - 1, [5], 0, True, 1)], [cap - 1]))[3] == cap
    assert shape(feed(1, max(graphs_mod.TOKENS) + 1)) is None
    assert shape(feed(max(graphs_mod.ROWS) + 1, 1)) is None
    assert shape(feed(16, 20)) is None  # 16 x 32 padded tokens: past MAX_GRAPH_TOKENS
    assert shape(feed(8, 20))[:2] == (8, 32)  # 256: graphed
    penalized = [PassRequest(0, 0, [5, 6], 0, True, 1, history=[5], penalty_len=[1])]
    assert shape(pack_batch(penalized, [0])) is None


def test_the_least_recently_replayed_graph_makes_room(monkeypatch, one_thread):
    monkeypatch.setattr(graphs_mod, "MAX_GRAPHS", 2)
    model = confident()
    padded, eager = TorchEngine(model, graphs=True), TorchEngine(model, graphs=False)
    shapes = []
    for sid, tokens in enumerate(([5, 6, 7], [5], [5, 6, 7], [5, 6, 7, 8, 9])):
        passes = [PassRequest(sid, 0, tokens, 0, True, 1)]
        got, want = padded.step(passes), eager.step(passes)
        assert got[0].tokens.tolist() == want[0].tokens.tolist()
        shapes.append(list(padded.graphs.graphs))
    four, one, eight = ((1, t, 1, graphs_mod.MIN_KEYS, False) for t in (4, 1, 8))
    assert shapes == [[four], [four, one], [one, four], [four, eight]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where capture fails")
def test_a_failed_capture_leaves_the_engine_running_eagerly(caplog, one_thread):
    """Capturing on a machine without CUDA fails for real (no CUDA stream, no pinned memory):
    the failure is logged, the pass runs eagerly, and so does every later one."""
    model = confident()
    engine = TorchEngine(model, graphs=True)
    engine.graphs.capture = True  # as on a GPU
    prompts = random_prompts(4, lo=2, hi=20, seed=3)
    want = generate(TorchEngine(model, graphs=False), requests(prompts, "self_spec"))
    with caplog.at_level("WARNING", logger="dlm.graphs"):
        same(generate(engine, requests(prompts, "self_spec")), want)
    assert engine.graphs.failed and not engine.graphs.graphs
    assert sum("CUDA graph capture failed" in r.message for r in caplog.records) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (none here)")
@pytest.mark.parametrize("mode", ("ar", "diffusion", "self_spec"))
def test_cuda_graphs_give_the_eager_tokens(mode):
    model = confident()
    prompts = random_prompts(10, lo=2, hi=40, seed=4)
    for kw in KNOBS[:2]:
        graphed = TorchEngine(model, "cuda", graphs=True)
        want = generate(TorchEngine(model, "cuda", graphs=False), requests(prompts, mode, **kw))
        same(generate(graphed, requests(prompts, mode, **kw)), want)
        assert graphed.graphs.failed is None  # captured, not fallen back to eager
        assert all(g.graph is not None for g in graphed.graphs.graphs.values())
