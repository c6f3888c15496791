"""PyTorch -> ONNX: one denoiser pass with the fused DenoiseStep at its end (torch dynamo exporter).

    python -m export.onnx_export --model models/default --out build/denoiser.onnx [--plugin]

The graph's contract, the same for every engine (ONNX Runtime, TensorRT):

inputs
    input_ids    [B, T]             int64    new tokens of each row, right-padded to T
    past_k/v     [L, B, Hkv, P, D]  float32  cached keys/values, zero-padded to P
    past_len     [B]                int64    cached positions each row sees
    n_new        [B]                int64    valid new tokens per row
    tail         [B]                int64    last `tail` new tokens attend to each other
    fork         [B]                int64    last `fork` new tokens branch off the first one
    out_index    [B, K]             int64    new positions whose token is chosen
    temperature  [B]                float32  0 = argmax
    seed         [B]                int64    noise seed, in [0, 2**32)
    penalty_ids  [B, H]             int64    generated tokens the penalties count, in order
    penalty_len  [B, K]             int64    how many of them count for each chosen position
    repetition_penalty, frequency_penalty, presence_penalty
                 [B]                float32  1, 0, 0 = off (dlm/passes.py)
outputs
    token        [B, K]             int64
    confidence   [B, K]             float32
    new_k/v      [L, B, Hkv, T, D]  float32  keys/values of the new tokens (the engine keeps them)

B, T, P, K, H are dynamic (axes named batch, block, past, k, history; H >= 1); L, Hkv, D come
from the config. (`dlm.passes.run_pass`, `dlm.model.DiffusionLM.forward` and
`plugins/denoise_step/contract.py` define the semantics.)
Logits [B, K, V] are computed inside and consumed by DenoiseStep: they never leave the deployed
graph. The parity graph (`export_denoiser(parity_path=)`) is the same export with logits as a
fifth output, used only to compare against PyTorch; `deployment_graph` drops that output.

DenoiseStep comes in two forms (plugins/denoise_step/onnx_op.py): standard ONNX ops (what ONNX
Runtime runs; the default) and, with `plugin=True`, one custom `dlm::DenoiseStep` node rewritten
to TensorRT's plugin convention. Precision: fp32 for ONNX Runtime; bf16/fp16 for TensorRT's
strongly typed networks, where the ONNX types decide the kernels: weights and compute in that
type, and the KV inputs/outputs cast at the graph's edges so that I/O stays float32 for every
engine.

Weights: a graph `X.onnx` keeps its weights in `X.onnx.data` beside it (ONNX external data), so
no graph is capped by protobuf's 2 GB: the exporter streams the weights there (`onnx_ir.save`) and
every later step handles the graph's proto without them (`onnx.load(..., load_external_data=
False)`) and names files, not protos, to onnx.checker, ONNX Runtime and TensorRT's parser. The
parity graph (`export_denoiser(parity_path=)`) is a second small proto in the same folder that
reads the same weights file. (The 8B preset's embedding alone, 131,072 x 4,096 in float32, is 2.1
GB.)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import torch
from onnx.external_data_helper import uses_external_data
from torch import nn

from dlm.config import ModelConfig
from dlm.model import DiffusionLM, rope_frequencies
from dlm.passes import run_pass
from export.contract import INPUTS, OUTPUTS, static_axes
from plugins.denoise_step.onnx_op import (
    DEFAULT_OPSET,
    denoise_step_op,
    nonstandard_ops,
    to_tensorrt_plugin_form,
)
from plugins.denoise_step.reference import denoise_step_torch

PARITY_OUTPUT = "logits"  # [B, K, V]: only in the parity graph
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CUSTOM_OP = ("dlm", "DenoiseStep")
INLINE_BYTES = 1024  # tensors up to this size stay in the graph's proto, larger ones in X.onnx.data


class DenoiserGraph(nn.Module):
    """What is exported: `dlm.passes.run_pass` on the inputs of INPUTS, in their order; KV cast
    to float32 at the edges."""

    def __init__(self, model: DiffusionLM, plugin: bool = False, with_logits: bool = False):
        super().__init__()
        self.model, self.plugin, self.with_logits = model, plugin, with_logits

    def forward(self, *inputs: torch.Tensor):
        step = denoise_step_op if self.plugin else denoise_step_torch
        token, confidence, new_k, new_v, logits = run_pass(
            self.model, dict(zip(INPUTS, inputs, strict=True)), step
        )
        out = (token, confidence, new_k.float(), new_v.float())
        return out + (logits.float(),) if self.with_logits else out


def example_inputs(cfg: ModelConfig) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: every dynamic size > 1 and distinct (no 0/1 specialisation, no
    accidental equality of two axes), rows ragged (past_len, n_new, tail, fork, penalties
    differ)."""
    b, t, p, _k, h = 3, 7, 5, 6, 4
    g = torch.Generator().manual_seed(0)
    kv = (cfg.num_layers, b, cfg.num_kv_heads, p, cfg.head_dim)
    return (
        torch.randint(0, cfg.vocab_size, (b, t), generator=g),
        torch.randn(kv, generator=g),
        torch.randn(kv, generator=g),
        torch.tensor([5, 0, 3]),
        torch.tensor([7, 6, 1]),
        torch.tensor([7, 0, 1]),
        torch.tensor([0, 2, 0]),
        torch.stack([torch.arange(1, 7), torch.arange(0, 6), torch.zeros(6, dtype=torch.long)]),
        torch.tensor([0.0, 0.7, 1.3]),
        torch.tensor([11, 12, 13]),
        torch.randint(0, cfg.vocab_size, (b, h), generator=g),
        torch.tensor([[0, 1, 2, 3, 4, 4], [0] * 6, [2] * 6]),
        torch.tensor([1.3, 1.0, 0.8]),
        torch.tensor([0.5, 0.0, -0.2]),
        torch.tensor([0.0, 0.0, 0.4]),
    )


