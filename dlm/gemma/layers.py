"""DiffusionGemma's building blocks: one Gemma-4 layer and its parts.

Attention: q/k RMSNorm and a scale-free v norm, no 1/sqrt(d) (the norms set the scale), RoPE on
all of a sliding layer's head but only part of a full layer's ("proportional"), and full layers
reusing the key projection as values. Feed-forward: a dense GELU MLP and a routed mixture of
experts side by side, each with its own norms, summed. Every sublayer output is normed before the
residual add, and the layer's output is scaled by `layer_scalar`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlm.gemma.config import AttentionKind, GemmaConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, scale: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if scale else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            xf = xf * self.weight.float()
        return xf.to(x.dtype)


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def rope_inv_freq(att: AttentionKind) -> torch.Tensor:
    """[head_dim / 2] frequencies; pairs past `rotated_pairs` get 0 (cos 1, sin 0: unrotated)."""
    i = torch.arange(att.head_dim // 2, dtype=torch.float32)
    freq = 1.0 / (att.rope_theta ** (2 * i / att.head_dim)) / att.rope_factor
    return torch.where(i < att.rotated_pairs, freq, torch.zeros_like(freq))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; cos/sin [B, T, 1, D/2]. Rotates dims (i, i + D/2) together."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: GemmaConfig, att: AttentionKind, sliding: bool) -> None:
        super().__init__()
        h, d, heads, kv = cfg.hidden_size, att.head_dim, cfg.num_heads, att.num_kv_heads
        self.head_dim, self.num_heads, self.num_kv_heads = d, heads, kv
        self.q_proj = nn.Linear(h, heads * d, bias=False)
        self.k_proj = nn.Linear(h, kv * d, bias=False)
        # Full layers have no value projection: values are the keys before their norm and RoPE.
        self.v_proj = nn.Linear(h, kv * d, bias=False) if sliding else None
        self.o_proj = nn.Linear(heads * d, h, bias=False)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.v_norm = RMSNorm(d, cfg.rms_norm_eps, scale=False)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        # x [B, T, hidden]; past_k/v [B, Hkv, P, D]; mask [T, P + T] bool (True: may attend)
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = k if self.v_proj is None else self.v_proj(x).view(b, t, self.num_kv_heads, -1)
        q = apply_rope(self.q_norm(q), cos, sin).transpose(1, 2)
        k = apply_rope(self.k_norm(k), cos, sin).transpose(1, 2)
        v = self.v_norm(v).transpose(1, 2)
        keys = torch.cat([past_k.to(k.dtype), k], dim=2)
        values = torch.cat([past_v.to(v.dtype), v], dim=2)
        rep = self.num_heads // self.num_kv_heads
        if rep > 1:
            keys = keys.repeat_interleave(rep, dim=1)
            values = values.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1)), k, v


class MLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gelu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Picks `top_k` experts per token; their softmax weights renormalised, times a learnt
    per-expert scale."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, scale=False)
        self.proj = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(cfg.hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(cfg.num_experts))
        self.top_k = cfg.top_k_experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x [N, hidden] -> weights [N, K] (float32), expert ids [N, K]
        x = self.norm(x) * self.scale * x.shape[-1] ** -0.5
        probs = self.proj(x).softmax(dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[experts], experts


class Experts(nn.Module):
    """`num_experts` GELU MLPs stored as stacked matrices (gate and up rows in one tensor).

    Routed (the default): only the experts some token chose run. `dense`: every expert runs on
    every token, weighted by its routing weight (0 where not chosen): the same sum with no
    data-dependent shapes, what a graph export can trace (export/gemma_onnx.py), at
    num_experts / top_k times the expert FLOPs."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.zeros(e, 2 * i, h))
        self.down_proj = nn.Parameter(torch.zeros(e, h, i))
        self.dense = False

    def forward(self, x, weights, experts):
        # x [N, hidden]; weights/experts [N, K]
        if self.dense:
            w = torch.zeros(x.shape[0], self.gate_up_proj.shape[0], device=x.device)
            w = w.scatter_add(1, experts, weights.float())  # [N, E]
            gate, up = torch.einsum("nh,eih->nei", x, self.gate_up_proj).chunk(2, dim=-1)
            y = torch.einsum("nei,ehi->neh", gelu(gate) * up, self.down_proj)
            return (y * w[..., None].to(y.dtype)).sum(dim=1)
        out = torch.zeros_like(x)
        for e in experts.unique().tolist():
            token, slot = (experts == e).nonzero(as_tuple=True)
            gate, up = F.linear(x[token], self.gate_up_proj[e]).chunk(2, dim=-1)
            y = F.linear(gelu(gate) * up, self.down_proj[e]) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


class Layer(nn.Module):
    """One layer. With `tied_to`, every weight is that layer's and only `layer_scalar` is own."""

    _NORMS = (
        "input_layernorm post_attention_layernorm pre_feedforward_layernorm "
        "post_feedforward_layernorm post_feedforward_layernorm_1 post_feedforward_layernorm_2 "
        "pre_feedforward_layernorm_2"
    ).split()

    def __init__(self, cfg: GemmaConfig, index: int, tied_to: Layer | None = None) -> None:
        super().__init__()
        if tied_to is not None:
            for name in ("self_attn", "mlp", "router", "experts", *self._NORMS):
                setattr(self, name, getattr(tied_to, name))
        else:
            sliding = cfg.layer_kinds[index] == "sliding"
            self.self_attn = Attention(cfg, cfg.attention(index), sliding)
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
            self.router = Router(cfg)
            self.experts = Experts(cfg)
            for name in self._NORMS:
                setattr(self, name, RMSNorm(cfg.hidden_size, cfg.rms_norm_eps))
        self.register_buffer("layer_scalar", torch.ones(1))

    def forward(self, x, cos, sin, mask, past_k, past_v):
        a, k, v = self.self_attn(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        x = x + self.post_attention_layernorm(a)
        dense = self.post_feedforward_layernorm_1(self.mlp(self.pre_feedforward_layernorm(x)))
        flat = x.reshape(-1, x.shape[-1])  # the router reads the residual stream itself
        weights, experts = self.router(flat)
        moe = self.experts(self.pre_feedforward_layernorm_2(flat), weights, experts)
        moe = self.post_feedforward_layernorm_2(moe.view_as(x))
        x = x + self.post_feedforward_layernorm(dense + moe)
        return x * self.layer_scalar, k, v
