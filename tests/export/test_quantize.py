"""The per-row int8 CPU engine (export/quantize.py): a request's result does not depend on the
other rows of its batch, its logits stay near fp32's, and `make engine PRECISION=int8` builds,
reports and serves it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from dlm import engines
from dlm.sampling import GenerationRequest, generate
from export import ONNX_FILE, ONNX_INT8_FILE, onnx_export, parity, quantize
from export.build import build
from export.ort_engine import ort_session
from tests.conftest import random_prompts
from tests.export.conftest import confident_nld_model


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The parity graphs (logits as an output) in fp32 and int8, and their folder."""
    model, folder = confident_nld_model(), tmp_path_factory.mktemp("int8_graphs")
    onnx_export.export_denoiser(model, folder / ONNX_FILE, parity_path=folder / "fp32.onnx")
    fp32 = onnx.load(folder / "fp32.onnx", load_external_data=False)
    onnx_export.save(quantize.per_row_int8(fp32, folder), folder / "int8.onnx")
    sessions = [ort_session(folder / f"{p}.onnx", 1) for p in ("fp32", "int8")]
    return model, *sessions, folder


def run(session, feed) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def rows(feed: dict, keep: list[int]) -> dict:
    """The same inputs for some rows only (every input has the batch on axis 0 but the KV)."""
    kv = {"past_k", "past_v"}
    return {k: (v[:, keep] if k in kv else v[keep]) for k, v in feed.items()}


def test_a_row_gets_the_same_logits_alone_or_batched(graphs):
    """Per-row scales and exact integer sums: batching never changes a request's tokens."""
    model, _, int8, _ = graphs
    case = parity.PassCase("ragged", (12, 3, 30), (8, 8, 3), (-1, -1, 0), (8, 8, 3))
    feed = parity.case_inputs(model.cfg, case)
    batched = run(int8, feed)["logits"]
    for i in range(3):
        alone = run(int8, rows(feed, [i]))["logits"][0]
        k = case.n_out[i]
        np.testing.assert_array_equal(alone[:k], batched[i, :k])


def test_int8_logits_stay_near_fp32(graphs):
    model, fp32, int8, _ = graphs
    for case in parity.pass_cases(model.cfg.block_length):
        feed = parity.case_inputs(model.cfg, case)
        a, b = run(fp32, feed)["logits"], run(int8, feed)["logits"]
        diff = np.abs(a - b).max() / np.abs(a).max()
        assert diff < 0.05, (case.name, diff)


def test_every_weight_matmul_is_quantized(graphs):
    *_, folder = graphs
    fp32, int8 = (
        onnx.load(folder / f"{g}.onnx", load_external_data=False) for g in ("fp32", "int8")
    )
    weights = {i.name for i in fp32.graph.initializer}
    n = sum(1 for x in fp32.graph.node if x.op_type == "MatMul" and x.input[1] in weights)
    assert sum(1 for x in int8.graph.node if x.op_type == "MatMulInteger") == n > 0
    assert not any(x.op_type == "MatMul" and x.input[1] in weights for x in int8.graph.node)


@pytest.fixture(scope="module")
def int8_build(nld_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "engine"
    log: list[str] = []
    return out, build(nld_build.model_dir, out, "onnxruntime", "int8", log=log.append), log


def test_build_int8_engine(nld_build, int8_build):
    out, manifest, log = int8_build
    assert manifest["precision"] == "int8"
    assert (
        manifest["files"]["onnx"] == ONNX_INT8_FILE and manifest["files"]["onnx_fp32"] == ONNX_FILE
    )
    checks = manifest["parity"]["int8"]
    assert 0.5 < checks["self_spec_vs_ar"]["agreement"] <= 1.0
    assert set(checks["agreement_with_fp32"]) == set(parity.generation_modes(nld_build.model.cfg))
    assert manifest["parity"]["generation"]["ok"]  # the fp32 graph is checked as always
    engine = engines.load_engine(nld_build.model_dir, out, threads=1)
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(out / ONNX_INT8_FILE).graph.node)
    cfg = engine.config
    prompts = random_prompts(4, vocab=cfg.vocab_size, lo=2, hi=30, seed=9)

    def tokens(requests):
        return [r.token_ids for r in generate(engine, requests)]

    reqs = [GenerationRequest(list(p), mode="self_spec", max_tokens=16) for p in prompts]
    batched = tokens(reqs)
    alone = [
        tokens([GenerationRequest(list(p), mode="self_spec", max_tokens=16)])[0] for p in prompts
    ]
    assert batched == alone  # batching never changes a request's tokens
    again = build(nld_build.model_dir, out, "onnxruntime", "int8", log=log.append)
    assert again == manifest and "[skip]" in log[-1]


def test_the_precision_benchmark_runs_both_builds(nld_build, int8_build, capsys):
    from benchmarks import cpu_precision

    argv = ["--model", str(nld_build.model_dir), "--fp32", str(nld_build.out)]
    assert (
        cpu_precision.main([*argv, "--int8", str(int8_build[0]), "--iters", "2", "--prompts", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "| speed-up of ORT int8 |" in out and "| self_spec |" in out
    assert "ORT int8: self_spec == ar:" in out and "PyTorch bf16: self_spec == ar:" in out


def test_precision_the_backend_cannot_run_is_refused(nld_build, tmp_path):
    with pytest.raises(ValueError, match="--precision=bf16: the onnxruntime backend runs auto"):
        build(nld_build.model_dir, tmp_path, "onnxruntime", "bf16")
