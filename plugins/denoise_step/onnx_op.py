"""DenoiseStep in ONNX: a standard-op graph for ONNX Runtime, and a plugin node for TensorRT.

Two forms of the same op (contract: `contract.py`):

1. Standard ops (primary; what ONNX Runtime runs on CPU): `export_standard_onnx` exports
   `denoise_step_torch` with `torch.onnx.export(..., dynamo=True)` as a standalone graph with
   dynamic B, T, V. Sampling rows are gathered with NonZero, so greedy rows draw no noise.
   A model whose forward ends in `denoise_step_torch` exports the same subgraph.
2. Plugin node: `denoise_step_op` emits one custom-domain node `dlm::DenoiseStep` while
   `torch.onnx.export` traces (and runs the PyTorch implementation otherwise), so an exporter can
   choose the plugin form for TensorRT. `to_tensorrt_plugin_form` then rewrites such nodes with
   onnx-graphsurgeon into what TensorRT's ONNX parser maps to the registered Python plugin
   (`tensorrt_plugin.py`): op type = plugin name, string attribute `plugin_namespace`, string
   `plugin_version`, and bool `aot` = 1 to ask for the ahead-of-time (Triton PTX) implementation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import torch

from plugins.denoise_step.contract import (
    INPUT_NAMES,
    OP_DOMAIN,
    OP_ID,
    OP_NAME,
    OP_VERSION,
    OUTPUT_NAMES,
    output_specs,
)
from plugins.denoise_step.reference import denoise_step_torch

STANDARD_DOMAINS = ("", "ai.onnx")
DEFAULT_OPSET = 18  # the dynamo exporter's floor; BitwiseXor/BitwiseAnd need >= 18


class DenoiseStep(torch.nn.Module):
    """The op as a module, so it exports standalone. plugin=True exports the custom node."""

    def __init__(self, plugin: bool = False) -> None:
        super().__init__()
        self.plugin = plugin

    def forward(
        self, logits: torch.Tensor, temperature: torch.Tensor, seed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.plugin:
            return denoise_step_op(logits, temperature, seed)
        return denoise_step_torch(logits, temperature, seed)


def denoise_step_op(
    logits: torch.Tensor, temperature: torch.Tensor, seed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op for model code: a `dlm::DenoiseStep` node under torch.onnx.export, else PyTorch."""
    if not torch.onnx.is_in_onnx_export():
        return denoise_step_torch(logits, temperature, seed)
    tok, conf = output_specs(tuple(logits.shape), "float32")  # shapes [B, T]; dtypes fixed
    token, confidence = torch.onnx.ops.symbolic_multi_out(
        OP_ID,
        (logits, temperature, seed),
        {},
        dtypes=(torch.int64, torch.float32),
        shapes=(list(tok.shape), list(conf.shape)),
        version=int(OP_VERSION),
    )
    return token, confidence


def _dynamic_shapes() -> dict:
    b, t, v = (torch.export.Dim.DYNAMIC,) * 3
    return {"logits": {0: b, 1: t, 2: v}, "temperature": {0: b}, "seed": {0: b}}


def _example_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Sizes > 1 and distinct, so the exporter does not specialise a dimension to a constant.
    return (
        torch.randn(2, 3, 17).to(dtype),
        torch.tensor([0.0, 1.0]),
        torch.tensor([1, 2], dtype=torch.int64),
    )


def export_onnx(
    path: str | os.PathLike | None = None,
    plugin: bool = False,
    logits_dtype: torch.dtype = torch.float32,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Export the op standalone (dynamic B, T, V); save to `path` if given; return the model.

    plugin=False: standard ops only. plugin=True: a single `dlm::DenoiseStep` node.
    """
    program = torch.onnx.export(
        DenoiseStep(plugin=plugin).eval(),
        _example_inputs(logits_dtype),
        dynamo=True,
        verbose=False,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=_dynamic_shapes(),
        opset_version=opset,
        optimize=True,
    )
    model = program.model_proto
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
    return model


def export_standard_onnx(
    path: str | os.PathLike | None = None, logits_dtype: torch.dtype = torch.float32
) -> onnx.ModelProto:
    """The standard-op graph (primary path); see `export_onnx`."""
    return export_onnx(path, plugin=False, logits_dtype=logits_dtype)


def node_domains(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """(domain, op_type) of every node, subgraphs (If branches) included."""
    found: set[tuple[str, str]] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found.add((node.domain, node.op_type))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return found


def nonstandard_ops(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """Nodes outside the standard ONNX domain (empty for the standard-op graph)."""
    return {d for d in node_domains(model) if d[0] not in STANDARD_DOMAINS}


def ort_session(model: onnx.ModelProto | str | os.PathLike, threads: int = 0):
    """An ONNX Runtime CPU session; idle threads do not spin (they would steal the cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_ort(
    session, logits: np.ndarray, temperature: np.ndarray, seed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Run the exported op: (token int64 [B, T], confidence float32 [B, T])."""
    token, conf = session.run(
        list(OUTPUT_NAMES), {"logits": logits, "temperature": temperature, "seed": seed}
    )
    return token, conf


def to_tensorrt_plugin_form(model: onnx.ModelProto, aot: bool = True) -> onnx.ModelProto:
    """Map every `dlm::DenoiseStep` node to TensorRT's plugin convention (see module doc).

    Raises ValueError if the model has no such node (an exporter chose the standard form).
    """
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    nodes = [n for n in graph.nodes if n.op == OP_NAME and (n.domain or "") == OP_DOMAIN]
    if not nodes:
        raise ValueError(f"model: no {OP_ID} node to map (export with plugin=True)")
    for node in nodes:
        node.attrs["plugin_namespace"] = OP_DOMAIN
        node.attrs["plugin_version"] = OP_VERSION
        node.attrs["aot"] = bool(aot)
    out = gs.export_onnx(graph)
    # Keep the custom domain declared, so onnx.checker and other tools accept the node.
    if not any(o.domain == OP_DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(OP_DOMAIN, int(OP_VERSION)))
    return out
