"""DenoiseStep references: the NumPy spec (written for clarity) and the PyTorch implementation.

Contract: see `contract.py` (logits [B, T, V] -> token [B, T] int64, confidence [B, T] float32).

`denoise_step_numpy` is the spec: loops-free but plain, uint64 arithmetic for the hash, float64
for the softmax; it checks shapes, dtypes and values. NumPy has no bfloat16: give bf16 logits as
float32 (the conversion is exact).

`denoise_step_torch` is what engines run and what exporters trace. It is written only with ops
that the torch.onnx dynamo exporter turns into standard ONNX ops: the hash uses int64 arithmetic
(no uint32 tensors, no Python loops over data), multiplications are split so that no product
exceeds 2**49, and under export the right shifts become exact float64 floor divisions (the
exporter lowers int64 `>>` through uint64 BitShift and `//` through Mod/Where corrections, both
several passes more). Noise is drawn only for the rows with temperature > 0: they are gathered
by a data-dependent index (NonZero/Gather/ScatterND in ONNX), so a greedy batch computes no hash
(zero rows) and a mixed batch pays only for its sampling rows; in eager mode a batch with no
sampling row skips that code altogether. (torch.cond, exported as an ONNX If, did the same for
all-greedy batches only, and tripled export time.) Values (temperature >= 0, seed range) are
not checked here: that would read the data (a device sync); the request validator and
`contract.check_values` do it.
"""

from __future__ import annotations

import numpy as np
import torch

from plugins.denoise_step.contract import (
    HASH_MUL1,
    HASH_MUL2,
    MASK32,
    TWO_POW_32,
    check_dtypes,
    check_shapes,
    check_values,
    hash32_np,
)

_TORCH_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.float64: "float64",
}


# ----------------------------------------------------------------------------- NumPy spec


def gumbel_noise_numpy(seed: np.ndarray, t_len: int, v_len: int) -> np.ndarray:
    """g[b, t, v] = -log(-log(u)) with u from the counter hash; float64 [B, T, V]."""
    seed = np.asarray(seed, dtype=np.uint64)
    t = np.arange(t_len, dtype=np.uint64)
    key = hash32_np((seed[:, None] + t[None, :]) & np.uint64(MASK32))  # [B, T]
    v = np.arange(v_len, dtype=np.uint64)
    h = hash32_np(key[:, :, None] ^ v[None, None, :])  # [B, T, V]
    u = (h.astype(np.float64) + 0.5) / TWO_POW_32
    return -np.log(-np.log(u))


