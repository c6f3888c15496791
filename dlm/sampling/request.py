"""A generation request, its defaults, and the one validator every entry point uses.

Errors are `RequestError`s that name the field, the value and the allowed values, so the server
can answer a bad request with its own error response and keep serving the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dlm.config import ModelConfig
from dlm.passes import NO_PENALTIES
from dlm.schema import MODES, Limits

MAX_FACTOR = 16.0  # the factor rule commits a whole 128-token block at 99% sure well below it
MAX_PENALTY = 10.0  # repetition_penalty: 10 already all but bans a token (transformers uses ~1.2)
MAX_TEMPERATURE = 100.0
MAX_DENOISING_STEPS = 1024  # per canvas (DiffusionGemma's default is 48)
PENALTY_FIELDS = ("repetition_penalty", "frequency_penalty", "presence_penalty")


class RequestError(ValueError):
    """A request field outside its allowed range."""


def _int(value) -> bool:
    """An integer, not a bool (True is an int to Python, not a token count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    """A finite int or float, not a bool."""
    return (_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    mode: str = "diffusion"
    max_tokens: int = 64
    block_length: int | None = None  # None: the model's block length
    threshold: float = 0.9  # diffusion: commit masked positions with confidence >= threshold
    steps: int | None = None  # diffusion: fixed passes per block instead of the threshold rule
    factor: float | None = None  # diffusion: Fast-dLLM's factor rule instead of the threshold
    temperature: float = 0.0
    seed: int = 0
    stop_sequences: list[list[int]] = field(default_factory=list)
    end_id: int | None = None  # None: the model's eos
    repetition_penalty: float = 1.0  # dlm.passes: on the request's own generated tokens
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # Diffusion on a canvas (DiffusionGemma, dlm.sampling.canvas); transformers' defaults.
    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    stability_threshold: int = 1
    confidence_threshold: float = 0.005

    @property
    def penalties(self) -> tuple[float, float, float]:
        return tuple(getattr(self, name) for name in PENALTY_FIELDS)

    def validate(self, cfg: ModelConfig, limits: Limits | None = None) -> GenerationRequest:
        """Fill defaults from the model config and check every field; returns self."""
        lim = limits or Limits()

        def bad(name: str, value, allowed: str) -> RequestError:
            return RequestError(f"{name}={value!r}: must be {allowed}")

        if self.mode not in MODES:
            raise bad("mode", self.mode, f"one of {', '.join(MODES)}")
        if not self.prompt_ids:
            raise bad("text_input", "", "a non-empty prompt")
        if len(self.prompt_ids) > lim.max_prompt_tokens:
            raise bad(
                "text_input",
                f"<{len(self.prompt_ids)} tokens>",
                f"at most {lim.max_prompt_tokens} tokens",
            )
        if any(not (_int(t) and 0 <= t < cfg.vocab_size) for t in self.prompt_ids):
            raise bad("prompt_ids", "<out of vocabulary>", f"ids in [0, {cfg.vocab_size})")
        if not _int(self.max_tokens) or not 1 <= self.max_tokens <= lim.max_output_tokens:
            raise bad("max_tokens", self.max_tokens, f"an integer in [1, {lim.max_output_tokens}]")
        room = cfg.max_position - len(self.prompt_ids)
        if self.max_tokens > room:
            raise bad(
                "max_tokens",
                self.max_tokens,
                f"at most {room} for this prompt (model context {cfg.max_position})",
            )
        if self.block_length is None:
            self.block_length = cfg.block_length
        if not _int(self.block_length) or not 1 <= self.block_length <= lim.max_block_length:
            raise bad(
                "block_length", self.block_length, f"an integer in [1, {lim.max_block_length}]"
            )
        if not (_number(self.threshold) and 0.0 < self.threshold <= 1.0):
            raise bad("threshold", self.threshold, "a number in (0, 1]")
        if self.factor is not None:
            if not (_number(self.factor) and 0.0 < self.factor <= MAX_FACTOR):
                raise bad("factor", self.factor, f"a number in (0, {MAX_FACTOR:g}]")
            if self.steps is not None:
                raise bad("factor", self.factor, "left out when steps is given (one rule)")
        if self.steps is not None:
            if not _int(self.steps) or not 1 <= self.steps <= self.block_length:
                raise bad(
                    "steps", self.steps, f"an integer in [1, block_length={self.block_length}]"
                )
            if self.block_length % self.steps:
                raise bad(
                    "steps",
                    self.steps,
                    f"a divisor of block_length={self.block_length} (equal tokens per pass)",
                )
        if not (_number(self.temperature) and 0.0 <= self.temperature <= MAX_TEMPERATURE):
            raise bad("temperature", self.temperature, f"a number in [0, {MAX_TEMPERATURE:g}]")
        if not (_number(self.repetition_penalty) and 0.0 < self.repetition_penalty <= MAX_PENALTY):
            raise bad(
                "repetition_penalty", self.repetition_penalty, f"a number in (0, {MAX_PENALTY:g}]"
            )
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not (_number(value) and -2.0 <= value <= 2.0):
                raise bad(name, value, "a number in [-2, 2]")
        if not _int(self.seed) or not 0 <= self.seed < 2**64:
            raise bad("random_seed", self.seed, "an integer in [0, 2**64)")
        if self.end_id is None:
            self.end_id = cfg.eos_token_id
        if not (_int(self.end_id) and 0 <= self.end_id < cfg.vocab_size):
            raise bad("end_id", self.end_id, f"a token id in [0, {cfg.vocab_size})")
        if self.mode not in cfg.modes:
            raise bad("mode", self.mode, f"{' or '.join(cfg.modes)} for this {cfg.family} model")
        if not cfg.penalties:
            for name, off in zip(PENALTY_FIELDS, NO_PENALTIES, strict=True):
                if getattr(self, name) != off:
                    raise bad(name, getattr(self, name), f"{off:g} for this {cfg.family} model")
        self._validate_canvas(bad)
        if not isinstance(self.stop_sequences, list) or any(
            not isinstance(s, list) or not s or not all(_int(t) for t in s)
            for s in self.stop_sequences
        ):
            raise bad("stop_words", "", "non-empty strings")
        return self

    def _validate_canvas(self, bad) -> None:
        steps = self.max_denoising_steps
        if not _int(steps) or not 1 <= steps <= MAX_DENOISING_STEPS:
            raise bad("max_denoising_steps", steps, f"an integer in [1, {MAX_DENOISING_STEPS}]")
        for name in ("entropy_bound", "confidence_threshold"):
            value = getattr(self, name)
            if not (_number(value) and value > 0):
                raise bad(name, value, "a number > 0")
        if not (_number(self.t_min) and 0.0 <= self.t_min < MAX_TEMPERATURE):
            raise bad("t_min", self.t_min, f"a number in [0, {MAX_TEMPERATURE:g})")
        if not (_number(self.t_max) and self.t_min < self.t_max <= MAX_TEMPERATURE):
            raise bad(
                "t_max", self.t_max, f"a number in (t_min={self.t_min:g}, {MAX_TEMPERATURE:g}]"
            )
        if not _int(self.stability_threshold) or not 0 <= self.stability_threshold <= steps:
            raise bad(
                "stability_threshold",
                self.stability_threshold,
                f"an integer in [0, max_denoising_steps={steps}]",
            )
