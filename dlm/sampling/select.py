"""Which masked positions a denoise pass commits: the remasking policies.

Both return a boolean list over the block; at least one masked position is always chosen, so a
threshold above every confidence still makes progress.
"""

from __future__ import annotations

import numpy as np


def by_threshold(confidence: np.ndarray, masked: np.ndarray, threshold: float) -> np.ndarray:
    """Every masked position with confidence >= threshold, and always the most confident one
    (Fast-dLLM, Wu et al. 2025, parallel decoding by confidence)."""
    conf = np.where(masked, confidence, -np.inf)
    chosen = masked & (conf >= threshold)
    if masked.any():
        chosen[int(np.argmax(conf))] = True
    return chosen


def by_count(confidence: np.ndarray, masked: np.ndarray, count: int) -> np.ndarray:
    """The `count` most confident masked positions (LLaDA low-confidence remasking,
    Nie et al. 2025); ties go to the earlier position."""
    conf = np.where(masked, confidence, -np.inf)
    count = max(1, min(count, int(masked.sum())))
    order = np.argsort(-conf, kind="stable")[:count]
    chosen = np.zeros_like(masked)
    chosen[order] = True
    return chosen & masked


def schedule(masked: int, steps: int) -> list[int]:
    """Tokens committed at each of `steps` passes for `masked` positions: as even as possible,
    the remainder first (LLaDA's get_num_transfer_tokens); passes committing 0 are dropped."""
    base, extra = divmod(masked, steps)
    return [n for n in [base + (1 if i < extra else 0) for i in range(steps)] if n > 0]
