"""int8 for the CPU engine, written so that self-speculation stays lossless.

Every MatMul of the ONNX Runtime graph with a constant weight W [K, N] becomes:

    s_x = max|x| / 127 over each row of x (one token at one position)   dynamic, per row
    s_w = max|W| / 127 over each column of W                           constant, per column
    y   = MatMulInteger(round(x / s_x) + 128 as uint8, round(W / s_w) as int8, zero point 128)
          * s_x * s_w

Why per row: ONNX Runtime's own dynamic quantization (`quantize_dynamic`) takes one scale for the
whole activation tensor, so a token's result depends on the other tokens and rows of its pass: a
self_spec verify slot then differs from the `ar` step at that position (measured on the default
model: self_spec != ar, 78% agreement with fp32). Here a row's scale is its own and the integer
products are summed exactly in int32, so a token's logits do not depend on what else the pass
carries: self_spec == ar holds within int8 as it does in fp32 (checked at every build). Weight-only
int8 (`MatMulNBits`) was faster for one-token passes but took another kernel for them than for
longer passes, which broke the same equality. uint8 activations (zero point 128) take the
u8 x s8 kernels of the CPU's VNNI units; int8 x int8 ran 3.6x slower.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LEVELS = 127.0  # symmetric int8: [-127, 127], so that round(x / s) never overflows
ZERO = 128  # the uint8 zero point of the activations
EPS = 1e-12  # an all-zero row or column keeps a finite scale


def per_row_int8(graph: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `graph` with every constant-weight MatMul in per-row int8 (module doc)."""
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
        wf = numpy_helper.to_array(w).astype(np.float32)
        sw = np.maximum(np.abs(wf).max(axis=0), EPS) / LEVELS
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
