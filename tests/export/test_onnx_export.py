"""The exported denoiser graph: contract, parity with PyTorch, Polygraphy, the plugin form."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from export import contract, onnx_export, parity, tensorrt_build
from export.ort_engine import ort_session
from tests.conftest import tiny_model


def test_graph_contract(nld_build):
    graph = onnx.load(str(nld_build.out / "denoiser.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    cfg = nld_build.model.cfg
    assert [i.name for i in graph.graph.input] == list(contract.INPUTS)
    assert [o.name for o in graph.graph.output] == list(contract.OUTPUTS)  # no logits
    summary = onnx_export.check_graph(nld_build.out / "denoiser.onnx", cfg)
    assert summary["opset"] == 18
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in graph.graph.input
    }
    assert dims["past_k"] == [cfg.num_layers, "batch", cfg.num_kv_heads, "past", cfg.head_dim]
    assert dims["out_index"] == ["batch", "k"]


def test_weights_lie_beside_the_graph(nld_build):
    """No graph is capped by protobuf's 2 GB: the graph's proto holds its structure, the weights
    lie in denoiser.onnx.data, which the parity graph reads too; ONNX Runtime runs the files."""
    out = nld_build.out
    data = out / "denoiser.onnx.data"
    params = sum(p.numel() * p.element_size() for p in nld_build.model.parameters())
    assert data.stat().st_size >= 0.9 * params
    for name in ("denoiser.onnx", "denoiser.parity.onnx"):
        graph = onnx.load(str(out / name), load_external_data=False)
        assert sum(len(t.raw_data) for t in graph.graph.initializer) < 0.1 * params
        big = [t for t in graph.graph.initializer if np.prod(t.dims) * 4 > onnx_export.INLINE_BYTES]
        assert big and all(uses_external_data(t) for t in big)
        assert {ExternalDataInfo(t).location for t in big} == {data.name}


def test_onnx_runtime_fuses_every_rms_norm(nld_build, tmp_path):
    """The exported norms (x / sqrt(mean(x^2) + eps) * w) load as one kernel each in ONNX Runtime
    (SimplifiedLayerNormalization): two per layer and the final one."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(nld_build.out / "denoiser.onnx"), opts, ["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    fused = [n for n in graph.graph.node if n.op_type == "SimplifiedLayerNormalization"]
    assert len(fused) == 2 * nld_build.model.cfg.num_layers + 1


def test_attention_reads_kv_as_it_is(nld_build):
    """GQA in the graph broadcasts K/V over the query heads that share them: the values reach
    each attention's second MatMul straight from the concatenation of past and new (no Expand
    repeating them), and the softmax feeds it directly (no NaN guard: every query sees a key)."""
    graph = onnx.load(str(nld_build.out / "denoiser.onnx"), load_external_data=False).graph
    made_by = {out: n for n in graph.node for out in n.output}
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == nld_build.model.cfg.num_layers
    for s in softmaxes:
        (matmul,) = [n for n in graph.node if s.output[0] in n.input]
        assert matmul.op_type == "MatMul"
        chain, node = [], made_by[matmul.input[1]]
        while node.op_type not in ("Concat", "Cast"):
            chain.append(node.op_type)
            node = made_by[node.input[0]]
        assert chain == ["Unsqueeze"], chain


def test_parity_figures_in_the_manifest(nld_build):
    """Logits tolerance: LOGITS_ATOL (1e-4) x max(1, max |logits|); fp32 lands near 1e-6."""
    p = nld_build.manifest["parity"]["pass"]
    assert p["ok"], "\n".join(parity.format_pass_parity(p))
    names = {c["case"] for c in p["cases"]}
    assert {"prefill", "denoise-cached-ragged", "ar-cached", "verify-and-draft"} <= names
    assert all(c["past"] > 0 for c in p["cases"] if c["case"] != "prefill")  # cached prefixes
    assert p["logits_max_abs_diff"] < 1e-4, "\n".join(parity.format_pass_parity(p))
    for c in p["cases"]:
        assert c["greedy_tokens_equal"] and c["kv_max_abs_diff"] < 1e-4, c


def test_check_graph_rejects_logits_output(nld_build):
    with pytest.raises(ValueError, match="logits must not leave the graph"):
        onnx_export.check_graph(nld_build.out / "denoiser.parity.onnx", nld_build.model.cfg)


