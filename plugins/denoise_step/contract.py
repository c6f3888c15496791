"""The DenoiseStep contract, named once: shapes, dtypes, the noise hash, and input checks.

Every implementation (NumPy spec, PyTorch, ONNX, OpenAI Triton, TensorRT plugin) follows this:

inputs
    logits       [B, T, V]  float32, float16 or bfloat16 (V >= 1)
    temperature  [B]        float32, >= 0
    seed         [B]        int64, values in [0, 2**32)
outputs
    token        [B, T]     int64
    confidence   [B, T]     float32

temperature == 0 for a row: token = argmax_v logits (first index on ties).
temperature > 0: Gumbel-max sampling with float64 noise drawn from a counter-based hash, so every
implementation draws identical noise without RNG state (float64 because low-precision Gumbel noise
hurts generation quality: LLaDA, Nie et al. 2025):

    key[b, t]  = hash32((seed[b] + t) mod 2**32)
    h[b, t, v] = hash32(key[b, t] xor v)
    u = (h + 0.5) / 2**32                      (float64, strictly inside (0, 1))
    g = -log(-log(u))                          (float64)
    token = argmax_v(float64(logits) / float64(temperature[b]) + g)   (first index on ties)

confidence = softmax(float32(logits[b, t, :]))[token]: the untempered probability of the chosen
token, computed with the row maximum subtracted, so it is never NaN for finite logits.

hash32 is "lowbias32" (Chris Wellons' hash-prospector), in uint32 arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Plugin identity, shared by the ONNX custom node, the graph surgery and the TensorRT plugin.
OP_DOMAIN = "dlm"
OP_NAME = "DenoiseStep"
OP_VERSION = "1"
OP_ID = f"{OP_DOMAIN}::{OP_NAME}"

INPUT_NAMES = ("logits", "temperature", "seed")
OUTPUT_NAMES = ("token", "confidence")

# lowbias32 constants and the 32-bit mask.
MASK32 = 0xFFFFFFFF
HASH_MUL1 = 0x7FEB352D
HASH_MUL2 = 0x846CA68B
TWO_POW_32 = 4294967296.0

LOGITS_DTYPES = ("float32", "float16", "bfloat16")
TEMPERATURE_DTYPE = "float32"
SEED_DTYPE = "int64"
TOKEN_DTYPE = "int64"
CONFIDENCE_DTYPE = "float32"
SEED_LIMIT = 2**32


@dataclass(frozen=True)
class OutputSpec:
    """Shape and dtype of one output; shape entries are ints or the symbols 'B', 'T'."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


def output_specs(logits_shape: tuple, logits_dtype: str) -> tuple[OutputSpec, OutputSpec]:
    """Output shapes and dtypes for given logits shape and dtype (entries may be symbolic).

    The same decision the TensorRT shape function and the ONNX node's type inference make: both
    outputs are [B, T]; token int64, confidence float32 whatever the logits dtype.
    """
    if len(logits_shape) != 3:
        raise ValueError(f"logits: rank must be 3 ([B, T, V]), got shape {tuple(logits_shape)}")
    if logits_dtype not in LOGITS_DTYPES:
        raise ValueError(f"logits: dtype must be one of {LOGITS_DTYPES}, got {logits_dtype}")
    bt = (logits_shape[0], logits_shape[1])
    return (OutputSpec("token", bt, TOKEN_DTYPE), OutputSpec("confidence", bt, CONFIDENCE_DTYPE))


def check_shapes(logits_shape: tuple, temperature_shape: tuple, seed_shape: tuple) -> None:
    """Raise ValueError naming the field unless logits [B, T, V>=1], temperature [B], seed [B]."""
    if len(logits_shape) != 3:
        raise ValueError(f"logits: rank must be 3 ([B, T, V]), got shape {tuple(logits_shape)}")
    b, _, v = logits_shape
    if isinstance(v, int) and v < 1:
        raise ValueError(f"logits: vocabulary size V must be >= 1, got {v}")
    for name, shape in (("temperature", temperature_shape), ("seed", seed_shape)):
        if tuple(shape) != (b,):
            raise ValueError(f"{name}: shape must be [B] = [{b}], got {list(shape)}")


def check_dtypes(logits_dtype: str, temperature_dtype: str, seed_dtype: str) -> None:
    """Raise ValueError naming the field unless the dtypes are those of the contract."""
    if logits_dtype not in LOGITS_DTYPES:
        raise ValueError(f"logits: dtype must be one of {LOGITS_DTYPES}, got {logits_dtype}")
    if temperature_dtype != TEMPERATURE_DTYPE:
        raise ValueError(f"temperature: dtype must be {TEMPERATURE_DTYPE}, got {temperature_dtype}")
    if seed_dtype != SEED_DTYPE:
        raise ValueError(f"seed: dtype must be {SEED_DTYPE}, got {seed_dtype}")


def check_values(temperature: np.ndarray, seed: np.ndarray) -> None:
    """Raise ValueError naming the field unless temperature >= 0 (finite) and 0 <= seed < 2**32.

    Value checks read the data, so the device implementations leave them to their callers
    (request validation); the NumPy spec and the launchers' `check=True` paths run them.
    """
    t = np.asarray(temperature)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"temperature: must be finite and >= 0, got {t.tolist()}")
    s = np.asarray(seed)
    if np.any(s < 0) or np.any(s >= SEED_LIMIT):
        raise ValueError(f"seed: must lie in [0, 2**32), got {s.tolist()}")


def hash32_np(x: np.ndarray) -> np.ndarray:
    """lowbias32 of each element (values in [0, 2**32)), as uint64 holding 32-bit results."""
    x = np.asarray(x).astype(np.uint64) & np.uint64(MASK32)
    m = np.uint64(MASK32)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(HASH_MUL1)) & m  # < 2**64: no wrap in uint64
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(HASH_MUL2)) & m
    x ^= x >> np.uint64(16)
    return x
