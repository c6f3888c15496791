"""The decoder: RMSNorm, RoPE (optional YaRN and Llama-4 query scaling), GQA attention, SwiGLU.

Module names follow Nemotron-Labs Diffusion checkpoints (`encoder.*`, `diffusion_head`), so those
load without renaming; other families are mapped in `dlm.checkpoint`.

`forward` is a pure function of its inputs (no cache object, no side effects), so that it exports
to ONNX whole: committed keys/values come in as `past_k`/`past_v`, the new ones go out, and the
caller (an engine) decides what to keep (`ConcatKV`). `run` is the same pass over any K/V layout:
the PyTorch engine's reads and writes its cache in place (`dlm.kv`). The attention pattern of a
pass is given by

    past_len [B]  cached positions each row sees (rows may differ: ragged batches, rollback)
    n_new    [B]  valid new tokens per row (new tokens are right-padded to T)
    tail     [B]  the last `tail` valid new tokens before the fork see each other (block-
                  bidirectional); the others are causal. tail 0 = causal pass; tail = n_new = all
                  bidirectional.
    fork     [B]  the last `fork` valid new tokens are a branch off the first new token (a
                  tree of two paths in one pass): they sit at the positions right after it, see
                  the cache, that token and each other, and no other token sees them. 0 = none.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlm.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x / sqrt, not x * rsqrt: the form ONNX Runtime fuses into one SimplifiedLayerNormalization
        # kernel when it loads the exported graph (13 fused norms made a pass of the default
        # model 7-13% faster on the 2-core CPU)
        xf = x.float()
        xf = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim / 2] and the cos/sin magnitude (YaRN's mscale)."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if cfg.yarn is None or cfg.yarn.factor == 1.0:
        return inv_freq.float(), 1.0
    y = cfg.yarn

    # YaRN: interpolate the low frequencies by `factor`, keep the high ones, ramp in between.
    def dim_for_rotations(n: float) -> float:
        return (
            dim
            * math.log(y.original_max_position / (n * 2 * math.pi))
            / (2 * math.log(cfg.rope_theta))
        )

    low = max(math.floor(dim_for_rotations(y.beta_fast)), 0)
    high = min(math.ceil(dim_for_rotations(y.beta_slow)), dim // 2 - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
    extrapolate = 1.0 - ramp
    inv_freq = inv_freq / y.factor * (1 - extrapolate) + inv_freq * extrapolate
    return inv_freq.float(), 0.1 * math.log(y.factor) + 1.0


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos/sin [B, 1, T, D/2]. Rotates the two halves of the head (Llama style)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def pass_mask(
    past_len: torch.Tensor,
    n_new: torch.Tensor,
    tail: torch.Tensor,
    fork: torch.Tensor,
    keys: int,
    new: int,
    new_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean attention mask [B, new, keys]: True where a query may attend to a key.

    Key j is cached position j where j < past_len, else new token j - new_start (`new_start`
    [B]: where a row's new tokens sit on the key axis; default keys - new, the layout
    [past padded to P | new] of `ConcatKV`; `dlm.kv.SlotPass` puts them right after the row's
    cache). Padded queries (past n_new) see the cache and the first new token: their outputs are
    never read, and a query that sees no key would be NaN."""
    dev = past_len.device
    if new_start is None:
        new_start = torch.full_like(past_len, keys - new)
    j = torch.arange(keys, device=dev)[None, None, :]
    q = torch.arange(new, device=dev)[None, :, None]
    k = j - new_start[:, None, None]  # the new token that key j holds (if 0 <= k < n_new)
    n = n_new[:, None, None]
    trunk_end = (n_new - fork)[:, None, None]  # the first path; the fork follows it
    block_start = trunk_end - tail[:, None, None]
    in_block = (q >= block_start) & (k >= block_start)
    trunk = (q < trunk_end) & (k < trunk_end) & ((k <= q) | in_block)
    in_fork = (k >= trunk_end) & (k < n)
    branch = (q >= trunk_end) & ((k == 0) | in_fork)
    past = j < past_len[:, None, None]
    return past | ((k >= 0) & (k < n) & (trunk | branch))


def pass_positions(past_len: torch.Tensor, n_new: torch.Tensor, fork: torch.Tensor, new: int):
    """Position ids [B, new]: consecutive from past_len; the fork restarts after the first token."""
    t = torch.arange(new, device=past_len.device)[None, :]
    trunk_end = (n_new - fork)[:, None]
    return past_len[:, None] + torch.where(t < trunk_end, t, t - trunk_end + 1)


