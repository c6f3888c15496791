"""The engine interface: one forward pass for a batch of sequences, KV cache kept per sequence.

Samplers talk to every engine (PyTorch here, ONNX Runtime, TensorRT) through `step()`, which
carries token ids in and (token, confidence) pairs out: logits never
leave the engine, because the fused DenoiseStep op runs inside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from dlm.config import ModelConfig
from dlm.kv import SlotCache, SlotPass, dense
from dlm.model import DiffusionLM
from dlm.passes import NO_PENALTIES, run_pass


@dataclass
class PassRequest:
    """What one sequence asks of one forward pass.

    The engine first cuts the sequence's cache back to `start` positions (rollback), runs the
    `tokens` at positions start.., with the last `tail` of them attending to each other
    (block-bidirectional; 0 = causal), appends their keys/values to the cache if `write`, and
    returns the chosen token and confidence for the last `n_out` positions.

    With `fork` > 0 the last `fork` tokens are a second path off the first token instead (see
    `dlm.model`): positions right after it, seeing only the cache, that token and each other;
    `tail` then counts the tokens before them, and a write keeps only the first path.

    `penalties` (repetition, frequency, presence; `dlm.passes`) count the first
    `penalty_len[k]` tokens of `history` for output k (an empty `penalty_len`: none counts).
    """

    seq_id: int
    start: int
    tokens: list[int]
    tail: int
    write: bool
    n_out: int
    temperature: float = 0.0
    seed: int = 0
    fork: int = 0
    penalties: tuple[float, float, float] = NO_PENALTIES
    history: list[int] = field(default_factory=list)
    penalty_len: list[int] = field(default_factory=list)


@dataclass
class PassResult:
    tokens: np.ndarray  # [n_out] int64: argmax (temperature 0) or Gumbel-max sample
    confidence: np.ndarray  # [n_out] float32: softmax probability of that token
    # Canvas steps only (dlm.gemma.engine): the argmax, and the entropy at the pass's temperature.
    argmax: np.ndarray | None = None
    entropy: np.ndarray | None = None


class Engine(Protocol):
    config: ModelConfig

    def step(self, passes: list[PassRequest]) -> list[PassResult]: ...

    def release(self, seq_id: int) -> None: ...


def check_pass(p: PassRequest, cached: int, max_position: int) -> None:
    """Reject a pass that no engine could run; the message names the field."""
    if not p.tokens:
        raise ValueError(f"pass.tokens for sequence {p.seq_id}: must not be empty")
    if not 0 <= p.start <= cached:
        raise ValueError(
            f"pass.start={p.start} for sequence {p.seq_id}: must be in [0, {cached}]"
            " (the cached length)"
        )
    if not 0 <= p.fork < len(p.tokens):
        raise ValueError(f"pass.fork={p.fork}: must be in [0, {len(p.tokens) - 1}]")
    if not 0 <= p.tail <= len(p.tokens) - p.fork:
        raise ValueError(f"pass.tail={p.tail}: must be in [0, {len(p.tokens) - p.fork}]")
    if not 1 <= p.n_out <= len(p.tokens):
        raise ValueError(f"pass.n_out={p.n_out}: must be in [1, {len(p.tokens)}]")
    if p.start + len(p.tokens) > max_position:
        raise ValueError(
            f"sequence {p.seq_id} would reach position {p.start + len(p.tokens)}: "
            f"the model allows at most {max_position}"
        )


def pack_batch(passes: list[PassRequest], cached: list[int]) -> dict[str, np.ndarray]:
    """The padded inputs of one engine call (every engine builds them the same way)."""
    b, t = len(passes), max(len(p.tokens) for p in passes)
    k = max(p.n_out for p in passes)
    h = max(1, *(len(p.history) for p in passes))  # never an empty axis
    ids = np.zeros((b, t), np.int64)
    out_index = np.zeros((b, k), np.int64)
    penalty_ids = np.zeros((b, h), np.int64)
    penalty_len = np.zeros((b, k), np.int64)  # padding outputs count nothing
    for i, p in enumerate(passes):
        n = len(p.tokens)
        ids[i, :n] = p.tokens
        # Positions of the last n_out tokens, padded by repeating the last one.
        out_index[i] = np.minimum(np.arange(n - p.n_out, n - p.n_out + k), n - 1)
        penalty_ids[i, : len(p.history)] = p.history
        penalty_len[i, : len(p.penalty_len)] = p.penalty_len
    repetition, frequency, presence = (
        np.array(v, np.float32) for v in zip(*(p.penalties for p in passes), strict=True)
    )
    return {
        "input_ids": ids,
        "past_len": np.array([p.start for p in passes], np.int64),
        "n_new": np.array([len(p.tokens) for p in passes], np.int64),
        "tail": np.array([p.tail for p in passes], np.int64),
        "fork": np.array([p.fork for p in passes], np.int64),
        "out_index": out_index,
        "temperature": np.array([p.temperature for p in passes], np.float32),
        "seed": np.array([p.seed for p in passes], np.int64),
        "penalty_ids": penalty_ids,
        "penalty_len": penalty_len,
        "repetition_penalty": repetition,
        "frequency_penalty": frequency,
        "presence_penalty": presence,
    }


class KVStore:
    """Per-sequence K/V in growable arrays [L, Hkv, capacity, D]; rollback is a length change.

    Array-library agnostic: `zeros(shape)` makes the storage (torch tensors on any device for the
    PyTorch and TensorRT engines, NumPy for ONNX Runtime, whose copies are cheaper on a busy CPU).
    """

    def __init__(self, cfg: ModelConfig, zeros: Callable[[tuple[int, ...]], Any]) -> None:
        self.cfg, self.zeros = cfg, zeros
        self.k: dict[int, Any] = {}
        self.v: dict[int, Any] = {}
        self.length: dict[int, int] = {}
        self._past = (zeros((0,)), zeros((0,)))  # flat storage of the last gathered past K/V

    def cached(self, seq_id: int) -> int:
        return self.length.get(seq_id, 0)

    def gather(self, seq_ids: list[int], starts: list[int]) -> tuple[Any, Any]:
        """Past K/V [L, B, Hkv, P, D] for a batch, P = max(starts), zero-padded (never
        uninitialised memory: masked-out NaN would still leak through 0 x NaN).

        Both are views of storage kept from pass to pass (grown by doubling), valid until the
        next gather: fresh arrays every pass cost more in page faults than the copies (16 rows
        of the default model over 128 cached positions: 0.73 ms a tensor fresh, 0.18 reused)."""
        c = self.cfg
        shape = (c.num_layers, len(seq_ids), c.num_kv_heads, max(starts), c.head_dim)
        size = int(np.prod(shape))
        if self._past[0].shape[0] < size:
            self._past = (self.zeros((2 * size,)), self.zeros((2 * size,)))
        k, v = (flat[:size].reshape(shape) for flat in self._past)
        for i, (sid, s) in enumerate(zip(seq_ids, starts, strict=False)):
            if s:
                k[:, i, :, :s] = self.k[sid][:, :, :s]
                v[:, i, :, :s] = self.v[sid][:, :, :s]
            k[:, i, :, s:] = 0
            v[:, i, :, s:] = 0
        return k, v

    def write(self, seq_id: int, start: int, k: Any, v: Any) -> None:
        """Store k/v [L, Hkv, n, D] at positions start..start+n-1; the length becomes start+n."""
        end = start + k.shape[2]
        if seq_id not in self.k or self.k[seq_id].shape[2] < end:
            c = self.cfg
            shape = (c.num_layers, c.num_kv_heads, max(64, 2 * end), c.head_dim)
            nk, nv = self.zeros(shape), self.zeros(shape)
            if seq_id in self.k:
                old = self.length[seq_id]
                nk[:, :, :old] = self.k[seq_id][:, :, :old]
                nv[:, :, :old] = self.v[seq_id][:, :, :old]
            self.k[seq_id], self.v[seq_id] = nk, nv
        self.k[seq_id][:, :, start:end] = k
        self.v[seq_id][:, :, start:end] = v
        self.length[seq_id] = end

    def truncate(self, seq_id: int, length: int) -> None:
        if seq_id in self.length:
            self.length[seq_id] = min(self.length[seq_id], length)

    def release(self, seq_id: int) -> None:
        for d in (self.k, self.v, self.length):
            d.pop(seq_id, None)

    def __len__(self) -> int:
        return len(self.length)


class CachedEngine:
    """`step()` shared by every engine: check each pass, roll its cache back to `start`, pack the
    batch, `run_batch` it. Subclasses set `config` and `kv`; the default gathers the past, runs
    `forward` (one graph run: ONNX Runtime, TensorRT) and keeps the new K/V of writing passes."""

    config: ModelConfig
    kv: KVStore

    def forward(
        self, feed: dict[str, np.ndarray], past_k: Any, past_v: Any
    ) -> tuple[np.ndarray, np.ndarray, Any, Any]:
        """(token [B, K], confidence [B, K], new_k, new_v [L, B, Hkv, T, D]) for one batch."""
        raise NotImplementedError

    def step(self, passes: list[PassRequest]) -> list[PassResult]:
        for p in passes:
            check_pass(p, self.kv.cached(p.seq_id), self.config.max_position)
            if p.fork and self.config.logits_shift:
                raise ValueError(f"pass.fork={p.fork}: must be 0 for logits_shift families")
            self.kv.truncate(p.seq_id, p.start)
        feed = pack_batch(passes, [self.kv.cached(p.seq_id) for p in passes])
        tokens, conf = self.run_batch(passes, feed)
        return [
            PassResult(tokens[i, : p.n_out].copy(), conf[i, : p.n_out].copy())
            for i, p in enumerate(passes)
        ]

    def run_batch(self, passes: list[PassRequest], feed: dict[str, np.ndarray]):
        """(token [B, K], confidence [B, K]) of the packed batch; the cache keeps what the
        writing passes wrote."""
        past_k, past_v = self.kv.gather([p.seq_id for p in passes], [p.start for p in passes])
        tokens, conf, new_k, new_v = self.forward(feed, past_k, past_v)
        for i, p in enumerate(passes):
            if p.write:
                n = len(p.tokens) - p.fork
                self.kv.write(p.seq_id, p.start, new_k[:, i, :, :n], new_v[:, i, :, :n])
        return tokens, conf

    def release(self, seq_id: int) -> None:
        self.kv.release(seq_id)


class TorchEngine(CachedEngine):
    """The PyTorch engine: the GPU engine where TensorRT is absent, and the reference model's
    engine. Its KV cache is read and written in place (`dlm.kv`); the ONNX graph's engines take
    the past as inputs instead (`KVStore`), which gives the same tokens (tested). On CUDA its
    passes run as CUDA graphs (`dlm.graphs`)."""

    def __init__(
        self,
        model: DiffusionLM,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        graphs: bool | None = None,
        denoise_step: Callable | None = None,
    ) -> None:
        """graphs: run the passes that fit `dlm.graphs`' buckets padded, captured as CUDA
        graphs on a GPU and eagerly elsewhere (what the tests compare); default: on CUDA.
        denoise_step: the DenoiseStep implementation (`default_denoise_step`: the fused
        OpenAI Triton kernel on CUDA, PyTorch ops elsewhere)."""
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if dtype is not None:
            self.model = self.model.to(dtype)
        self.config = model.cfg
        self.denoise_step = denoise_step or default_denoise_step(self.device)
        padded = self.device.type == "cuda" if graphs is None else graphs
        weights = next(self.model.parameters()).dtype
        self.kv = SlotCache(self.config, self.device, weights, scratch=padded)
        self.graphs = None
        if padded:
            from dlm.graphs import PassGraphs

            capture = self.device.type == "cuda"
            self.graphs = PassGraphs(self.model, self.kv, self.denoise_step, capture)

    def hold(self, sequences: int, positions: int) -> None:
        """Take the KV memory of `sequences` sequences of `positions` now (`SlotCache.hold`)."""
        self.kv.hold(sequences, positions)

    @torch.inference_mode()
    def run_batch(self, passes, feed):
        slots = self.kv.slots_of([p.seq_id for p in passes])
        self.kv.reserve(max(p.start + len(p.tokens) for p in passes))
        out = None if self.graphs is None else self.graphs.run(slots, feed)
        tokens, conf = out if out is not None else self._eager(slots, feed)
        for p in passes:
            if p.write:
                self.kv.commit(p.seq_id, p.start + len(p.tokens) - p.fork)
        return tokens, conf

    def _eager(self, slots: list[int], feed: dict[str, np.ndarray]):
        x = {k: torch.from_numpy(v).to(self.device) for k, v in feed.items()}
        layout = SlotPass(self.kv, slots, feed["past_len"], feed["n_new"], dense(feed))
        penalties = bool(feed["penalty_len"].any())  # else they change nothing: skip them
        tokens, conf, _, _, _ = run_pass(self.model, x, self.denoise_step, penalties, kv=layout)
        return tokens.cpu().numpy(), conf.float().cpu().numpy()


def default_denoise_step(device: torch.device) -> Callable:
    """The DenoiseStep a PyTorch engine on `device` runs: on CUDA the fused OpenAI Triton
    kernel (one pass over the logits, no noise tensor; it matched the reference exactly on the
    H200, benchmarks/results/gpu_check_h200.md) where triton imports, else PyTorch ops."""
    if device.type == "cuda":
        try:
            from plugins.denoise_step.triton_kernel import denoise_step_triton

            return denoise_step_triton
        except ImportError:
            pass
    from plugins.denoise_step.reference import denoise_step_torch

    return denoise_step_torch


class HeldEngine:
    """Fault injection for tests: every `step()` is held `seconds` before `engine` runs it.

    A test that needs a request in flight at a given moment (to cancel it, kill a stub under it,
    shut the server down) gets it by construction: a request of n passes then lasts at least
    n x seconds on any machine, however fast. Served with `fill --pass-delay-ms`; never in
    production (the default is 0: no wrapper)."""

    def __init__(self, engine: Engine, seconds: float) -> None:
        self.engine, self.seconds = engine, seconds
        self.config = engine.config

    def step(self, passes: list[PassRequest]) -> list[PassResult]:
        time.sleep(self.seconds)
        return self.engine.step(passes)

    def release(self, seq_id: int) -> None:
        self.engine.release(seq_id)
