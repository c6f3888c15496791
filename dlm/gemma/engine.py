"""DiffusionGemma's engine: the `dlm.engine.Engine` interface over the encoder and the denoiser.

Two kinds of pass, told apart by `write` (dlm.sampling.canvas makes them):
- encode (`write`, `tail` 0, `n_out` 0): the encoder runs the tokens causally after the
  sequence's cache and appends their keys/values to it; nothing comes back.
- canvas step (not `write`, `tail` = `n_out` = the canvas): the denoiser runs the canvas over
  the cache. At the pass's temperature T it returns the canvas sampled from softmax(logits / T)
  (the DenoiseStep op's Gumbel-max: `tokens`, and `confidence` its untempered probability),
  the argmax canvas and each position's entropy of softmax(logits / T).
The self-conditioning signal (the last step's tempered logits, [canvas, vocab]) stays here per
sequence, so logits never leave the engine: a sequence's next canvas step reads it, and an
encode pass (a new canvas) drops it. Each kind runs as one batched call per `step`, rows of
their own cache and canvas lengths padded and masked (`dlm.gemma.model`).
"""

from __future__ import annotations

import numpy as np
import torch

from dlm.engine import PassRequest, PassResult
from dlm.gemma.model import Cache, DiffusionGemma
from plugins.denoise_step.reference import denoise_step_torch


