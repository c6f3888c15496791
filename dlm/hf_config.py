"""Checkpoint configs: config.json in each family's own layout <-> `ModelConfig` (torch-free, so
that the front door, the fill tool and the launcher read a model folder without torch).

`config_from_hf` / `config_to_hf` for the three `DiffusionLM` families (`dlm.checkpoint` loads
their weights); DiffusionGemma's config is `dlm.gemma.config.GemmaConfig`.
"""

from __future__ import annotations

from dlm.config import ModelConfig, YarnScaling


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file or tensor."""


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
