"""DiffusionGemma's two passes as every engine computes them, on the cache layout engines keep.

`GemmaEngine` runs these functions with PyTorch, the exporter traces them into the ONNX graphs
(export/gemma_onnx.py: ONNX Runtime runs those) and the parity checks take them as the
reference, so that no engine can drift from another (as `dlm.passes.run_pass` for the others).

The cache of a batch is four tensors, keys and values of each kind of layer stacked,
[layers of the kind, B, kv heads, P, head dim] (`KINDS`; the kinds differ in heads and head dim),
row b's first past_len[b] positions its own, the rest zero padding.

    encode_pass(model, input_ids, positions, past_len, n_new, *cache) -> the new entries
        [layers of the kind, B, kv heads, T, head dim] per kind (row b's first n_new[b] its own)
    canvas_pass(model, canvas_ids, positions, past_len, canvas_len, *cache, self_conditioning,
                conditioned, temperature, seed, step) -> (token, confidence, argmax, entropy,
                tempered) of one denoising step at temperature T per row: the canvas sampled from
                softmax(logits / T) by the DenoiseStep op `step` and its untempered probability,
                the argmax, the entropy of softmax(logits / T) [B, C], and logits / T [B, C, V]
                (the next step's self-conditioning signal; rows with `conditioned` False get
                none this step).
"""

from __future__ import annotations

import torch

from dlm.gemma.config import GemmaConfig
from dlm.gemma.model import Cache, DiffusionGemma

KINDS = ("sliding", "full")


def layers_of(cfg: GemmaConfig, kind: str) -> list[int]:
    return [i for i, k in enumerate(cfg.layer_kinds) if k == kind]


def unstack(cfg: GemmaConfig, cache: tuple[torch.Tensor, ...]) -> Cache:
    """Four stacked tensors (keys and values per kind, KINDS order) -> (k, v) per layer."""
    stacked = dict(zip(KINDS, zip(cache[0::2], cache[1::2], strict=True), strict=True))
    position = {i: j for kind in KINDS for j, i in enumerate(layers_of(cfg, kind))}
    return [
        (stacked[kind][0][position[i]], stacked[kind][1][position[i]])
        for i, kind in enumerate(cfg.layer_kinds)
    ]


def stack(cfg: GemmaConfig, layers: Cache, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(k, v) per layer -> the four stacked tensors (a kind without layers: an empty stack
    shaped after `like` [B, ..., T, ...])."""
    out: list[torch.Tensor] = []
    for kind in KINDS:
        index = layers_of(cfg, kind)
        att = getattr(cfg, kind)
        for part in (0, 1):
            if index:
                out.append(torch.stack([layers[i][part] for i in index]))
            else:
                b, t = like.shape[:2]
                out.append(like.new_zeros(0, b, att.num_kv_heads, t, att.head_dim))
    return tuple(out)


def encode_pass(model: DiffusionGemma, input_ids, positions, past_len, n_new, *cache):
    new, _ = model.encode(input_ids, positions, unstack(model.cfg, cache), past_len, n_new)
    return stack(model.cfg, new, input_ids)


def canvas_pass(
    model: DiffusionGemma,
    canvas_ids,
    positions,
    past_len,
    canvas_len,
    *rest,
    step,
):
    """See the module doc; `rest` is the four cache tensors, then self_conditioning,
    conditioned, temperature and seed."""
    cache, (signal, conditioned, temperature, seed) = rest[:4], rest[4:]
    logits = model.denoise(
        canvas_ids,
        positions,
        signal,
        unstack(model.cfg, cache),
        self_conditioning_rows=conditioned,
        past_len=past_len,
        canvas_len=canvas_len,
    )
    token, confidence = step(logits, temperature, seed)
    tempered = logits / temperature[:, None, None]
    logp = torch.log_softmax(tempered, dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return token, confidence, logits.argmax(dim=-1), entropy, tempered