def test_polygraphy_inspect_and_onnxrt_run(nld_build, tmp_path):
    """`polygraphy inspect model` reads the contract; `polygraphy run --onnxrt` on saved inputs
    reproduces PyTorch (the same JSON inputs format TensorRT validation would load)."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json

    onnx_path = str(nld_build.out / "denoiser.onnx")
    polygraphy = [sys.executable, str(Path(sys.executable).parent / "polygraphy")]
    text = subprocess.run(
        polygraphy + ["inspect", "model", onnx_path], check=True, capture_output=True, text=True
    ).stdout
    for name in ("input_ids", "past_k", "token", "confidence", "new_v"):
        assert name in text
    assert "logits" not in text
    model, cfg = nld_build.model, nld_build.model.cfg
    feeds = [
        parity.case_inputs(cfg, c, seed=i)
        for i, c in enumerate(parity.pass_cases(cfg.block_length))
    ]
    save_json(feeds, str(tmp_path / "inputs.json"))
    subprocess.run(
        polygraphy
        + [
            "run",
            onnx_path,
            "--onnxrt",
            "--load-inputs",
            str(tmp_path / "inputs.json"),
            "--save-outputs",
            str(tmp_path / "outputs.json"),
        ],
        check=True,
        capture_output=True,
    )
    # docker/build_engine.sh's comparison, with ONNX Runtime standing in for TensorRT.
    tolerances = tensorrt_build.polygraphy_tolerance_args("fp32", cfg.vocab_size)
    subprocess.run(
        polygraphy
        + [
            "run",
            onnx_path,
            "--onnxrt",
            "--load-inputs",
            str(tmp_path / "inputs.json"),
            "--load-outputs",
            str(tmp_path / "outputs.json"),
            *tolerances,
        ],
        check=True,
        capture_output=True,
    )
    ((_, outputs),) = RunResults.load(str(tmp_path / "outputs.json")).items()
    assert len(outputs) == len(feeds)
    for feed, out in zip(feeds, outputs, strict=True):
        ref = parity.torch_pass(model, feed)
        greedy = feed["temperature"] == 0
        np.testing.assert_array_equal(out["token"][greedy], ref["token"][greedy])
        for name in ("confidence", "new_k", "new_v"):
            np.testing.assert_allclose(out[name], ref[name], atol=1e-4, rtol=1e-4, err_msg=name)


def test_dream_like_family_exports_with_parity(tmp_path):
    """Fully bidirectional, logits shifted by one, q/k/v biases (the Dream mapping)."""
    model = tiny_model(
        seed=5, attention="bidirectional", logits_shift=True, qkv_bias=True, family="dream"
    )
    onnx_export.export_denoiser(model, tmp_path / "d.onnx", parity_path=tmp_path / "p.onnx")
    session = ort_session(tmp_path / "p.onnx")
    names = [o.name for o in session.get_outputs()]
    report = parity.pass_parity(
        model, lambda f: dict(zip(names, session.run(names, f), strict=True))
    )
    assert report["ok"], "\n".join(parity.format_pass_parity(report))


def test_plugin_form_in_bf16_for_tensorrt(tmp_path):
    """What TensorRT gets: one dlm::DenoiseStep node in the plugin convention, bf16 compute,
    float32 KV at the edges. (ONNX Runtime cannot run the custom node; TensorRT is absent.)"""
    model = tiny_model(seed=1)
    graph = onnx_export.export_denoiser(model, tmp_path / "trt.onnx", plugin=True, precision="bf16")
    assert str(next(model.parameters()).dtype) == "torch.float32"  # the caller's model untouched
    (node,) = [n for n in graph.graph.node if n.op_type == "DenoiseStep"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == "dlm" and attrs["plugin_namespace"] == b"dlm"
    assert attrs["plugin_version"] == b"1" and attrs["aot"] == 1
    inferred = onnx.shape_inference.infer_shapes(graph)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert types[node.input[0]] == onnx.TensorProto.BFLOAT16  # logits in bf16
    weights = [t for t in graph.graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.BFLOAT16 for t in weights)
    io = {v.name: v.type.tensor_type.elem_type for v in [*graph.graph.input, *graph.graph.output]}
    assert io["past_k"] == io["new_k"] == onnx.TensorProto.FLOAT
    onnx_export.check_graph(tmp_path / "trt.onnx", model.cfg, plugin=True)
    used = {i for n in graph.graph.node for i in n.input} | set(contract.OUTPUTS)
    assert all(any(o in used for o in n.output) for n in graph.graph.node)  # no dead nodes
