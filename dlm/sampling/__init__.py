"""Samplers: one loop (`loop.Scheduler`) and one small policy per generation mode."""

from dlm.sampling.loop import POLICIES, GenerationResult, Scheduler, generate
from dlm.sampling.request import MODES, GenerationRequest, Limits, RequestError

__all__ = [
    "POLICIES",
    "MODES",
    "GenerationRequest",
    "GenerationResult",
    "Limits",
    "RequestError",
    "Scheduler",
    "generate",
]
