"""dlm: the core library. Model, configs and presets, checkpoints, tokenizer and samplers.
Knows nothing of Triton."""

from dlm.config import PRESETS, ModelConfig, preset
from dlm.model import DiffusionLM

__all__ = ["PRESETS", "ModelConfig", "DiffusionLM", "preset"]
