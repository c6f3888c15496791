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

from dlm.config import ModelConfig, YarnScaling
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


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file or tensor."""


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


def detect_family(hf: dict) -> str:
    kind = str(hf.get("model_type", "")).lower()
    if kind.startswith("llada"):
        return "llada"
    if kind.startswith("dream"):
        return "dream"
    return "nld"


def config_from_hf(hf: dict) -> ModelConfig:
    """Our ModelConfig from a checkpoint's config.json (our own `dlm` block wins if present)."""
    if "dlm" in hf:
        return ModelConfig.from_dict(hf["dlm"])
    family = detect_family(hf)
    try:
        if family == "llada":
            heads = hf["n_heads"]
            return ModelConfig(
                family="llada",
                vocab_size=hf.get("embedding_size", hf["vocab_size"]),
                hidden_size=hf["d_model"],
                num_layers=hf["n_layers"],
                num_heads=heads,
                num_kv_heads=hf.get("n_kv_heads") or heads,
                head_dim=hf["d_model"] // heads,
                intermediate_size=hf["mlp_hidden_size"],
                rope_theta=hf.get("rope_theta", 5e5),
                rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
                attention="bidirectional",
                max_position=hf.get("max_sequence_length", 4096),
                mask_token_id=hf.get("mask_token_id", 126336),
                eos_token_id=hf.get("eos_token_id", 126081),
                bos_token_id=hf.get("bos_token_id", 126080),
                pad_token_id=hf.get("pad_token_id", 126081),
            ).validate()
        heads = hf["num_attention_heads"]
        yarn = None
        rs = hf.get("rope_scaling") or {}
        if rs.get("rope_type", rs.get("type")) == "yarn":
            yarn = YarnScaling(
                factor=rs["factor"],
                original_max_position=rs["original_max_position_embeddings"],
                beta_fast=rs.get("beta_fast", 32.0),
                beta_slow=rs.get("beta_slow", 1.0),
            )
        common = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads", heads),
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            intermediate_size=hf["intermediate_size"],
            rope_theta=hf.get("rope_theta", 1e4),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            yarn=yarn,
            max_position=hf.get("max_position_embeddings", 4096),
            mask_token_id=hf["mask_token_id"],
            eos_token_id=hf["eos_token_id"],
            bos_token_id=hf.get("bos_token_id", hf["eos_token_id"]),
            pad_token_id=hf.get("pad_token_id") or hf["eos_token_id"],
        )
    except KeyError as e:
        raise CheckpointError(f"config.json: missing key {e.args[0]!r} for a {family} model") from e
    if family == "dream":
        return ModelConfig(
            family="dream", qkv_bias=True, attention="bidirectional", logits_shift=True, **common
        ).validate()
    return ModelConfig(
        family="nld",
        block_length=hf.get("block_size", 32),
        query_scale_beta=(rs.get("llama_4_scaling_beta", 0.0) or 0.0),
        **common,
    ).validate()


def config_to_hf(cfg: ModelConfig) -> dict:
    """config.json in the family's own layout (plus our `dlm` block for an exact round trip)."""
    if cfg.family == "llada":
        hf = {
            "model_type": "llada",
            "d_model": cfg.hidden_size,
            "n_layers": cfg.num_layers,
            "n_heads": cfg.num_heads,
            "n_kv_heads": cfg.num_kv_heads,
            "mlp_hidden_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size,
            "embedding_size": cfg.vocab_size,
            "rope_theta": cfg.rope_theta,
            "max_sequence_length": cfg.max_position,
            "mask_token_id": cfg.mask_token_id,
            "eos_token_id": cfg.eos_token_id,
            "bos_token_id": cfg.bos_token_id,
            "pad_token_id": cfg.pad_token_id,
            "rms_norm_eps": cfg.rms_norm_eps,
        }
    else:
        hf = {
            "model_type": "Dream" if cfg.family == "dream" else "nemotron_labs_diffusion",
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "intermediate_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size,
            "rope_theta": cfg.rope_theta,
            "rms_norm_eps": cfg.rms_norm_eps,
            "max_position_embeddings": cfg.max_position,
            "mask_token_id": cfg.mask_token_id,
            "eos_token_id": cfg.eos_token_id,
            "bos_token_id": cfg.bos_token_id,
            "pad_token_id": cfg.pad_token_id,
            "block_size": cfg.block_length,
        }
        if cfg.yarn is not None:
            hf["rope_scaling"] = {
                "rope_type": "yarn",
                "factor": cfg.yarn.factor,
                "original_max_position_embeddings": cfg.yarn.original_max_position,
                "beta_fast": cfg.yarn.beta_fast,
                "beta_slow": cfg.yarn.beta_slow,
                "llama_4_scaling_beta": cfg.query_scale_beta,
            }
    hf["dlm"] = cfg.to_dict()
    return hf


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