def denoise_step_numpy(
    logits: np.ndarray, temperature: np.ndarray, seed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The spec. logits float32/float16 [B, T, V]; returns (token int64, confidence float32)."""
    logits, temperature, seed = np.asarray(logits), np.asarray(temperature), np.asarray(seed)
    check_shapes(logits.shape, temperature.shape, seed.shape)
    check_dtypes(logits.dtype.name, temperature.dtype.name, seed.dtype.name)
    check_values(temperature, seed)
    b_len, t_len, v_len = logits.shape

    x = logits.astype(np.float32)
    token = np.argmax(x, axis=-1).astype(np.int64)  # np.argmax: first index on ties
    sample = temperature > 0
    if sample.any():
        g = gumbel_noise_numpy(seed, t_len, v_len)
        temp = np.where(sample, temperature, 1).astype(np.float64)[:, None, None]
        sampled = np.argmax(x.astype(np.float64) / temp + g, axis=-1)
        token = np.where(sample[:, None], sampled, token).astype(np.int64)

    # Untempered softmax of the float32 logits at the chosen token, max-subtracted; float64 sums.
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    conf = np.take_along_axis(e, token[..., None], axis=-1)[..., 0] / e.sum(axis=-1)
    return token, conf.astype(np.float32)


# ----------------------------------------------------------------------------- PyTorch


def _tracing() -> bool:
    """True while an exporter or compiler traces us (no data-dependent Python control flow)."""
    is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or is_exporting())


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 values in [0, 2**32) by k bits."""
    if _tracing():
        # Exact: x < 2**32 < 2**53 and the scale is a power of two; exports as Cast/Mul/Floor/Cast.
        return torch.floor(x.to(torch.float64) * (2.0**-k)).to(torch.int64)
    return x >> k


def _mul32_(x: torch.Tensor, c: int) -> torch.Tensor:
    """x = (x * c) mod 2**32, in place, for x in [0, 2**32) without int64 overflow: c split in
    16-bit halves, x * c = x * c_lo + ((x * c_hi) mod 2**16) * 2**16 (mod 2**32); every
    intermediate < 2**49. In place because each op on [B, T, V] int64 is a full memory pass."""
    c_hi, c_lo = c >> 16, c & 0xFFFF
    hi = (x * c_hi).bitwise_and_(0xFFFF).mul_(65536)
    return x.mul_(c_lo).add_(hi).bitwise_and_(MASK32)


def hash32_torch(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2**32); x itself is left unchanged."""
    x = x ^ _shr(x, 16)  # a new tensor: the in-place steps below never touch the caller's
    x = _mul32_(x, HASH_MUL1)
    x ^= _shr(x, 15)
    x = _mul32_(x, HASH_MUL2)
    x ^= _shr(x, 16)
    return x


def gumbel_noise_torch(seed: torch.Tensor, t_len: int, v_len: int) -> torch.Tensor:
    """Same noise as `gumbel_noise_numpy`: float64 [B, T, V] on seed's device."""
    t = torch.arange(t_len, dtype=torch.int64, device=seed.device)
    key = hash32_torch((seed[:, None] + t[None, :]) & MASK32)  # [B, T]
    v = torch.arange(v_len, dtype=torch.int64, device=seed.device)
    h = hash32_torch(key[:, :, None] ^ v[None, None, :])  # [B, T, V]
    u = h.to(torch.float64).add_(0.5).mul_(1.0 / TWO_POW_32)  # power-of-two scale: exact
    return u.log_().neg_().log_().neg_()  # -log(-log(u))


def _sample_rows(
    x: torch.Tensor, temperature: torch.Tensor, seed: torch.Tensor, token: torch.Tensor
) -> torch.Tensor:
    """token with the rows of temperature > 0 replaced by Gumbel-max samples; int64 [B, T].

    Noise is drawn only for the sampling rows (a data-dependent row count S, which exports as
    NonZero/Gather/ScatterND), so a greedy batch costs nothing here and a mixed batch pays
    for its sampling rows only.
    """
    rows = torch.nonzero(temperature > 0)[:, 0]  # [S]
    temp = temperature.index_select(0, rows).to(torch.float64)  # [S]
    g = gumbel_noise_torch(seed.index_select(0, rows), x.shape[1], x.shape[2])  # [S, T, V]
    scores = g.add_(x.index_select(0, rows).to(torch.float64) / temp[:, None, None])
    return token.index_put((rows,), torch.argmax(scores, dim=-1))


def _sample_every_row(
    x: torch.Tensor, temperature: torch.Tensor, seed: torch.Tensor, token: torch.Tensor
) -> torch.Tensor:
    """`_sample_rows` with noise drawn for every row and the greedy rows' kept: the same
    tokens, in fixed shapes (a CUDA graph's: no data-dependent row count)."""
    sampling = temperature > 0
    temp = torch.where(sampling, temperature, 1.0).to(torch.float64)
    g = gumbel_noise_torch(seed, x.shape[1], x.shape[2])  # [B, T, V]
    scores = g.add_(x.to(torch.float64) / temp[:, None, None])
    return torch.where(sampling[:, None], torch.argmax(scores, dim=-1), token)


def denoise_step_torch(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    sample: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token int64 [B, T], confidence float32 [B, T]) from logits [B, T, V]; see module doc.

    sample: whether any row has temperature > 0, where the caller knows it without reading
    the device (a CUDA graph's replay must not): True draws noise for every row, False none;
    None: found out here (eagerly, a sync)."""
    check_shapes(tuple(logits.shape), tuple(temperature.shape), tuple(seed.shape))
    check_dtypes(
        *(_TORCH_DTYPE_NAMES.get(t.dtype, str(t.dtype)) for t in (logits, temperature, seed))
    )
    x = logits.to(torch.float32)  # exact for fp16/bf16; argmax is unchanged by it
    m, token = torch.max(x, dim=-1, keepdim=True)  # one pass: row max and its first index
    token = token[..., 0]
    if sample is not None:
        if sample:
            token = _sample_every_row(x, temperature, seed, token)
    elif _tracing() or bool(torch.any(temperature > 0)):
        token = _sample_rows(x, temperature, seed, token)
    chosen = torch.gather(x, -1, token[..., None])
    # exp in place on the one temporary; float32 sums (torch.softmax's CPU kernel was seen
    # 2e-5 off float64 at V=131072, this form 2e-7).
    conf = torch.exp(chosen - m)[..., 0] / (x - m).exp_().sum(dim=-1)
    return token, conf
