"""DiffusionGemma's engine: the `dlm.engine.Engine` interface over the encoder and the denoiser.

Two kinds of pass, told apart by `write` (dlm.sampling.canvas makes them):
- encode (`write`, `tail` 0, `n_out` 0): the encoder runs the tokens causally after the
  sequence's cache and appends their keys/values to it; nothing comes back.
- canvas step (not `write`, `tail` = `n_out` = the canvas): the denoiser runs the canvas over
  the cache (`dlm.gemma.passes.canvas_pass`) and returns the sampled canvas (`tokens`, and
  `confidence` its untempered probability), the argmax canvas and each position's entropy at
  the pass's temperature.
The self-conditioning signal (the last step's tempered logits, [canvas, vocab]) stays here per
sequence, so logits never leave the engine: a sequence's next canvas step reads it, and an
encode pass (a new canvas) drops it. Each kind runs as one batched call per `step`, rows of
their own cache and canvas lengths padded and masked.

The graph runs are a `Runner`'s: `TorchRunner` here (the passes in PyTorch, on any device), or
ONNX Runtime's (export/gemma_ort.py). The engine keeps each sequence's cache as the four
stacked tensors of `dlm.gemma.passes` [layers of the kind, kv heads, capacity, head dim] on the
runner's device, grown by doubling; a lone row is handed to the runner as a view, no copy.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from dlm.engine import PassRequest, PassResult
from dlm.gemma.config import GemmaConfig
from dlm.gemma.model import DiffusionGemma
from dlm.gemma.passes import KINDS, canvas_pass, encode_pass, layers_of
from plugins.denoise_step.reference import denoise_step_torch


class Runner(Protocol):
    config: GemmaConfig
    device: torch.device
    dtype: torch.dtype  # of the cache and the self-conditioning signal

    def encode(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]: ...

    def canvas(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]: ...


class TorchRunner:
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

    @torch.inference_mode()
    def encode(self, *inputs):
        return encode_pass(self.model, *inputs)

    @torch.inference_mode()
    def canvas(self, *inputs):
        return canvas_pass(self.model, *inputs, step=denoise_step_torch)


class GemmaEngine:
    def __init__(self, runner: Runner) -> None:
        self.runner, self.config = runner, runner.config
        self.device, self.dtype = runner.device, runner.dtype
        self.cache: dict[int, list[torch.Tensor]] = {}  # the four stacked tensors
        self.length: dict[int, int] = {}
        self.self_conditioning: dict[int, torch.Tensor] = {}  # [C, V] tempered logits

    @classmethod
    def torch(cls, model: DiffusionGemma, device="cpu", dtype=None) -> GemmaEngine:
        return cls(TorchRunner(model, device, dtype))

    def cached(self, seq_id: int) -> int:
        return self.length.get(seq_id, 0)

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
        if encodes:
            self._encode([passes[i] for i in encodes])
            for i in encodes:
                results[i] = PassResult(np.zeros(0, np.int64), np.zeros(0, np.float32))
        if steps:
            for i, res in zip(steps, self._denoise([passes[i] for i in steps]), strict=True):
                results[i] = res
        return results

    def release(self, seq_id: int) -> None:
        for d in (self.cache, self.length, self.self_conditioning):
            d.pop(seq_id, None)

    def __len__(self) -> int:
        return len(self.length)

    def _rows(self, passes: list[PassRequest]) -> tuple[torch.Tensor, ...]:
        """Padded ids and RoPE positions [B, T], cached lengths and new lengths [B]."""
        t = max(len(p.tokens) for p in passes)
        ids = torch.zeros(len(passes), t, dtype=torch.long)
        for i, p in enumerate(passes):
            ids[i, : len(p.tokens)] = torch.tensor(p.tokens)
        starts = torch.tensor([p.start for p in passes])
        positions = starts[:, None] + torch.arange(t)[None, :]
        lengths = torch.tensor([len(p.tokens) for p in passes])
        return tuple(x.to(self.device) for x in (ids, positions, starts, lengths))

    def _gather(self, seq_ids: list[int]) -> list[torch.Tensor]:
        """The batch's four cache tensors [layers, B, kv heads, P, head dim], zero-padded."""
        s = max(self.cached(i) for i in seq_ids)
        if len(seq_ids) == 1 and s:  # a lone row: a view of its own storage
            return [t[:, None, :, :s] for t in self.cache[seq_ids[0]]]
        out = []
        for j, (kind, _) in enumerate((k, part) for k in KINDS for part in ("k", "v")):
            att, n = getattr(self.config, kind), len(layers_of(self.config, kind))
            t = torch.zeros(
                (n, len(seq_ids), att.num_kv_heads, s, att.head_dim),
                dtype=self.dtype,
                device=self.device,
            )
            for row, sid in enumerate(seq_ids):
                if sid in self.cache:
                    length = self.length[sid]
                    t[:, row, :, :length] = self.cache[sid][j][:, :, :length]
            out.append(t)
        return out

    def _encode(self, passes: list[PassRequest]) -> None:
        ids, positions, starts, lengths = self._rows(passes)
        past = self._gather([p.seq_id for p in passes])
        new = self.runner.encode(ids, positions, starts, lengths, *past)
        for row, p in enumerate(passes):
            self._append(p.seq_id, p.start, [t[:, row, :, : len(p.tokens)] for t in new])
            self.self_conditioning.pop(p.seq_id, None)  # a new canvas starts unconditioned

    def _append(self, seq_id: int, start: int, new: list[torch.Tensor]) -> None:
        end = start + new[0].shape[2]
        old = self.cache.get(seq_id)
        if old is None or old[0].shape[2] < end:
            grown = [t.new_zeros(t.shape[0], t.shape[1], max(64, 2 * end), t.shape[3]) for t in new]
            if old is not None:
                for g, o in zip(grown, old, strict=True):
                    g[:, :, :start] = o[:, :, :start]
            self.cache[seq_id] = old = grown
        for o, t in zip(old, new, strict=True):
            o[:, :, start:end] = t
        self.length[seq_id] = end

    def _denoise(self, passes: list[PassRequest]) -> list[PassResult]:
        ids, positions, starts, lengths = self._rows(passes)
        past = self._gather([p.seq_id for p in passes])
        b, c = ids.shape
        signal = torch.zeros(b, c, self.config.vocab_size, dtype=self.dtype, device=self.device)
        conditioned = torch.zeros(b, dtype=torch.bool, device=self.device)
        for row, p in enumerate(passes):
            prev = self.self_conditioning.get(p.seq_id)
            if prev is not None:
                signal[row, : prev.shape[0]], conditioned[row] = prev, True
        temperature = torch.tensor([p.temperature for p in passes], device=self.device)
        seed = torch.tensor([p.seed for p in passes], dtype=torch.int64, device=self.device)
        token, confidence, argmax, entropy, tempered = self.runner.canvas(
            ids, positions, starts, lengths, *past, signal, conditioned, temperature, seed
        )
        results = []
        for row, p in enumerate(passes):
            n = len(p.tokens)
            self.self_conditioning[p.seq_id] = tempered[row, :n].to(self.dtype)
            results.append(
                PassResult(
                    token[row, :n].cpu().numpy(),
                    confidence[row, :n].float().cpu().numpy(),
                    argmax=argmax[row, :n].cpu().numpy(),
                    entropy=entropy[row, :n].float().cpu().numpy(),
                )
            )
        return results