def grouped_attention(q, keys, values, mask: torch.Tensor) -> torch.Tensor:
    """Attention of q [B, H, T, D] over keys/values [B, Hkv, S, D] under mask [B, T, S], in the
    ops the ONNX graph gets (`ConcatKV` while exporting). The query heads that share a K/V head
    are a dimension of their own, so K/V broadcast over them instead of being repeated; and
    written out, the graph carries none of the shape plumbing and NaN guard that
    `scaled_dot_product_attention` decomposes into (every query sees a key: `pass_mask`). On the
    default model's graph: 617 -> 504 nodes after ONNX Runtime's optimiser, a pass 1.07-1.23x
    faster (benchmarks/results/graph_ab_cpu/grouped_attention.md)."""
    groups = keys.shape[1]
    q = q.unflatten(1, (groups, q.shape[1] // groups)) * q.shape[-1] ** -0.5
    scores = q @ keys[:, :, None].transpose(-1, -2)  # [B, Hkv, H / Hkv, T, S]
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    return (scores.float().softmax(-1).to(values.dtype) @ values[:, :, None]).flatten(1, 2)


class ConcatKV:
    """The K/V layout of the pure forward pass (the ONNX export and the engines that run it,
    training, the parity references): past keys/values [L, B, Hkv, P, D] in, each layer's new
    ones kept for `new()`; a layer attends to [past | new]: in eager PyTorch by
    `scaled_dot_product_attention` over K/V repeated for GQA (its fused kernels, e.g. in
    training), in the exported graph by `grouped_attention`. `dlm.kv.SlotPass` is the other
    layout: K/V read and written in place in preallocated slots (the PyTorch engine)."""

    def __init__(self, past_k: torch.Tensor, past_v: torch.Tensor) -> None:
        self.past_k, self.past_v = past_k, past_v
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def keys(self, new: int) -> int:
        return self.past_k.shape[3] + new

    new_start = None  # pass_mask's default: the new tokens after the padded past

    def attend(self, layer: int, q, k, v, mask: torch.Tensor) -> torch.Tensor:
        """Attention of q [B, H, T, D] over the layer's past and the pass's k/v [B, Hkv, T, D]."""
        self.k.append(k)
        self.v.append(v)
        keys = torch.cat([self.past_k[layer].to(k.dtype), k], dim=2)  # past: maybe another dtype
        values = torch.cat([self.past_v[layer].to(v.dtype), v], dim=2)
        if torch.onnx.is_in_onnx_export():
            return grouped_attention(q, keys, values, mask)
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            keys = keys.repeat_interleave(rep, dim=1)
            values = values.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None])

    def new(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pass's keys/values [L, B, Hkv, T, D]."""
        return torch.stack(self.k), torch.stack(self.v)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.cfg, self.index = cfg, index
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)

    def forward(self, x, cos, sin, qscale, mask, kv):
        # x [B, T, hidden]; mask [B, T, keys]; kv: the pass's K/V layout (ConcatKV, SlotPass)
        b, t, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x).view(b, t, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if qscale is not None:
            q = q * qscale.to(q.dtype)
        out = kv.attend(self.index, q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, index)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, qscale, mask, kv):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, qscale, mask, kv))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DiffusionLM(nn.Module):
    """A tri-mode diffusion LM: one set of weights for causal and block-bidirectional passes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.encoder = Encoder(cfg)
        self.diffusion_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        inv_freq, mscale = rope_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rope_mscale = mscale

    def empty_past(self, batch: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-length past keys/values [L, B, Hkv, 0, D]."""
        c = self.cfg
        dtype = dtype or self.diffusion_head.weight.dtype
        z = torch.zeros(
            c.num_layers, batch, c.num_kv_heads, 0, c.head_dim, device=device, dtype=dtype
        )
        return z, z

    def hidden(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
    ):
        """Final hidden states [B, T, hidden] and the new keys/values [L, B, Hkv, T, D].

        input_ids/positions [B, T]; mask [B, T, P + T] bool; past_k/v [L, B, Hkv, P, D].
        """
        kv = ConcatKV(past_k, past_v)
        return self.hidden_over(input_ids, positions, mask, kv), *kv.new()

    def hidden_over(self, input_ids, positions, mask, kv) -> torch.Tensor:
        """Final hidden states [B, T, hidden], attending through the K/V layout `kv`."""
        freqs = positions.float()[..., None] * self.inv_freq  # [B, T, D/2]
        cos = (freqs.cos() * self.rope_mscale)[:, None]
        sin = (freqs.sin() * self.rope_mscale)[:, None]
        qscale = None
        if self.cfg.query_scale_beta > 0:
            # Llama-4 attention temperature: sharpen queries at positions past max_position.
            steps = torch.floor((positions.float() + 1) / self.cfg.query_scale_max_position)
            qscale = (1 + self.cfg.query_scale_beta * torch.log1p(steps))[:, None, :, None]
        x = self.encoder.embed_tokens(input_ids)
        for layer in self.encoder.layers:
            x = layer(x, cos, sin, qscale, mask, kv)
        return self.encoder.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.diffusion_head(hidden)

    def forward(self, input_ids, past_k, past_v, past_len, n_new, tail, fork, out_index):
        """One pass. Returns logits [B, K, V] at `out_index` [B, K] and new K/V [L, B, Hkv, T, D].

        For `logits_shift` models (Dream) the logits at new position i are those the network
        produced at position i - 1: every family then predicts a position's own token.
        """
        kv = ConcatKV(past_k, past_v)
        return self.run(input_ids, kv, past_len, n_new, tail, fork, out_index), *kv.new()

    def run(self, input_ids, kv, past_len, n_new, tail, fork, out_index) -> torch.Tensor:
        """`forward` over any K/V layout: the logits [B, K, V] at `out_index`."""
        b, t = input_ids.shape
        positions = pass_positions(past_len, n_new, fork, t)
        mask = pass_mask(past_len, n_new, tail, fork, kv.keys(t), t, kv.new_start)
        h = self.hidden_over(input_ids, positions, mask, kv)
        if self.cfg.logits_shift:
            h = torch.cat([h[:, :1], h[:, :-1]], dim=1)
        idx = out_index[..., None].expand(-1, -1, h.shape[-1])
        return self.logits(torch.gather(h, 1, idx))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
