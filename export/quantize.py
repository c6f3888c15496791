"""int8 for the CPU engine: every weight MatMul of the ONNX Runtime graph in uint8 x int8.

A MatMul with a constant weight W [K, N] becomes

    s_x = max|x| / 127 over each row of x (one token at one position)   dynamic, per row
    s_w = max|W| / 63 over each column of W                            constant, per column
    y   = MatMulInteger(round(x / s_x) + 128 as uint8, round(W / s_w) as int8, zero point 128)
          * s_x * s_w

Per row, because ONNX Runtime's own dynamic quantization (`quantize_dynamic`) takes one scale for
the whole activation tensor: a token's result then depends on every other token and row of its
pass (in a one-off probe on the default model, 12 held-out prompts: self_spec differed from ar,
and greedy ar agreed with fp32 on 78% of the tokens). With a scale per
row and integer sums (exact in int32), a token's quantized products do not depend on the rest of
its pass: a request gets the same tokens alone or batched with others (tested). What is left is
the fp32 part of the graph (attention, norms): its last bits differ between a 1-token pass and a
longer one, as in the fp32 engine, where they almost never change a token; rounding to int8 turns
a few of those differences into a step of the next MatMul's input, so self_spec matches ar on
most tokens, not all (96% on the default model's 50 held-out prompts; each build reports it in its
manifest). In the same probes, weight-only int8 (`MatMulNBits`) took another kernel for 1-token
passes than for longer ones (self_spec != ar again, 1.5x faster AR), and int8 x int8 activations
ran 3.6x slower than uint8 ones, which take the CPU's u8 x s8 VNNI kernels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LEVELS = 127.0  # the activations, symmetric: [-127, 127], so that round(x / s) never overflows
# The weights in 7 bits, [-63, 63]: without VNNI (AVX2 only) ONNX Runtime's u8 x s8 kernels add
# pairs of products in saturating int16 (vpmaddubsw), which 2 x 255 x 127 overflows and
# 2 x 255 x 63 does not (on such a CPU the test model's int8 logits were 35% off fp32's with 8
# bits, 1.2% with 7; tests/export/test_quantize.py allows 5%); a build may be served on another
# CPU than the one it was made on, so always 7.
WEIGHT_LEVELS = 63.0
ZERO = 128  # the uint8 zero point of the activations
EPS = 1e-12  # an all-zero row or column keeps a finite scale


def per_row_int8(graph: onnx.ModelProto, folder: str | Path) -> onnx.ModelProto:
    """A copy of `graph` with every constant-weight MatMul in per-row int8 (module doc). The
    graph's weights are read from their files in `folder`; the int8 ones are held in the copy
    (`onnx_export.save` writes them beside it), the others still point to their files."""
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    g = out.graph
    weights = {i.name: i for i in g.initializer}
    shared = [
        numpy_helper.from_array(np.array(v, dtype), name)
        for name, v, dtype in (
            ("q_eps", EPS, np.float32),
            ("q_levels", LEVELS, np.float32),
            ("q_shift", float(ZERO), np.float32),
            ("q_zero", ZERO, np.uint8),
            ("q_axes", [-1], np.int64),
        )
    ]
    nodes, added, count = [], list(shared), 0
    for node in g.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or len(w.dims) != 2:
            nodes.append(node)
            continue
        p = f"q{count}_"
        count += 1
        wf = numpy_helper.to_array(w, base_dir=str(folder)).astype(np.float32)
        sw = np.maximum(np.abs(wf).max(axis=0), EPS) / WEIGHT_LEVELS
        added += [
            numpy_helper.from_array(np.round(wf / sw).astype(np.int8), p + "w"),
            numpy_helper.from_array(sw.astype(np.float32), p + "sw"),
        ]
        nodes += _row_quantized_matmul(node.input[0], p, node.output[0])
    used = {name for n in nodes for name in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(kept + added)
    out.doc_string = f"{graph.doc_string}; {count} MatMuls in per-row int8 (export/quantize.py)"
    return out


def _row_quantized_matmul(x: str, p: str, y: str) -> list[onnx.NodeProto]:
    node = helper.make_node
    return [
        node("Abs", [x], [p + "abs"]),
        node("ReduceMax", [p + "abs", "q_axes"], [p + "max"], keepdims=1),
        node("Max", [p + "max", "q_eps"], [p + "max1"]),
        node("Div", [p + "max1", "q_levels"], [p + "sx"]),
        node("Div", [x, p + "sx"], [p + "xs"]),
        node("Round", [p + "xs"], [p + "xr"]),
        node("Add", [p + "xr", "q_shift"], [p + "xu"]),
        node("Cast", [p + "xu"], [p + "xq"], to=TensorProto.UINT8),
        node("MatMulInteger", [p + "xq", p + "w", "q_zero"], [p + "acc"]),
        node("Cast", [p + "acc"], [p + "accf"], to=TensorProto.FLOAT),
        node("Mul", [p + "accf", p + "sx"], [p + "ys"]),
        node("Mul", [p + "ys", p + "sw"], [y]),
    ]
