"""DiffusionGemma's text model: a causal encoder that writes a KV cache, a denoiser that reads it.

    encode(context)           causal (sliding-window on sliding layers) over the cache so far;
                              returns the new keys/values of every layer, which the caller appends
    denoise(canvas, sc, cache) one step over a canvas of `canvas_length` tokens: the canvas sees
                              itself bidirectionally and the cache (sliding layers: its last
                              window - 1 entries), and the previous step's logits come back in as
                              self-conditioning; returns soft-capped logits [B, C, V]

Both stacks are Gemma-4 layers (`dlm.gemma.layers`). With tied weights (transformers' default)
the decoder shares every encoder weight except each layer's output scale, and the LM head is the
embedding. Module names follow the checkpoint's (`dlm.gemma.checkpoint`).

Pure functions of their inputs, like `dlm.model`: no cache object, nothing written in place.
A cache is a list over layers of (keys, values) [B, kv_heads, S, head_dim], index i holding the
i-th encoded token for every layer (sliding layers keep all of it; the masks apply the window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlm.gemma.config import GemmaConfig
from dlm.gemma.layers import Layer, RMSNorm, gelu, rope_inv_freq

Cache = list[tuple[torch.Tensor, torch.Tensor]]


class Stack(nn.Module):
    """Scaled embedding, layers, final norm: the encoder, or (tied) the decoder's view of it."""

    def __init__(self, cfg: GemmaConfig, tied_to: Stack | None = None) -> None:
        super().__init__()
        if tied_to is None:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        else:
            self.embed_tokens, self.norm = tied_to.embed_tokens, tied_to.norm
        self.layers = nn.ModuleList(
            Layer(cfg, i, tied_to.layers[i] if tied_to else None) for i in range(cfg.num_layers)
        )
        self.embed_scale = cfg.hidden_size**0.5

    def scale(self) -> float:
        # sqrt(hidden) rounded to the weights' dtype (55.5 in bfloat16 for 3072), as the reference.
        return torch.tensor(self.embed_scale, dtype=self.embed_tokens.weight.dtype).item()


class SelfConditioning(nn.Module):
    """Adds a GELU MLP of the previous step's expected embedding to the canvas embedding."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.pre_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.post_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, scale=False)

    def forward(self, embeds: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        s = self.pre_norm(soft)
        return self.post_norm(embeds + self.down_proj(gelu(self.gate_proj(s)) * self.up_proj(s)))


class Decoder(Stack):
    def __init__(self, cfg: GemmaConfig, tied_to: Stack | None = None) -> None:
        super().__init__(cfg, tied_to)
        self.self_conditioning = SelfConditioning(cfg)


class DiffusionGemma(nn.Module):
    """The text model of a DiffusionGemma checkpoint; see the module docstring for the passes."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.encoder = Stack(cfg)
        self.decoder = Decoder(cfg, self.encoder if cfg.tie_word_embeddings else None)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.build_rope()

    def build_rope(self) -> None:
        """(Re)make the RoPE frequency buffers (not in checkpoints; needed after a meta load)."""
        for kind in ("sliding", "full"):
            freq = rope_inv_freq(getattr(self.cfg, kind))
            self.register_buffer(f"{kind}_inv_freq", freq, persistent=False)

    def _rope(self, positions: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for kind in set(self.cfg.layer_kinds):
            angles = positions.float()[..., None, None] * getattr(self, f"{kind}_inv_freq")
            out[kind] = (angles.cos(), angles.sin())  # [B, T, 1, D/2]
        return out

    def _run(
        self,
        stack: Stack,
        x: torch.Tensor,
        positions: torch.Tensor,
        masks: dict[str, torch.Tensor],
        past: Cache | None,
    ) -> tuple[Cache, torch.Tensor]:
        """Run `stack`'s layers over x [B, T, hidden]: the new keys/values, the normed output."""
        rope = self._rope(positions)
        new: Cache = []
        for i, layer in enumerate(stack.layers):
            kind = self.cfg.layer_kinds[i]
            att = self.cfg.attention(i)
            if past is None:
                pk = x.new_zeros(x.shape[0], att.num_kv_heads, 0, att.head_dim)
                pv = pk
            else:
                pk, pv = past[i]
            x, k, v = layer(x, *rope[kind], masks[kind], pk, pv)
            new.append((k, v))
        return new, stack.norm(x)

    def encode(
        self, input_ids: torch.Tensor, positions: torch.Tensor, past: Cache | None = None
    ) -> tuple[Cache, torch.Tensor]:
        """Encode context tokens causally after `past` (None: nothing cached yet).

        input_ids/positions [B, T] (positions set RoPE only; the masks go by cache index).
        Returns the new (keys, values) per layer [B, Hkv, T, D], to append with `extend`, and
        the final hidden states [B, T, hidden].
        """
        p = 0 if past is None else past[0][0].shape[2]
        t = input_ids.shape[1]
        q = torch.arange(p, p + t, device=input_ids.device)[:, None]
        k = torch.arange(p + t, device=input_ids.device)[None, :]
        causal = k <= q
        masks = {"full": causal, "sliding": causal & (q - k < self.cfg.sliding_window)}
        x = self.encoder.embed_tokens(input_ids) * self.encoder.scale()
        return self._run(self.encoder, x, positions, masks, past)

    def denoise(
        self,
        canvas_ids: torch.Tensor,
        positions: torch.Tensor,
        self_conditioning: torch.Tensor | None,
        cache: Cache,
        self_conditioning_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One denoising step: float32 logits [B, C, V] for the canvas, soft-capped.

        canvas_ids/positions [B, C] (positions normally follow the cache: S, S + 1, ...);
        self_conditioning: the previous step's logits [B, C, V], None on a canvas's first step;
        self_conditioning_rows [B] bool: rows whose signal is used (others as if None).
        """
        dec = self.decoder
        x = dec.embed_tokens(canvas_ids) * dec.scale()
        if self_conditioning is None:
            soft = torch.zeros_like(x)
        else:
            probs = self_conditioning.softmax(dim=-1, dtype=torch.float32)
            weight = dec.embed_tokens.weight
            soft = (probs.to(weight.dtype) @ weight) * dec.scale()  # the expected embedding
            if self_conditioning_rows is not None:
                soft = soft * self_conditioning_rows.to(soft.dtype)[:, None, None]
        x = dec.self_conditioning(x, soft)
        s, c = cache[0][0].shape[2], canvas_ids.shape[1]
        k = torch.arange(s + c, device=canvas_ids.device)[None, :].expand(c, -1)
        # Sliding layers see the last window - 1 cached tokens (what the reference's sliding
        # cache keeps) and the whole canvas, whatever its length.
        masks = {
            "full": torch.ones_like(k, dtype=torch.bool),
            "sliding": k >= s - (self.cfg.sliding_window - 1),
        }
        _, h = self._run(dec, x, positions, masks, cache)
        head = self.lm_head.weight if not self.cfg.tie_word_embeddings else dec.embed_tokens.weight
        logits = F.linear(h, head).float()
        cap = self.cfg.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap


def extend(past: Cache | None, new: Cache) -> Cache:
    """The cache after appending `new` (from `encode`) to `past`."""
    if past is None:
        return list(new)
    return [
        (torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2))
        for (pk, pv), (k, v) in zip(past, new, strict=True)
    ]
