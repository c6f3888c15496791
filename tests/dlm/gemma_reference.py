"""A tiny random transformers DiffusionGemmaForBlockDiffusion, saved: the reference of the
DiffusionGemma tests (transformers is a test-only dependency)."""

from __future__ import annotations

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

BASE = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    layer_types=["sliding_attention", "full_attention", "full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    global_head_dim=16,  # proportional RoPE on 16 dims at factor 0.25: 2 of 8 pairs rotate
    num_global_key_value_heads=1,
    sliding_window=64,  # wider than any context here, except in the "sliding_window" case
    num_experts=4,
    top_k_experts=2,
    moe_intermediate_size=16,
    max_position_embeddings=256,
)
VISION = dict(
    model_type="gemma4_vision",
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=8,
)
CANVAS = 6


def randomize(ref, seed: int) -> None:
    """Weights at a scale where every part matters (the default init leaves logits ~1e-3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():  # tied weights are one parameter here
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.3 * noise if p.ndim == 1 else noise / p.shape[-1] ** 0.5)
        for name, b in ref.named_buffers():
            if name.endswith("layer_scalar"):  # each side's own: they differ here
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


def build_reference(folder, seed: int = 0, self_conditioning: float = 1.0, **overrides):
    """Saved to `folder`; `self_conditioning` scales that path's output weights (below 1 the
    random model's steps stop amplifying float rounding from one step to the next)."""
    tie = overrides.pop("tie_word_embeddings", True)
    cfg = DiffusionGemmaConfig(
        text_config=dict(BASE, **overrides),
        vision_config=VISION,
        canvas_length=CANVAS,
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    ref = DiffusionGemmaForBlockDiffusion(cfg).eval()
    randomize(ref, seed)
    with torch.no_grad():
        ref.model.decoder.self_conditioning.down_proj.weight.mul_(self_conditioning)
    ref.save_pretrained(folder)
    return ref
