"""The denoiser's wire format: a batch of passes as tensors, and their results.

One call of the `denoiser` model carries the next pass of every request in flight (step-level
batching) plus the sequences to release. Only token ids and confidences cross: logits stay in
the engine (about 1 ms per MB per hop, see ENVIRONMENT.md).

Inputs (B passes, T = longest pass, R releases, C cancellations; any may be 0):
  seq_id INT64 [B]; start INT64 [B]; tokens INT64 [B, T] (right-padded with 0); n_tokens INT64 [B];
  tail INT64 [B]; write BOOL [B]; n_out INT64 [B]; temperature FP32 [B]; seed INT64 [B];
  release INT64 [R]: sequences finished, their caches to free;
  cancel INT64 [C]: sequences whose clients cancelled (sent by `postprocessing`, which is where
    Triton 2.51 shows an ensemble's cancellation: it reaches only the steps scheduled after it).
Outputs (K = largest n_out): out_tokens INT64 [B, K]; confidence FP32 [B, K] (row i valid up to
  n_out[i]); cancelled INT64 [C']: the sequences of this call that were cancelled (the scheduler
  that owns them drops them before their next pass).
"""

from __future__ import annotations

import numpy as np

from dlm.engine import PassRequest, PassResult

PASS_INPUTS = ("seq_id", "start", "tokens", "n_tokens", "tail", "write", "n_out", "temperature",
               "seed")
INPUTS = PASS_INPUTS + ("release", "cancel")
OUTPUTS = ("out_tokens", "confidence", "cancelled")


def pack_passes(passes: list[PassRequest], release: list[int] = (),
                cancel: list[int] = ()) -> dict[str, np.ndarray]:
    """The denoiser's input tensors: a batch of passes, sequences to release and to cancel."""
    b = len(passes)
    t = max((len(p.tokens) for p in passes), default=0)
    tokens = np.zeros((b, t), np.int64)
    for i, p in enumerate(passes):
        tokens[i, : len(p.tokens)] = p.tokens

    def column(name: str, dtype) -> np.ndarray:
        return np.array([getattr(p, name) for p in passes], dtype).reshape(b)

    return {
        "seq_id": column("seq_id", np.int64),
        "start": column("start", np.int64),
        "tokens": tokens,
        "n_tokens": np.array([len(p.tokens) for p in passes], np.int64).reshape(b),
        "tail": column("tail", np.int64),
        "write": column("write", bool),
        "n_out": column("n_out", np.int64),
        "temperature": column("temperature", np.float32),
        "seed": column("seed", np.int64),
        "release": np.array(list(release), np.int64).reshape(-1),
        "cancel": np.array(list(cancel), np.int64).reshape(-1),
    }


def unpack_passes(arrays: dict[str, np.ndarray]
                  ) -> tuple[list[PassRequest], list[int], list[int]]:
    """(passes, release, cancel) of one denoiser call (the inverse of `pack_passes`)."""
    b = len(arrays["seq_id"])
    for name in PASS_INPUTS:
        if arrays[name].shape[:1] != (b,):
            raise ValueError(f"denoiser input {name!r} has shape {arrays[name].shape}: "
                             f"expected {b} rows like seq_id")
    passes = []
    for i in range(b):
        n = int(arrays["n_tokens"][i])
        if not 0 < n <= arrays["tokens"].shape[1]:
            raise ValueError(f"denoiser input n_tokens[{i}]={n}: must be in "
                             f"[1, {arrays['tokens'].shape[1]}] (the tokens width)")
        passes.append(PassRequest(
            seq_id=int(arrays["seq_id"][i]), start=int(arrays["start"][i]),
            tokens=[int(x) for x in arrays["tokens"][i, :n]], tail=int(arrays["tail"][i]),
            write=bool(arrays["write"][i]), n_out=int(arrays["n_out"][i]),
            temperature=float(arrays["temperature"][i]), seed=int(arrays["seed"][i])))
    release, cancel = ([int(x) for x in arrays.get(k, np.zeros(0, np.int64)).reshape(-1)]
                       for k in ("release", "cancel"))
    return passes, release, cancel


def pack_results(results: list[PassResult], cancelled: list[int] = ()) -> dict[str, np.ndarray]:
    """The denoiser's output tensors, rows padded to the largest n_out."""
    k = max((len(r.tokens) for r in results), default=0)
    tokens = np.zeros((len(results), k), np.int64)
    conf = np.zeros((len(results), k), np.float32)
    for i, r in enumerate(results):
        tokens[i, : len(r.tokens)] = r.tokens
        conf[i, : len(r.confidence)] = r.confidence
    return {"out_tokens": tokens, "confidence": conf,
            "cancelled": np.array(list(cancelled), np.int64).reshape(-1)}


def unpack_results(arrays: dict[str, np.ndarray], passes: list[PassRequest]) -> list[PassResult]:
    """Per-pass results, each cut to its pass's n_out."""
    tokens, conf = arrays["out_tokens"], arrays["confidence"]
    if tokens.shape[0] != len(passes):
        raise ValueError(f"denoiser returned {tokens.shape[0]} rows for {len(passes)} passes")
    return [PassResult(tokens[i, : p.n_out].astype(np.int64), conf[i, : p.n_out].astype(np.float32))
            for i, p in enumerate(passes)]
