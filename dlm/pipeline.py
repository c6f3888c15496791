"""Text in, text out, in process: a model folder's engine, tokenizer and generation defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dlm import cost
from dlm.engine import Engine
from dlm.engines import load_engine, served_defaults
from dlm.sampling import GenerationRequest, GenerationResult, Limits, generate
from dlm.tokenizer import TextTokenizer

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


RULE_KNOBS = {"threshold", "factor", "steps"}  # how diffusion picks the tokens it commits
# A model folder's defaults a request takes (besides the rule knobs; DiffusionGemma's canvas ones)
DEFAULT_KNOBS = {"mode", "block_length", "max_tokens", "max_denoising_steps", "entropy_bound"}
DEFAULT_KNOBS |= {"t_min", "t_max", "stability_threshold", "confidence_threshold"}


@dataclass
class Pipeline:
    engine: Engine
    tokenizer: TextTokenizer
    defaults: dict
    limits: Limits

    @classmethod
    def load(
        cls,
        folder: str | Path = DEFAULT_MODEL,
        device: str = "cpu",
        limits: Limits | None = None,
        engine_dir: str | Path | None = None,
        dtype: str = "auto",
    ) -> Pipeline:
        """The model folder's tokenizer and defaults, and its engine (`dlm.engines.load_engine`):
        the build in `engine_dir` (`python -m export`: what `make serve` serves; with the pass
        times `make engine` measured on this machine, as served), else PyTorch (in `dtype`)."""
        engine = load_engine(folder, engine_dir, device=device, dtype=dtype)
        if engine_dir is not None:
            engine.cost_model = cost.cached(engine, engine_dir)
        return cls(
            engine,
            TextTokenizer(folder),
            served_defaults(folder, engine_dir),
            limits or Limits(),
        )

    def request(
        self, prompt: str, stop_words: list[str] | None = None, **knobs
    ) -> GenerationRequest:
        """A validated request: the folder's defaults, overridden by the knobs that are not None.
        A request that names one of diffusion's rules (threshold, factor, steps) drops the
        defaults' rule knobs: the default rule does not mix with the chosen one. A self_spec or
        diffusion request that names no block gets the one the build chose for its mode."""
        given = {k: v for k, v in knobs.items() if v is not None}
        keep = set(DEFAULT_KNOBS)
        if not given.keys() & RULE_KNOBS:
            keep |= RULE_KNOBS
        fields = {k: v for k, v in self.defaults.items() if k in keep}
        fields.update(given)
        # the build's block for the mode (dlm.sampling.blocks), unless the request names its
        # block, or fixed steps per block (which must divide it)
        mode = fields.get("mode", GenerationRequest.mode)
        chosen = self.defaults.get("block_lengths", {}).get(mode)
        if chosen and "block_length" not in given and "steps" not in fields:
            fields["block_length"] = chosen
        stops = [self.tokenizer.encode(s) for s in (stop_words or [])]
        req = GenerationRequest(self.tokenizer.encode(prompt), stop_sequences=stops, **fields)
        return req.validate(self.engine.config, self.limits)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return generate(self.engine, requests, self.limits)