def _dynamic_shapes() -> dict[str, tuple[dict[int, torch.export.Dim], ...]]:
    dim = torch.export.Dim
    dims = {
        "batch": dim("batch", min=1),
        "block": dim("block", min=1),
        "past": dim("past", min=0),
        "k": dim("k", min=1),
        "history": dim("history", min=1),
    }
    # DenoiserGraph.forward(*inputs): one entry, the inputs' shapes in INPUTS order
    return {
        "inputs": tuple(
            {i: dims[a] for i, a in enumerate(axes) if a in dims} for _, axes in INPUTS.values()
        )
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (torchvision registrations, axis renames), not errors."""
    loggers = [
        logging.getLogger(n)
        for n in (
            "torch.onnx",
            "torch._dynamo",
            "torch.export",
            "torch.fx.experimental.symbolic_shapes",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def data_path(graph_path: str | Path) -> Path:
    """Where the weights of the graph at `graph_path` lie: `X.onnx` -> `X.onnx.data` beside it."""
    path = Path(graph_path)
    return path.with_name(path.name + ".data")


def save_program(program, path: Path, doc: str) -> onnx.ModelProto:
    """Write an exported program to `path`, its weights streamed to `data_path(path)`; returns
    the graph's proto without the weights (they stay in the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    program.model.doc_string = doc
    onnx_ir.save(
        program.model, path, external_data=data_path(path).name, size_threshold_bytes=INLINE_BYTES
    )
    return onnx.load(str(path), load_external_data=False)


def _export(
    model: DiffusionLM, path: Path, plugin: bool, precision: str, opset: int
) -> onnx.ModelProto:
    """Export the denoiser pass with logits as an extra output (the parity graph, module doc) to
    `path`; returns its proto without the weights.

    plugin=True: DenoiseStep as the `dlm::DenoiseStep` node in TensorRT's plugin form.
    precision: fp32 | bf16 | fp16 (weights and compute; the I/O stays as in INPUTS/OUTPUTS).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: must be one of {sorted(PRECISIONS)}")
    if precision != "fp32":
        model = copy.deepcopy(model).to(PRECISIONS[precision])
        model.inv_freq = rope_frequencies(model.cfg)[0]  # RoPE frequencies stay float32
    model = model.eval()
    names = list(OUTPUTS) + [PARITY_OUTPUT]
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            DenoiserGraph(model, plugin=plugin, with_logits=True).eval(),
            example_inputs(model.cfg),
            dynamo=True,
            verbose=False,
            input_names=list(INPUTS),
            output_names=names,
            dynamic_shapes=_dynamic_shapes(),
            opset_version=opset,
            optimize=True,
        )
    doc = (
        f"dlm-triton denoiser pass: {model.cfg.family}, precision {precision}, "
        f"DenoiseStep {'plugin' if plugin else 'standard ops'}"
    )
    proto = save_program(program, path, doc)
    return to_tensorrt_plugin_form(proto) if plugin else proto


def deployment_graph(parity_graph: onnx.ModelProto) -> onnx.ModelProto:
    """The parity graph without its logits output (and without nodes that only fed it, such as
    the cast to float32 of reduced-precision logits): what engines run."""
    out = onnx.ModelProto()
    out.CopyFrom(parity_graph)
    keep = [o for o in out.graph.output if o.name != PARITY_OUTPUT]
    del out.graph.output[:]
    out.graph.output.extend(keep)
    needed = {o.name for o in keep}
    live = []
    for node in reversed(out.graph.node):  # nodes are topologically sorted
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # names read inside subgraphs (If/Loop bodies)
                for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    needed.update(i for n in g.node for i in n.input)
    del out.graph.node[:]
    out.graph.node.extend(reversed(live))
    return out


def export_denoiser(
    model: DiffusionLM,
    path: str | Path,
    plugin: bool = False,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    parity_path: str | Path | None = None,
) -> onnx.ModelProto:
    """Export the deployed graph to `path` (weights in `data_path(path)`) and check it; with
    `parity_path` (in the same folder) also the parity graph, which reads the same weights.
    Returns the deployed graph's proto without the weights."""
    path = Path(path)
    if parity_path is not None and Path(parity_path).parent.resolve() != path.parent.resolve():
        raise ValueError(f"parity_path={parity_path}: must be in {path.parent} (its weights)")
    parity = _export(model, path, plugin, precision, opset)
    if parity_path is not None:
        save(parity, parity_path)
    graph = deployment_graph(parity)
    save(graph, path)
    check_graph(path, model.cfg, plugin=plugin)
    return graph


def save(graph: onnx.ModelProto, path: str | Path) -> Path:
    """Write `graph` to `path`. Tensors it holds over INLINE_BYTES go to `data_path(path)`,
    written anew; tensors already in a file keep theirs (which is relative to the graph's folder,
    so such a graph is saved in the folder it was loaded from)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    held = [
        t
        for t in graph.graph.initializer
        if not uses_external_data(t) and len(t.raw_data) > INLINE_BYTES
    ]
    if held:
        data_path(path).unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(
        graph,
        str(path),
        save_as_external_data=bool(held),
        location=data_path(path).name,
        size_threshold=INLINE_BYTES + 1,
    )
    return path


def opset_of(graph: onnx.ModelProto) -> int:
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def _dims(value: onnx.ValueInfoProto) -> tuple:
    return tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)


def check_graph(path: str | Path, cfg: ModelConfig, plugin: bool = False) -> dict:
    """onnx.checker (full, on the file: no 2 GB cap), the I/O contract, the op domains and, for
    the standard form, one ONNX Runtime run on the example inputs. Raises ValueError naming what
    differs; returns a summary.
    """
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False)
    fixed = static_axes(cfg)
    for kind, spec, values in (
        ("input", INPUTS, graph.graph.input),
        ("output", OUTPUTS, graph.graph.output),
    ):
        got = {v.name: v for v in values}
        if list(got) != list(spec):
            raise ValueError(
                f"graph {kind}s: {list(got)}, expected {list(spec)}"
                + (" (logits must not leave the graph)" if PARITY_OUTPUT in got else "")
            )
        for name, (dtype, axes) in spec.items():
            elem = onnx.helper.tensor_dtype_to_np_dtype(got[name].type.tensor_type.elem_type)
            want = tuple(fixed.get(a, a) for a in axes)
            if elem.name != dtype or _dims(got[name]) != want:
                raise ValueError(
                    f"graph {kind} {name}: {elem.name} {list(_dims(got[name]))}, "
                    f"expected {dtype} {list(want)}"
                )
    custom = nonstandard_ops(graph)
    if custom != ({CUSTOM_OP} if plugin else set()):
        raise ValueError(
            f"graph: non-standard ops {sorted(custom)}; expected "
            f"{[CUSTOM_OP] if plugin else 'none'} for the "
            f"{'plugin' if plugin else 'standard'} form"
        )
    summary = {
        "opset": opset_of(graph),
        "nodes": len(graph.graph.node),
        "plugin": plugin,
    }
    if not plugin:
        from export.ort_engine import ort_session

        feed = {n: t.numpy() for n, t in zip(INPUTS, example_inputs(cfg), strict=True)}
        outs = ort_session(path).run(list(OUTPUTS), feed)
        b, t = feed["input_ids"].shape
        k = feed["out_index"].shape[1]
        want = {
            "token": (b, k),
            "confidence": (b, k),
            "new_k": (cfg.num_layers, b, cfg.num_kv_heads, t, cfg.head_dim),
        }
        want["new_v"] = want["new_k"]
        for name, arr in zip(OUTPUTS, outs, strict=True):
            if arr.shape != want[name] or not np.all(np.isfinite(arr)):
                raise ValueError(
                    f"ONNX Runtime output {name}: shape {arr.shape} (expected "
                    f"{want[name]}), finite={bool(np.all(np.isfinite(arr)))}"
                )
    return summary


def main(argv: list[str] | None = None) -> int:
    from dlm import checkpoint

    p = argparse.ArgumentParser(
        prog="python -m export.onnx_export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--plugin", action="store_true", help="custom dlm::DenoiseStep (TensorRT)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    model = checkpoint.load(args.model)
    export_denoiser(model, args.out, plugin=args.plugin, precision=args.precision, opset=args.opset)
    print(
        f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB, "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
