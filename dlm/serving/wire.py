"""The denoiser's wire format: a batch of passes as tensors, and their results.

One call of the `denoiser` model carries the next pass of every request in flight (step-level
batching) plus the sequences to release or cancel. Only token ids and confidences cross: logits
stay in the engine. Few tensors, because each one costs: a BLS round trip measured 0.8 ms with
one small tensor each way and 1.6 ms with fourteen (2 cores, Triton 2.51).

Inputs (B passes, T = longest pass, N control entries; any may be 0):
  header INT64 [B, 8]: per pass (seq_id, start, n_tokens, tail, write, n_out, seed, fork);
  tokens INT64 [B, T]: the pass's tokens, right-padded with 0;
  temperature FP32 [B];
  control INT64 [N, 2]: (RELEASE, seq_id): the sequence finished, free its cache;
    (CANCEL, seq_id): its client cancelled (sent by `postprocessing`, which is where Triton
    2.51 shows an ensemble's cancellation: it reaches only the steps scheduled after it).
Outputs (K = largest n_out): out_tokens INT64 [B, K]; confidence FP32 [B, K] (row i valid up to
  n_out[i]); cancelled INT64 [M]: the sequences of this call that were cancelled (the scheduler
  that owns them drops them before their next pass).
"""

from __future__ import annotations

import numpy as np

from dlm.engine import PassRequest, PassResult

HEADER = ("seq_id", "start", "n_tokens", "tail", "write", "n_out", "seed", "fork")
RELEASE, CANCEL = 0, 1
INPUTS = ("header", "tokens", "temperature", "control")
OUTPUTS = ("out_tokens", "confidence", "cancelled")


def pack_passes(
    passes: list[PassRequest], release: list[int] = (), cancel: list[int] = ()
) -> dict[str, np.ndarray]:
    """The denoiser's input tensors: a batch of passes, sequences to release and to cancel."""
    b = len(passes)
    t = max((len(p.tokens) for p in passes), default=0)
    tokens = np.zeros((b, t), np.int64)
    header = np.zeros((b, len(HEADER)), np.int64)
    for i, p in enumerate(passes):
        tokens[i, : len(p.tokens)] = p.tokens
        header[i] = (p.seq_id, p.start, len(p.tokens), p.tail, p.write, p.n_out, p.seed, p.fork)
    control = [(RELEASE, s) for s in release] + [(CANCEL, s) for s in cancel]
    return {
        "header": header,
        "tokens": tokens,
        "temperature": np.array([p.temperature for p in passes], np.float32).reshape(b),
        "control": np.array(control, np.int64).reshape(-1, 2),
    }


def unpack_passes(arrays: dict[str, np.ndarray]) -> tuple[list[PassRequest], list[int], list[int]]:
    """(passes, release, cancel) of one denoiser call (the inverse of `pack_passes`)."""
    header, tokens, temperature = arrays["header"], arrays["tokens"], arrays["temperature"]
    b = header.shape[0]
    if header.shape[1:] != (len(HEADER),) or tokens.shape[0] != b or temperature.shape != (b,):
        raise ValueError(
            f"denoiser inputs: header {header.shape}, tokens {tokens.shape}, "
            f"temperature {temperature.shape}: expected [B, {len(HEADER)}], "
            "[B, T] and [B]"
        )
    passes = []
    for i in range(b):
        seq_id, start, n, tail, write, n_out, seed, fork = (int(x) for x in header[i])
        if not 0 < n <= tokens.shape[1]:
            raise ValueError(
                f"denoiser input header[{i}].n_tokens={n}: must be in "
                f"[1, {tokens.shape[1]}] (the tokens width)"
            )
        passes.append(
            PassRequest(
                seq_id,
                start,
                [int(x) for x in tokens[i, :n]],
                tail,
                bool(write),
                n_out,
                float(temperature[i]),
                seed,
                fork,
            )
        )
    control = arrays.get("control", np.zeros((0, 2), np.int64)).reshape(-1, 2)
    release = [int(s) for op, s in control if op == RELEASE]
    cancel = [int(s) for op, s in control if op == CANCEL]
    return passes, release, cancel


def pack_results(results: list[PassResult], cancelled: list[int] = ()) -> dict[str, np.ndarray]:
    """The denoiser's output tensors, rows padded to the largest n_out."""
    k = max((len(r.tokens) for r in results), default=0)
    tokens = np.zeros((len(results), k), np.int64)
    conf = np.zeros((len(results), k), np.float32)
    for i, r in enumerate(results):
        tokens[i, : len(r.tokens)] = r.tokens
        conf[i, : len(r.confidence)] = r.confidence
    return {
        "out_tokens": tokens,
        "confidence": conf,
        "cancelled": np.array(list(cancelled), np.int64).reshape(-1),
    }


def unpack_results(arrays: dict[str, np.ndarray], passes: list[PassRequest]) -> list[PassResult]:
    """Per-pass results, each cut to its pass's n_out."""
    tokens, conf = arrays["out_tokens"], arrays["confidence"]
    if tokens.shape[0] != len(passes):
        raise ValueError(f"denoiser returned {tokens.shape[0]} rows for {len(passes)} passes")
    return [
        PassResult(tokens[i, : p.n_out].astype(np.int64), conf[i, : p.n_out].astype(np.float32))
        for i, p in enumerate(passes)
    ]