class GemmaEngine:
    def __init__(
        self,
        model: DiffusionGemma,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if dtype is not None:
            self.model = self.model.to(dtype)
            self.model.build_rope()  # float32 frequencies, whatever the weights
            self.model.to(self.device)
        self.config = model.cfg
        self.dtype = self.model.decoder.embed_tokens.weight.dtype
        self.cache: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # [Hkv, S, D]
        self.self_conditioning: dict[int, torch.Tensor] = {}  # [C, V] tempered logits

    def cached(self, seq_id: int) -> int:
        layers = self.cache.get(seq_id)
        return 0 if layers is None else layers[0][0].shape[1]

    def check(self, p: PassRequest) -> None:
        """Reject a pass this engine cannot run; the message names the field."""
        cached = self.cached(p.seq_id)
        if not p.tokens:
            raise ValueError(f"pass.tokens for sequence {p.seq_id}: must not be empty")
        if p.start != cached:
            raise ValueError(f"pass.start={p.start}: must be {cached} (the cached length)")
        if p.fork:
            raise ValueError(f"pass.fork={p.fork}: must be 0 for {self.config.family}")
        if p.write and (p.tail, p.n_out) != (0, 0):
            raise ValueError(f"an encode pass: tail={p.tail}, n_out={p.n_out}: must be 0, 0")
        if not p.write:
            if not cached:
                raise ValueError(f"a canvas step of sequence {p.seq_id}: nothing encoded yet")
            if p.tail != len(p.tokens) or p.n_out != len(p.tokens):
                raise ValueError(
                    f"a canvas step: tail={p.tail}, n_out={p.n_out}: must be the canvas "
                    f"({len(p.tokens)})"
                )
            if not p.temperature > 0:
                raise ValueError(f"a canvas step: temperature={p.temperature}: must be > 0")
        if p.start + len(p.tokens) > self.config.max_position:
            raise ValueError(
                f"sequence {p.seq_id} would reach position {p.start + len(p.tokens)}: "
                f"the model allows at most {self.config.max_position}"
            )

    def step(self, passes: list[PassRequest]) -> list[PassResult]:
        for p in passes:
            self.check(p)
        results: list[PassResult | None] = [None] * len(passes)
        encodes = [i for i, p in enumerate(passes) if p.write]
        steps = [i for i, p in enumerate(passes) if not p.write]
        with torch.inference_mode():
            if encodes:
                self._encode([passes[i] for i in encodes])
                for i in encodes:
                    results[i] = PassResult(np.zeros(0, np.int64), np.zeros(0, np.float32))
            if steps:
                for i, res in zip(steps, self._denoise([passes[i] for i in steps]), strict=True):
                    results[i] = res
        return results

    def release(self, seq_id: int) -> None:
        self.cache.pop(seq_id, None)
        self.self_conditioning.pop(seq_id, None)

    def __len__(self) -> int:
        return len(self.cache)

    def _rows(self, passes: list[PassRequest]):
        """Padded ids and RoPE positions [B, T], lengths [B], the gathered cache and its lengths."""
        t = max(len(p.tokens) for p in passes)
        ids = torch.zeros(len(passes), t, dtype=torch.long)
        for i, p in enumerate(passes):
            ids[i, : len(p.tokens)] = torch.tensor(p.tokens)
        starts = torch.tensor([p.start for p in passes])
        positions = starts[:, None] + torch.arange(t)[None, :]
        lengths = torch.tensor([len(p.tokens) for p in passes])
        past = self._gather([p.seq_id for p in passes])
        dev = self.device
        return ids.to(dev), positions.to(dev), lengths.to(dev), past, starts.to(dev)

    def _gather(self, seq_ids: list[int]) -> Cache | None:
        """Each layer's cache [B, Hkv, S, D] for a batch, S the longest, zero-padded."""
        s = max(self.cached(i) for i in seq_ids)
        if s == 0:
            return None
        out: Cache = []
        for layer in range(self.config.num_layers):
            att = self.config.attention(layer)
            shape = (len(seq_ids), att.num_kv_heads, s, att.head_dim)
            k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            v = torch.zeros_like(k)
            for row, sid in enumerate(seq_ids):
                if sid in self.cache:
                    pk, pv = self.cache[sid][layer]
                    k[row, :, : pk.shape[1]], v[row, :, : pv.shape[1]] = pk, pv
            out.append((k, v))
        return out

    def _encode(self, passes: list[PassRequest]) -> None:
        ids, positions, lengths, past, starts = self._rows(passes)
        new, _ = self.model.encode(ids, positions, past, past_len=starts, n_new=lengths)
        for row, p in enumerate(passes):
            n = len(p.tokens)
            own = [(k[row, :, :n], v[row, :, :n]) for k, v in new]
            old = self.cache.get(p.seq_id)
            if old is not None:
                own = [
                    (torch.cat([pk, k], 1), torch.cat([pv, v], 1))
                    for (pk, pv), (k, v) in zip(old, own, strict=True)
                ]
            self.cache[p.seq_id] = own
            self.self_conditioning.pop(p.seq_id, None)  # a new canvas starts unconditioned

    def _denoise(self, passes: list[PassRequest]) -> list[PassResult]:
        ids, positions, lengths, past, starts = self._rows(passes)
        b, c = ids.shape
        signal = torch.zeros(b, c, self.config.vocab_size, dtype=self.dtype, device=self.device)
        rows = torch.zeros(b, dtype=torch.bool, device=self.device)
        for row, p in enumerate(passes):
            prev = self.self_conditioning.get(p.seq_id)
            if prev is not None:
                signal[row, : prev.shape[0]], rows[row] = prev, True
        logits = self.model.denoise(
            ids,
            positions,
            signal if rows.any() else None,
            past,
            self_conditioning_rows=rows,
            past_len=starts,
            canvas_len=lengths,
        )
        temperature = torch.tensor([p.temperature for p in passes], device=self.device)
        seed = torch.tensor([p.seed for p in passes], dtype=torch.int64, device=self.device)
        tokens, confidence = denoise_step_torch(logits, temperature, seed)
        tempered = logits / temperature[:, None, None]
        logp = torch.log_softmax(tempered, dim=-1)
        entropy = -(logp.exp() * logp).sum(dim=-1)
        argmax = logits.argmax(dim=-1)
        results = []
        for row, p in enumerate(passes):
            n = len(p.tokens)
            self.self_conditioning[p.seq_id] = tempered[row, :n].to(self.dtype)
            results.append(
                PassResult(
                    tokens[row, :n].cpu().numpy(),
                    confidence[row, :n].float().cpu().numpy(),
                    argmax=argmax[row, :n].cpu().numpy(),
                    entropy=entropy[row, :n].float().cpu().numpy(),
                )
            )
        return results
