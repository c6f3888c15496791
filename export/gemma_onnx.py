"""DiffusionGemma -> ONNX: the encoder pass and the canvas step, two graphs (torch dynamo).

    python -m export --model DIR          # make engine MODEL=DIR: both graphs, parity, manifest

The graphs trace `dlm.gemma.passes` (what the PyTorch engine runs), cache as its four stacked
tensors, float32 I/O:

encoder.onnx (export.GEMMA_FILES)
    input_ids, positions [B, T] int64; past_len, n_new [B] int64; sliding_k/v, full_k/v
    [layers of the kind, B, kv heads, P, head dim] -> new_sliding_k/v, new_full_k/v (T for P)
canvas.onnx
    canvas_ids, positions [B, C] int64; past_len, canvas_len [B] int64; the four cache tensors;
    self_conditioning [B, C, V] float32; conditioned [B] bool; temperature [B] float32 (> 0);
    seed [B] int64 -> token, greedy (the argmax) [B, C] int64; confidence, entropy [B, C] float32;
    tempered [B, C, V] float32 (logits / temperature: the next step's self-conditioning)

The canvas graph ends in the DenoiseStep op (standard-op form, as ONNX Runtime runs it) for the
sampled canvas, beside the argmax and the entropy. The tempered logits leave the graph but not
the engine (it keeps them per sequence, as the PyTorch engine does). The experts run dense in the
graph (`dlm.gemma.layers.Experts.dense`): the same sum, every expert on every token.
B, T (C) and P are dynamic; V, the layer counts, heads and head dims come from the config.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from dlm.gemma.config import GemmaConfig
from dlm.gemma.layers import Experts
from dlm.gemma.model import DiffusionGemma
from dlm.gemma.passes import KINDS, canvas_pass, encode_pass, layers_of
from export.onnx_export import _quiet_exporter, save_program
from plugins.denoise_step.onnx_op import DEFAULT_OPSET
from plugins.denoise_step.reference import denoise_step_torch

CACHE = tuple(f"{kind}_{part}" for kind in KINDS for part in ("k", "v"))
ENCODER_INPUTS = ("input_ids", "positions", "past_len", "n_new", *CACHE)
ENCODER_OUTPUTS = tuple(f"new_{name}" for name in CACHE)
CANVAS_INPUTS = ("canvas_ids", "positions", "past_len", "canvas_len", *CACHE)
CANVAS_INPUTS += ("self_conditioning", "conditioned", "temperature", "seed")
CANVAS_OUTPUTS = ("token", "confidence", "greedy", "entropy", "tempered")


class EncoderGraph(nn.Module):
    def __init__(self, model: DiffusionGemma) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return encode_pass(self.model, *inputs)


class CanvasGraph(nn.Module):
    def __init__(self, model: DiffusionGemma) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return canvas_pass(self.model, *inputs, step=denoise_step_torch)


@contextlib.contextmanager
def dense_experts(model: DiffusionGemma):
    """Every Experts module of `model` in its dense form while inside."""
    experts = [m for m in model.modules() if isinstance(m, Experts)]
    for m in experts:
        m.dense = True
    try:
        yield
    finally:
        for m in experts:
            m.dense = False


def cache_inputs(cfg: GemmaConfig, b: int, p: int, g: torch.Generator) -> list[torch.Tensor]:
    out = []
    for kind in KINDS:
        att = getattr(cfg, kind)
        shape = (len(layers_of(cfg, kind)), b, att.num_kv_heads, p, att.head_dim)
        out += [torch.randn(shape, generator=g), torch.randn(shape, generator=g)]
    return out


def example_inputs(cfg: GemmaConfig, graph: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Ragged rows, every dynamic size > 1 and distinct (B 3, T/C 7, P 5)."""
    b, t, p = 3, 7, 5
    g = torch.Generator().manual_seed(seed)
    past_len, n_new = torch.tensor([5, 2, 4]), torch.tensor([7, 3, 6])
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=g)
    positions = past_len[:, None] + torch.arange(t)[None, :]
    head = [ids, positions, past_len, n_new, *cache_inputs(cfg, b, p, g)]
    if graph == "encoder":
        return tuple(head)
    return (
        *head,
        3 * torch.randn(b, t, cfg.vocab_size, generator=g),
        torch.tensor([True, False, True]),
        torch.tensor([0.8, 0.5, 0.41]),
        torch.tensor([11, 12, 13]),
    )


def _dynamic_shapes(names: tuple[str, ...]) -> dict:
    dim = torch.export.Dim
    batch, block, past = dim("batch", min=1), dim("block", min=1), dim("past", min=0)
    axes = {
        "input_ids": {0: batch, 1: block},
        "canvas_ids": {0: batch, 1: block},
        "positions": {0: batch, 1: block},
        "self_conditioning": {0: batch, 1: block},
        **{n: {1: batch, 3: past} for n in CACHE},
    }
    return {"inputs": tuple(axes.get(n, {0: batch}) for n in names)}


def export_graph(
    model: DiffusionGemma, graph: str, path: Path, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """Write the `graph` ("encoder" | "canvas") of `model`, float32, to `path`, its weights beside
    it (`onnx_export.data_path`), and check it; returns its proto without the weights."""
    module, names, outputs = {
        "encoder": (EncoderGraph, ENCODER_INPUTS, ENCODER_OUTPUTS),
        "canvas": (CanvasGraph, CANVAS_INPUTS, CANVAS_OUTPUTS),
    }[graph]
    model = model.eval()
    with _quiet_exporter(), torch.no_grad(), dense_experts(model):
        program = torch.onnx.export(
            module(model).eval(),
            example_inputs(model.cfg, graph),
            dynamo=True,
            verbose=False,
            input_names=list(names),
            output_names=list(outputs),
            dynamic_shapes=_dynamic_shapes(names),
            opset_version=opset,
            optimize=True,
        )
    proto = save_program(program, path, f"dlm-triton DiffusionGemma {graph} pass")
    onnx.checker.check_model(str(path), full_check=True)
    return proto


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
