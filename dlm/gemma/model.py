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
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        past: Cache | None = None,
        past_len: torch.Tensor | None = None,
        n_new: torch.Tensor | None = None,
    ) -> tuple[Cache, torch.Tensor]:
        """Encode context tokens causally after `past` (None: nothing cached yet).

        input_ids/positions [B, T] (positions set RoPE only; the masks go by cache index).
        A batch of sequences of their own lengths: row b has `past_len[b]` cached entries (of
        the past's P, zero-padded) and `n_new[b]` new tokens (of T, right-padded); None: all.
        Returns the new (keys, values) per layer [B, Hkv, T, D], of which row b's first
        n_new[b] are its own (to append with `extend`), and the final hidden states [B, T, hidden].
        """
        b, t = input_ids.shape
        p = 0 if past is None else past[0][0].shape[2]
        past_len, n_new = self._lengths(input_ids, p, past_len), self._lengths(input_ids, t, n_new)
        key_index, key_valid = _key_slots(past_len, p, n_new, t)
        query = past_len[:, None, None] + torch.arange(t, device=input_ids.device)[None, :, None]
        seen = (key_valid[:, None, :] | _own_slot(b, p, t, input_ids.device)) & (
            key_index[:, None, :] <= query
        )
        window = query - key_index[:, None, :] < self.cfg.sliding_window
        masks = {"full": seen[:, None], "sliding": (seen & window)[:, None]}
        x = self.encoder.embed_tokens(input_ids) * self.encoder.scale()
        return self._run(self.encoder, x, positions, masks, past)

    def denoise(
        self,
        canvas_ids: torch.Tensor,
        positions: torch.Tensor,
        self_conditioning: torch.Tensor | None,
        cache: Cache,
        self_conditioning_rows: torch.Tensor | None = None,
        past_len: torch.Tensor | None = None,
        canvas_len: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One denoising step: float32 logits [B, C, V] for the canvas, soft-capped.

        canvas_ids/positions [B, C] (positions normally follow the cache: S, S + 1, ...);
        self_conditioning: the previous step's logits [B, C, V], None on a canvas's first step;
        self_conditioning_rows [B] bool: rows whose signal is used (others as if None).
        past_len [B]: each row's cached entries (of the cache's S, zero-padded), canvas_len [B]:
        its canvas (of C, right-padded); None: all.
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
        (b, c), s = canvas_ids.shape, cache[0][0].shape[2]
        past_len = self._lengths(canvas_ids, s, past_len)
        canvas_len = self._lengths(canvas_ids, c, canvas_len)
        key_index, key_valid = _key_slots(past_len, s, canvas_len, c)
        seen = key_valid[:, None, :] | _own_slot(b, s, c, canvas_ids.device)
        # Sliding layers see the last window - 1 cached tokens (what the reference's sliding
        # cache keeps) and the whole canvas, whatever its length.
        recent = key_index >= (past_len - (self.cfg.sliding_window - 1))[:, None]
        masks = {"full": seen[:, None], "sliding": (seen & recent[:, None, :])[:, None]}
        _, h = self._run(dec, x, positions, masks, cache)
        head = self.lm_head.weight if not self.cfg.tie_word_embeddings else dec.embed_tokens.weight
        logits = F.linear(h, head).float()
        cap = self.cfg.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    @staticmethod
    def _lengths(ids: torch.Tensor, full: int, given: torch.Tensor | None) -> torch.Tensor:
        if given is None:
            return torch.full((ids.shape[0],), full, dtype=torch.long, device=ids.device)
        return given.to(device=ids.device, dtype=torch.long)


def _key_slots(
    past_len: torch.Tensor, p: int, n_new: torch.Tensor, t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache index [B, P + T] of each key slot (the past's P, then T new) and whether it holds
    one of the row's own entries (the rest is padding)."""
    slot = torch.arange(p + t, device=past_len.device)[None, :]
    new = slot >= p
    index = torch.where(new, past_len[:, None] + slot - p, slot)
    valid = (new & (slot - p < n_new[:, None])) | (~new & (slot < past_len[:, None]))
    return index, valid


def _own_slot(b: int, p: int, t: int, device) -> torch.Tensor:
    """[1, T, P + T]: query j's own key slot, so that a padding query still attends somewhere
    (its output is discarded; an empty softmax row would be NaN)."""
    q = torch.arange(t, device=device)[:, None]
    k = torch.arange(p + t, device=device)[None, :]
    return (k == p + q)[None]


def extend(past: Cache | None, new: Cache) -> Cache:
    """The cache after appending `new` (from `encode`) to `past`."""
    if past is None:
        return list(new)
    return [
        (torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2))
        for (pk, pv), (k, v) in zip(past, new, strict=True)
    ]
