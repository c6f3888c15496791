"""The engine graph's I/O contract: input and output names, dtypes and axes (torch-free).

Shared by the exporter (`onnx_export`), the engines that run the graph (`ort_engine`,
`tensorrt_build`) and the build's manifest, so that none of them imports another for it.
"""

from __future__ import annotations

from dlm.config import ModelConfig

# name -> (dtype, axes); axes are config symbols (L, Hkv, D) or dynamic axis names.
KV_AXES = ("L", "batch", "Hkv", "past", "D")
NEW_KV_AXES = ("L", "batch", "Hkv", "block", "D")
INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "input_ids": ("int64", ("batch", "block")),
    "past_k": ("float32", KV_AXES),
    "past_v": ("float32", KV_AXES),
    "past_len": ("int64", ("batch",)),
    "n_new": ("int64", ("batch",)),
    "tail": ("int64", ("batch",)),
    "fork": ("int64", ("batch",)),
    "out_index": ("int64", ("batch", "k")),
    "temperature": ("float32", ("batch",)),
    "seed": ("int64", ("batch",)),
    # the request's penalties (dlm/passes.py): generated tokens, how many count per output
    "penalty_ids": ("int64", ("batch", "history")),
    "penalty_len": ("int64", ("batch", "k")),
    "repetition_penalty": ("float32", ("batch",)),
    "frequency_penalty": ("float32", ("batch",)),
    "presence_penalty": ("float32", ("batch",)),
}
OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "token": ("int64", ("batch", "k")),
    "confidence": ("float32", ("batch", "k")),
    "new_k": ("float32", NEW_KV_AXES),
    "new_v": ("float32", NEW_KV_AXES),
}


def static_axes(cfg: ModelConfig) -> dict[str, int]:
    """Sizes of the config-fixed axes of the KV tensors."""
    return {"L": cfg.num_layers, "Hkv": cfg.num_kv_heads, "D": cfg.head_dim}
