"""A generation request, its defaults, and the one validator every entry point uses.

Errors are `RequestError`s that name the field, the value and the allowed values, so the server
can answer a bad request with its own error response and keep serving the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dlm.config import ModelConfig

MODES = ("ar", "diffusion", "self_spec")


class RequestError(ValueError):
    """A request field outside its allowed range."""


@dataclass
class Limits:
    """Server-side bounds on a request (prompt and output lengths)."""

    max_prompt_tokens: int = 768
    max_output_tokens: int = 512
    max_block_length: int = 128


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    mode: str = "diffusion"
    max_tokens: int = 64
    block_length: int | None = None  # None: the model's block length
    threshold: float = 0.9  # diffusion: commit masked positions with confidence >= threshold
    steps: int | None = None  # diffusion: fixed passes per block instead of the threshold rule
    temperature: float = 0.0
    seed: int = 0
    stop_sequences: list[list[int]] = field(default_factory=list)
    end_id: int | None = None  # None: the model's eos

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
        if any(not 0 <= t < cfg.vocab_size for t in self.prompt_ids):
            raise bad("prompt_ids", "<out of vocabulary>", f"ids in [0, {cfg.vocab_size})")
        if (
            not isinstance(self.max_tokens, int)
            or not 1 <= self.max_tokens <= lim.max_output_tokens
        ):
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
        if (
            not isinstance(self.block_length, int)
            or not 1 <= self.block_length <= lim.max_block_length
        ):
            raise bad(
                "block_length", self.block_length, f"an integer in [1, {lim.max_block_length}]"
            )
        if not (
            isinstance(self.threshold, (int, float))
            and math.isfinite(self.threshold)
            and 0.0 < self.threshold <= 1.0
        ):
            raise bad("threshold", self.threshold, "a number in (0, 1]")
        if self.steps is not None:
            if not isinstance(self.steps, int) or not 1 <= self.steps <= self.block_length:
                raise bad(
                    "steps", self.steps, f"an integer in [1, block_length={self.block_length}]"
                )
            if self.block_length % self.steps:
                raise bad(
                    "steps",
                    self.steps,
                    f"a divisor of block_length={self.block_length} (equal tokens per pass)",
                )
        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and 0.0 <= self.temperature <= 100.0
        ):
            raise bad("temperature", self.temperature, "a number in [0, 100]")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise bad("random_seed", self.seed, "an integer in [0, 2**64)")
        if self.end_id is None:
            self.end_id = cfg.eos_token_id
        if not 0 <= self.end_id < cfg.vocab_size:
            raise bad("end_id", self.end_id, f"a token id in [0, {cfg.vocab_size})")
        if self.mode != "diffusion" and not cfg.uses_kv_cache:
            raise bad(
                "mode",
                self.mode,
                f"diffusion for this {cfg.family} model "
                "(it is fully bidirectional: no causal passes)",
            )
        if any(not s for s in self.stop_sequences):
            raise bad("stop_words", "", "non-empty strings")
        return self
