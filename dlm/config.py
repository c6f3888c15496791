"""Model configuration: one typed dataclass, one `validate()`, and the table of named presets.

Every family constant (mask id, eos, block size, attention pattern) is named once, here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from dlm.schema import MODES

Family = Literal["nld", "llada", "dream"]
Attention = Literal["block_causal", "bidirectional"]


@dataclass
class YarnScaling:
    """YaRN RoPE scaling (Peng et al. 2023, "YaRN: Efficient Context Window Extension")."""

    factor: float = 1.0
    original_max_position: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0


@dataclass
class ModelConfig:
    family: Family = "nld"
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    yarn: YarnScaling | None = None
    # Llama-4 style attention temperature on queries at long positions (Nemotron-Labs Diffusion):
    # q *= 1 + beta * log(1 + floor(pos / max_position)); 0 disables it.
    query_scale_beta: float = 0.0
    query_scale_max_position: int = 8192
    qkv_bias: bool = False
    attention: Attention = "block_causal"
    # Dream: logits at position i predict token i + 1, also for masked positions.
    logits_shift: bool = False
    max_position: int = 2048
    mask_token_id: int = 3
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    block_length: int = 32
    dropout: float = 0.0

    def validate(self) -> ModelConfig:
        """Check every field; raise ValueError naming the field, its value and what is allowed."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"config.{name}={getattr(self, name)!r}: must be {allowed}")

        need(self.family in ("nld", "llada", "dream"), "family", "one of nld, llada, dream")
        need(
            self.attention in ("block_causal", "bidirectional"),
            "attention",
            "block_causal or bidirectional",
        )
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "max_position",
            "block_length",
        ):
            need(
                isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                name,
                "a positive integer",
            )
        need(
            self.num_heads % self.num_kv_heads == 0,
            "num_kv_heads",
            f"a divisor of num_heads={self.num_heads}",
        )
        need(self.head_dim % 2 == 0, "head_dim", "even (RoPE rotates pairs)")
        for name in ("mask_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
            need(
                0 <= getattr(self, name) < self.vocab_size,
                name,
                f"a token id in [0, {self.vocab_size})",
            )
        need(self.rope_theta > 0, "rope_theta", "> 0")
        need(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "> 0")
        if self.yarn is not None and self.yarn.factor < 1.0:
            raise ValueError(f"config.yarn.factor={self.yarn.factor}: must be >= 1")
        return self

    penalties: ClassVar[bool] = True  # repetition/frequency/presence (dlm.passes)

    @property
    def uses_kv_cache(self) -> bool:
        """Block-causal models reuse committed K/V; fully bidirectional ones recompute all."""
        return self.attention == "block_causal"

    @property
    def modes(self) -> tuple[str, ...]:
        """The generation modes it serves: fully bidirectional models have no causal passes."""
        return MODES if self.uses_kv_cache else ("diffusion",)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown fields {unknown}; known: {sorted(known)}")
        d = dict(d)
        if d.get("yarn") is not None:
            d["yarn"] = YarnScaling(**d["yarn"])
        return cls(**d).validate()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"dlm": self.to_dict()}, indent=2) + "\n")


def _nld(hidden: int, layers: int, heads: int, kv: int, mlp: int) -> ModelConfig:
    return ModelConfig(
        family="nld",
        vocab_size=131072,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=128,
        intermediate_size=mlp,
        rope_theta=1e6,
        yarn=YarnScaling(factor=16.0, original_max_position=16384),
        query_scale_beta=0.1,
        query_scale_max_position=16384,
        max_position=262144,
        mask_token_id=100,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=11,
        block_length=32,
        rms_norm_eps=1e-5,
    )


# The shipped default model (models/default): Nemotron-Labs Diffusion architecture, small.
_DEFAULT = ModelConfig(
    vocab_size=4096,
    hidden_size=384,
    num_layers=6,
    num_heads=6,
    num_kv_heads=2,
    head_dim=64,
    intermediate_size=1024,
    rope_theta=10000.0,
    max_position=1024,
    block_length=32,
    mask_token_id=3,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

PRESETS: dict[str, ModelConfig] = {
    # Tests: a random model small enough that the whole suite runs in minutes on 2 cores.
    "tiny": ModelConfig(
        vocab_size=64,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        max_position=512,
        mask_token_id=3,
        block_length=8,
    ),
    "default": _DEFAULT,
    # The CPU training recipe's model (`make train` without a GPU): the same architecture at
    # about a third of the default's compute per token, so 80 minutes on 2 cores see several
    # million tokens instead of one.
    "small": dataclasses.replace(
        _DEFAULT, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=768
    ),
    "nemotron-labs-diffusion-3b": _nld(3072, 26, 32, 8, 9216),
    "nemotron-labs-diffusion-8b": _nld(4096, 34, 32, 8, 14336),
    "nemotron-labs-diffusion-14b": _nld(5120, 40, 32, 8, 16384),
    "llada-8b": ModelConfig(
        family="llada",
        vocab_size=126464,
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        head_dim=128,
        intermediate_size=12288,
        rope_theta=500000.0,
        attention="bidirectional",
        max_position=4096,
        mask_token_id=126336,
        bos_token_id=126080,
        eos_token_id=126081,
        pad_token_id=126081,
        block_length=32,
    ),
    "dream-7b": ModelConfig(
        family="dream",
        vocab_size=152064,
        hidden_size=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        intermediate_size=18944,
        rope_theta=1e6,
        qkv_bias=True,
        attention="bidirectional",
        logits_shift=True,
        max_position=32768,
        mask_token_id=151666,
        bos_token_id=151643,
        eos_token_id=151643,
        pad_token_id=151643,
        rms_norm_eps=1e-6,
        block_length=32,
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A copy of a named preset with fields overridden, validated."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: must be one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides).validate()


__all__ = ["ModelConfig", "YarnScaling", "PRESETS", "preset"]
