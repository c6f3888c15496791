"""DiffusionGemma's text model, as one frozen dataclass parsed from the checkpoint's config.json.

Only what the text model needs is kept; the vision tower is noted (`has_vision`) and otherwise
ignored. Keys are read from `text_config` under the names transformers writes
(`DiffusionGemmaTextConfig.to_dict`); an error names the key, its value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from dlm.gemma import MODEL_TYPE
from dlm.hf_config import CheckpointError

LayerKind = Literal["sliding", "full"]
_KINDS: dict[str, LayerKind] = {"sliding_attention": "sliding", "full_attention": "full"}
# transformers' defaults where config.json may leave a key out (DiffusionGemmaTextConfig).
_DEFAULT_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    "full_attention": {
        "rope_type": "proportional",
        "partial_rotary_factor": 0.25,
        "rope_theta": 1_000_000.0,
    },
}
_DEFAULT_SOFTCAP = 30.0
_DEFAULT_GLOBAL_HEAD_DIM = 512
_REQUIRED = object()


@dataclass(frozen=True)
class AttentionKind:
    """The attention of one kind of layer (all sliding layers share one, all full layers another).

    RoPE rotates the first `rope_fraction * head_dim / 2` pairs of dims (i, i + head_dim / 2) at
    frequencies theta^(-2i / head_dim) / rope_factor and leaves the other pairs unrotated: Gemma 4's
    "proportional" RoPE; fraction 1 and factor 1 is plain RoPE.
    """

    head_dim: int
    num_kv_heads: int
    rope_theta: float
    rope_fraction: float = 1.0
    rope_factor: float = 1.0

    @property
    def rotated_pairs(self) -> int:
        return int(self.rope_fraction * self.head_dim // 2)


@dataclass(frozen=True)
class GemmaConfig:
    """The text model of a DiffusionGemma checkpoint (encoder and decoder share this shape)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int  # the dense MLP and the self-conditioning MLP
    num_heads: int
    layer_kinds: tuple[LayerKind, ...]
    sliding: AttentionKind
    full: AttentionKind
    sliding_window: int  # a sliding layer's query sees itself and the window - 1 keys before it
    num_experts: int
    top_k_experts: int
    moe_intermediate_size: int
    rms_norm_eps: float = 1e-6
    final_logit_softcapping: float | None = _DEFAULT_SOFTCAP  # None: no capping
    canvas_length: int = 256
    # True: encoder and decoder share every weight but each layer's output scale, and the LM head
    # is the embedding; False: nothing is shared (transformers' `tie_word_embeddings`).
    tie_word_embeddings: bool = True
    has_vision: bool = False
    max_position: int = 131_072  # max_position_embeddings
    eos_token_id: int = 1
    pad_token_id: int = 0

    # What the decoding loop asks of a model's config (as of dlm.config.ModelConfig): the
    # canvas is its block, diffusion its only mode (the canvas policy), no logit penalties.
    family: ClassVar[str] = MODEL_TYPE
    modes: ClassVar[tuple[str, ...]] = ("diffusion",)
    penalties: ClassVar[bool] = False
    mask_token_id: ClassVar[None] = None  # a canvas holds tokens, never masks

    @property
    def block_length(self) -> int:
        return self.canvas_length

    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    def attention(self, layer: int) -> AttentionKind:
        return self.sliding if self.layer_kinds[layer] == "sliding" else self.full

    def validate(self) -> GemmaConfig:
        """Check every field; raise ValueError naming the field, its value and what is allowed."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"config.{name}={_value(self, name)!r}: must be {allowed}")

        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_heads",
            "sliding_window",
            "num_experts",
            "top_k_experts",
            "moe_intermediate_size",
            "canvas_length",
            "max_position",
            "sliding.head_dim",
            "sliding.num_kv_heads",
            "full.head_dim",
            "full.num_kv_heads",
        ):
            value = _value(self, name)
            need(isinstance(value, int) and value > 0, name, "a positive integer")
        need(self.num_layers > 0, "layer_kinds", "at least one layer")
        need(set(self.layer_kinds) <= {"sliding", "full"}, "layer_kinds", "sliding or full each")
        need(self.top_k_experts <= self.num_experts, "top_k_experts", f"<= {self.num_experts}")
        for kind in ("sliding", "full"):
            att: AttentionKind = getattr(self, kind)
            need(att.head_dim % 2 == 0, f"{kind}.head_dim", "even (RoPE rotates pairs)")
            need(
                self.num_heads % att.num_kv_heads == 0,
                f"{kind}.num_kv_heads",
                f"a divisor of num_heads={self.num_heads}",
            )
            need(att.rope_theta > 0, f"{kind}.rope_theta", "> 0")
            need(0 < att.rope_fraction <= 1, f"{kind}.rope_fraction", "in (0, 1]")
            need(att.rope_factor > 0, f"{kind}.rope_factor", "> 0")
        cap = self.final_logit_softcapping
        need(cap is None or cap > 0, "final_logit_softcapping", "> 0 or None")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "> 0")
        for name in ("eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            need(isinstance(value, int) and 0 <= value < self.vocab_size, name, "a token id")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GemmaConfig:
        """The inverse of `to_dict` (an engine manifest keeps it as JSON)."""
        d = dict(d, layer_kinds=tuple(d["layer_kinds"]))
        for kind in ("sliding", "full"):
            d[kind] = AttentionKind(**d[kind])
        return cls(**d).validate()

    @classmethod
    def from_hf(cls, hf: dict) -> GemmaConfig:
        """Parse a DiffusionGemma config.json; CheckpointError names the missing or bad key."""
        text = _get(hf, "text_config", dict, "")
        where = "text_config."
        _check(text, "use_bidirectional_attention", (None, "vision"), where)
        _check(text, "hidden_activation", ("gelu_pytorch_tanh",), where)
        _check(text, "attention_bias", (False,), where)
        kinds = _layer_kinds(text)
        heads, kv = _get(text, "num_attention_heads", int), _get(text, "num_key_value_heads", int)
        shapes = _per_kind_shapes(text, kinds, _get(text, "head_dim", int), kv)
        rope = _get(text, "rope_parameters", dict, where, _DEFAULT_ROPE)
        attention = {
            kind: _attention_kind(rope, hf_kind, *shapes[kind]) for hf_kind, kind in _KINDS.items()
        }
        cap = text.get("final_logit_softcapping", _DEFAULT_SOFTCAP)
        if cap is not None and (not isinstance(cap, (int, float)) or isinstance(cap, bool)):
            raise CheckpointError(f"config.json: {where}final_logit_softcapping={cap!r}: a number")
        cfg = cls(
            vocab_size=_get(text, "vocab_size", int),
            hidden_size=_get(text, "hidden_size", int),
            intermediate_size=_get(text, "intermediate_size", int),
            num_heads=heads,
            layer_kinds=kinds,
            sliding=attention["sliding"],
            full=attention["full"],
            sliding_window=_get(text, "sliding_window", int),
            num_experts=_get(text, "num_experts", int),
            top_k_experts=_get(text, "top_k_experts", int),
            moe_intermediate_size=_get(text, "moe_intermediate_size", int),
            rms_norm_eps=float(_get(text, "rms_norm_eps", float, where, 1e-6)),
            final_logit_softcapping=None if cap is None else float(cap),
            canvas_length=_get(hf, "canvas_length", int, "", 256),
            tie_word_embeddings=_get(hf, "tie_word_embeddings", bool, "", True),
            has_vision=hf.get("vision_config") is not None,
            max_position=_get(text, "max_position_embeddings", int, where, 131_072),
            eos_token_id=_eos(text.get("eos_token_id", 1)),
            pad_token_id=_get(text, "pad_token_id", int, where, 0),
        )
        try:
            return cfg.validate()
        except ValueError as e:
            raise CheckpointError(f"config.json: {e}") from e


def _value(cfg: GemmaConfig, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _get(d: dict, key: str, kind: type, where: str = "text_config.", default: Any = _REQUIRED):
    """d[key] checked to be a `kind`; the default when absent or null, else an error."""
    value = d.get(key)
    if value is None:
        if default is _REQUIRED:
            raise CheckpointError(f"config.json: missing key {where}{key}")
        return default
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise CheckpointError(
            f"config.json: {where}{key}={value!r}: must be of type {kind.__name__}"
        )
    return value


def _eos(ids: Any) -> int:
    """The eos id (of a list of them, the first: the others can be sent as stop words)."""
    first = ids[0] if isinstance(ids, list) and ids else ids
    if not isinstance(first, int) or isinstance(first, bool):
        raise CheckpointError(f"config.json: text_config.eos_token_id={ids!r}: a token id")
    return first


def _check(d: dict, key: str, allowed: tuple, where: str) -> None:
    if d.get(key, allowed[0]) not in allowed:
        raise CheckpointError(
            f"config.json: {where}{key}={d[key]!r}: only {', '.join(map(repr, allowed))} supported"
        )


def _layer_kinds(text: dict) -> tuple[LayerKind, ...]:
    types = _get(text, "layer_types", list)
    n = _get(text, "num_hidden_layers", int)
    if len(types) != n:
        raise CheckpointError(
            f"config.json: text_config.layer_types has {len(types)} entries, "
            f"num_hidden_layers={n}"
        )
    for i, t in enumerate(types):
        if t not in _KINDS:
            raise CheckpointError(
                f"config.json: text_config.layer_types[{i}]={t!r}: must be one of {list(_KINDS)}"
            )
    if types[-1] != "full_attention":  # transformers would silently force it
        raise CheckpointError(
            f"config.json: text_config.layer_types[-1]={types[-1]!r}: must be 'full_attention'"
        )
    return tuple(_KINDS[t] for t in types)


def _per_kind_shapes(text: dict, kinds: tuple, head_dim: int, kv_heads: int) -> dict:
    """(head_dim, kv heads) per layer kind, from `per_layer_config` overrides (or the older
    `global_head_dim`/`num_global_key_value_heads` keys, which transformers turns into them)."""
    per_layer: dict[int, dict] = {}
    if "per_layer_config" in text:
        raw = _get(text, "per_layer_config", dict)
        for key, over in raw.items():
            where = f"text_config.per_layer_config[{key!r}]"
            if not str(key).isdigit() or int(key) >= len(kinds) or not isinstance(over, dict):
                raise CheckpointError(f"config.json: {where}: need a layer index -> dict")
            bad = sorted(set(over) - {"head_dim", "num_key_value_heads"})
            if bad:
                raise CheckpointError(f"config.json: {where}: unsupported keys {bad}")
            per_layer[int(key)] = over
    else:
        over = {"head_dim": _get(text, "global_head_dim", int, default=_DEFAULT_GLOBAL_HEAD_DIM)}
        if text.get("num_global_key_value_heads") is not None:
            over["num_key_value_heads"] = _get(text, "num_global_key_value_heads", int)
        per_layer = {i: over for i, k in enumerate(kinds) if k == "full"}
    shapes: dict[str, tuple[int, int]] = {}
    for i, kind in enumerate(kinds):
        over = per_layer.get(i, {})
        shape = (over.get("head_dim", head_dim), over.get("num_key_value_heads", kv_heads))
        if shapes.setdefault(kind, shape) != shape:
            raise CheckpointError(
                f"config.json: text_config.per_layer_config: layer {i} ({kind}) has "
                f"(head_dim, kv heads)={shape}, other {kind} layers {shapes[kind]}"
            )
    for kind in ("sliding", "full"):
        shapes.setdefault(kind, (head_dim, kv_heads))  # a kind without layers: never used
    return shapes


def _attention_kind(rope: dict, hf_kind: str, head_dim: int, kv_heads: int) -> AttentionKind:
    where = f"text_config.rope_parameters.{hf_kind}."
    params = _get(rope, hf_kind, dict, "text_config.rope_parameters.")
    rope_type = params.get("rope_type", "default")
    fraction = float(_get(params, "partial_rotary_factor", float, where, 1.0))
    factor = float(_get(params, "factor", float, where, 1.0))
    if rope_type == "default" and fraction != 1.0:
        raise CheckpointError(
            f"config.json: {where}partial_rotary_factor={fraction}: default RoPE rotates the "
            "whole head (use rope_type 'proportional')"
        )
    if rope_type not in ("default", "proportional"):
        raise CheckpointError(
            f"config.json: {where}rope_type={rope_type!r}: only 'default', 'proportional'"
        )
    return AttentionKind(
        head_dim=head_dim,
        num_kv_heads=kv_heads,
        rope_theta=float(_get(params, "rope_theta", float, where)),
        rope_fraction=fraction,
        rope_factor=factor if rope_type == "proportional" else 1.0,
    )
