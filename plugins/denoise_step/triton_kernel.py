"""DenoiseStep as one OpenAI Triton kernel: softmax confidence and argmax/sampling fused.

Contract: `contract.py`. One program per row (b, t) walks the vocabulary in tiles of BLOCK_V,
reading each logit once and never materialising probabilities:
- softmax statistics online: running max m and sum-exp s, rescaled when the max grows;
- the best score per lane (strictly greater replaces, so each lane keeps its first index), reduced
  at the end to the highest score and, among lanes holding it, the smallest index: the first
  index on ties over the whole row;
- temperature > 0: score = float64(logit) / float64(temperature) + float64 Gumbel noise from the
  counter hash (uint32 arithmetic, which Triton has natively); temperature == 0: score = logit.
  The branch is per row, so greedy rows never compute noise, also in mixed batches.
confidence = exp(logit[token] - m) / s with float32 logits.

float64: Triton lowers float64 `log` to libdevice `__nv_log` (checked by compiling to PTX) and
float64 division to IEEE `div.rn.f64`, so the noise and scores are those of the spec.

The kernel's runtime parameters are ordered (input pointers, int32 scalars, output pointers):
the order TensorRT's ahead-of-time plugin launch uses (`tensorrt_plugin.py`), so the same kernel
serves PyTorch (`denoise_step_triton`) and TensorRT. `launch_config` picks tile and warps; it is
a plain function so that both launchers share, and tests check, the decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from plugins.denoise_step.contract import check_dtypes, check_shapes

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.float64: "float64",
    torch.int32: "int32",
}

MAX_BLOCK_V = 4096  # elements per tile: 16 per thread at 8 warps, loaded as 16-64 B vectors
MIN_BLOCK_V = 128


@dataclass(frozen=True)
class LaunchConfig:
    """One program per row: grid = (rows,); BLOCK_V vocab elements per tile; num_warps."""

    grid: tuple[int]
    block_v: int
    num_warps: int


def launch_config(rows: int, vocab: int, logits_dtype: str = "float32") -> LaunchConfig:
    """Tile and warps for `rows` rows of `vocab` logits (the decision both launchers use).

    A power-of-two tile covering the vocabulary when it is small (one tile, no loop), else
    MAX_BLOCK_V; 16-bit logits take twice the tile so a thread still loads 32 B per tile.
    Warps scale with the tile so each thread holds 16 elements (8 to 16 warps keep enough loads
    in flight when few rows leave most multiprocessors idle).
    """
    if rows < 0:
        raise ValueError(f"rows: must be >= 0, got {rows}")
    if vocab < 1:
        raise ValueError(f"vocab: must be >= 1, got {vocab}")
    if logits_dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"logits_dtype: must be float32, float16 or bfloat16, got {logits_dtype}")
    cap = MAX_BLOCK_V * (2 if logits_dtype != "float32" else 1)
    block_v = max(MIN_BLOCK_V, min(cap, triton.next_power_of_2(vocab)))
    num_warps = max(1, min(16, block_v // (32 * 16)))
    return LaunchConfig(grid=(rows,), block_v=block_v, num_warps=num_warps)


@triton.jit
def _hash32(x):
    """lowbias32 on uint32 values (multiplication wraps mod 2**32, as the spec wants)."""
    x ^= x >> 16
    x = x * 0x7FEB352D
    x ^= x >> 15
    x = x * 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def denoise_step_kernel(
    logits_ptr,  # [rows, V] float32 / float16 / bfloat16, contiguous
    temperature_ptr,  # [B] float32
    seed_ptr,  # [B] int64, values in [0, 2**32)
    T,  # int32: positions per batch row (rows = B * T)
    V,  # int32: vocabulary size
    token_ptr,  # [rows] int64 out
    conf_ptr,  # [rows] float32 out
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // T
    t = row - b * T
    temp = tl.load(temperature_ptr + b)
    row_ptr = logits_ptr + row.to(tl.int64) * V
    offs = tl.arange(0, BLOCK_V)
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.full((), 0.0, tl.float32)
    tok = tl.full((), 0, tl.int32)
    x_tok = tl.full((), 0.0, tl.float32)
    if temp > 0:
        seed = tl.load(seed_ptr + b).to(tl.uint32)
        key = _hash32(seed + t.to(tl.uint32))  # uint32 add wraps: mod 2**32
        temp64 = temp.to(tl.float64)
        best = tl.full((BLOCK_V,), float("-inf"), tl.float64)
        best_idx = tl.zeros((BLOCK_V,), tl.int32)
        best_x = tl.zeros((BLOCK_V,), tl.float32)
        for start in range(0, V, BLOCK_V):
            idx = start + offs
            mask = idx < V
            x = tl.load(row_ptr + idx, mask=mask, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
            h = _hash32(key ^ idx.to(tl.uint32))
            u = (h.to(tl.float64) + 0.5) * (1.0 / 4294967296.0)  # power of two: exact
            g = -tl.log(-tl.log(u))
            score = tl.where(mask, x.to(tl.float64) / temp64 + g, float("-inf"))
            better = score > best
            best = tl.where(better, score, best)
            best_idx = tl.where(better, idx, best_idx)
            best_x = tl.where(better, x, best_x)
        top = tl.max(best, axis=0)
        tok = tl.min(tl.where(best == top, best_idx, V), axis=0)
        x_tok = tl.max(tl.where((best == top) & (best_idx == tok), best_x, float("-inf")), axis=0)
    else:
        best_x = tl.full((BLOCK_V,), float("-inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_V,), tl.int32)
        for start in range(0, V, BLOCK_V):
            idx = start + offs
            mask = idx < V
            x = tl.load(row_ptr + idx, mask=mask, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
            better = x > best_x
            best_x = tl.where(better, x, best_x)
            best_idx = tl.where(better, idx, best_idx)
        x_tok = tl.max(best_x, axis=0)
        tok = tl.min(tl.where(best_x == x_tok, best_idx, V), axis=0)
    tl.store(token_ptr + row, tok.to(tl.int64))
    tl.store(conf_ptr + row, tl.exp(x_tok - m) / s)


def denoise_step_triton(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    config: LaunchConfig | None = None,
    sample: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token int64 [B, T], confidence float32 [B, T]) from logits [B, T, V] with the kernel.

    Tensors on a CUDA device, or on the CPU under TRITON_INTERPRET=1. Shapes and dtypes are
    checked; values (temperature >= 0, seed range) are the caller's, as in `denoise_step_torch`.
    `sample` (whether a row samples, `denoise_step_torch`'s hint) changes nothing: the kernel
    branches per row on the device, reads nothing back and has fixed shapes (a CUDA graph
    captures it as it is).
    """
    check_shapes(tuple(logits.shape), tuple(temperature.shape), tuple(seed.shape))
    check_dtypes(*(_DTYPE_NAMES.get(t.dtype, str(t.dtype)) for t in (logits, temperature, seed)))
    b_len, t_len, v_len = logits.shape
    if v_len >= 2**31 or b_len * t_len >= 2**31:
        raise ValueError(f"logits: V and B*T must be < 2**31, got shape {list(logits.shape)}")
    token = torch.empty((b_len, t_len), dtype=torch.int64, device=logits.device)
    conf = torch.empty((b_len, t_len), dtype=torch.float32, device=logits.device)
    rows = b_len * t_len
    if rows == 0:
        return token, conf
    cfg = config or launch_config(rows, v_len, _DTYPE_NAMES[logits.dtype])
    denoise_step_kernel[cfg.grid](
        logits.contiguous(),
        temperature.contiguous(),
        seed.contiguous(),
        t_len,
        v_len,
        token,
        conf,
        BLOCK_V=cfg.block_v,
        num_warps=cfg.num_warps,
    )
    return token, conf
