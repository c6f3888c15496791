"""Checkpoints in Hugging Face layout: config.json + safetensors (one file, or shards + index).

Three families, each with its own config keys and weight names, mapped onto `DiffusionLM`:
- Nemotron-Labs Diffusion (`encoder.*`, `diffusion_head`): our own names, and the default model's;
- LLaDA (`model.transformer.wte`, `blocks.N.{attn_norm,q_proj,...,ff_out}`, `ln_f`, `ff_out`);
- Dream (Qwen2 names: `model.layers.N.self_attn.q_proj` with biases, `model.norm`, `lm_head`).
Errors name the missing, unexpected or mis-shaped tensor.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dlm.hf_config import CheckpointError, config_from_hf, config_to_hf
from dlm.model import DiffusionLM, rope_frequencies

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# (their name pattern, our name) per family; `{n}` is a layer index.
_LAYER = "encoder.layers.{n}."
NAME_MAPS: dict[str, list[tuple[str, str]]] = {
    "nld": [],  # identity
    "llada": [
        ("model.transformer.wte.weight", "encoder.embed_tokens.weight"),
        ("model.transformer.ln_f.weight", "encoder.norm.weight"),
        ("model.transformer.ff_out.weight", "diffusion_head.weight"),
        ("model.transformer.blocks.{n}.attn_norm.weight", _LAYER + "input_layernorm.weight"),
        ("model.transformer.blocks.{n}.ff_norm.weight", _LAYER + "post_attention_layernorm.weight"),
        ("model.transformer.blocks.{n}.q_proj.weight", _LAYER + "self_attn.q_proj.weight"),
        ("model.transformer.blocks.{n}.k_proj.weight", _LAYER + "self_attn.k_proj.weight"),
        ("model.transformer.blocks.{n}.v_proj.weight", _LAYER + "self_attn.v_proj.weight"),
        ("model.transformer.blocks.{n}.attn_out.weight", _LAYER + "self_attn.o_proj.weight"),
        ("model.transformer.blocks.{n}.ff_proj.weight", _LAYER + "mlp.gate_proj.weight"),
        ("model.transformer.blocks.{n}.up_proj.weight", _LAYER + "mlp.up_proj.weight"),
        ("model.transformer.blocks.{n}.ff_out.weight", _LAYER + "mlp.down_proj.weight"),
    ],
    "dream": [
        ("model.embed_tokens.weight", "encoder.embed_tokens.weight"),
        ("model.norm.weight", "encoder.norm.weight"),
        ("lm_head.weight", "diffusion_head.weight"),
        ("model.layers.{n}.{rest}", _LAYER + "{rest}"),
    ],
}


def _compile(pattern: str) -> re.Pattern:
    rx = re.escape(pattern).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{rest\}", r"(?P<rest>.+)")
    return re.compile(rx + "$")


def to_ours(family: str, name: str) -> str | None:
    """Our parameter name for a checkpoint tensor name, or None if the family has no such name."""
    if family == "nld":
        return name
    for theirs, ours in NAME_MAPS[family]:
        m = _compile(theirs).match(name)
        if m:
            return ours.format(**m.groupdict())
    return None


def to_theirs(family: str, name: str) -> str:
    """The checkpoint name of one of our parameters (the inverse of `to_ours`)."""
    if family == "nld":
        return name
    for theirs, ours in NAME_MAPS[family]:
        m = _compile(ours).match(name)
        if m:
            return theirs.format(**m.groupdict())
    raise KeyError(f"parameter {name!r} has no {family} checkpoint name")


# ---- config.json ------------------------------------------------------------------------------


# ---- tensors ----------------------------------------------------------------------------------


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> the safetensors file holding it."""
    if (folder / INDEX).exists():
        weight_map = json.loads((folder / INDEX).read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{folder / INDEX}: no 'weight_map' object")
        files = {name: folder / f for name, f in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.exists():
                raise CheckpointError(f"{f}: shard listed in {INDEX} is missing")
        return files
    if (folder / SINGLE).exists():
        with safe_open(folder / SINGLE, "pt") as f:
            return {name: folder / SINGLE for name in f.keys()}
    raise CheckpointError(f"{folder}: no {SINGLE} or {INDEX}")


def load(folder: str | Path, dtype: torch.dtype = torch.float32) -> DiffusionLM:
    """Load a checkpoint folder into a DiffusionLM (eval mode)."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder}: no config.json (is --model a checkpoint folder?)")
    cfg = config_from_hf(json.loads((folder / "config.json").read_text()))
    cfg.dropout = 0.0
    with torch.device("meta"):
        model = DiffusionLM(cfg)
    expected = {n: p for n, p in model.named_parameters()}
    state: dict[str, torch.Tensor] = {}
    unexpected = []
    files = _tensor_files(folder)
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    for f, names in by_file.items():
        with safe_open(f, "pt") as st:
            for name in names:
                ours = to_ours(cfg.family, name)
                if ours is None or ours not in expected:
                    unexpected.append(name)
                    continue
                t = st.get_tensor(name)
                if tuple(t.shape) != tuple(expected[ours].shape):
                    raise CheckpointError(
                        f"{f.name}: tensor {name!r} has shape {tuple(t.shape)}, expected "
                        f"{tuple(expected[ours].shape)} for this config"
                    )
                state[ours] = t.to(dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        names = [to_theirs(cfg.family, n) for n in missing]
        raise CheckpointError(
            f"{folder}: missing tensors {names[:5]}"
            + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        )
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensors {sorted(unexpected)[:5]}")
    model.load_state_dict(state, assign=True)
    model.inv_freq = rope_frequencies(cfg)[0]  # buffers are not in checkpoints
    return model.eval()


def save(
    model: DiffusionLM,
    folder: str | Path,
    max_shard_bytes: int | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write the model in its family's layout; shards with an index past max_shard_bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    (folder / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
    tensors = {
        to_theirs(cfg.family, n): (p.detach().to(dtype) if dtype else p.detach()).contiguous().cpu()
        for n, p in model.named_parameters()
    }
    if max_shard_bytes is None:
        save_file(tensors, folder / SINGLE, metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    )
