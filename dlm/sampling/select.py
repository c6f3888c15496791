"""Which masked positions a denoise pass commits: the remasking policies.

Each returns a boolean list over the block; at least one masked position is always chosen, so a
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


def by_factor(confidence: np.ndarray, masked: np.ndarray, factor: float) -> np.ndarray:
    """The n most confident masked positions for the largest n with (n + 1) * (1 - c_n) < factor,
    c_n the n-th highest confidence, and always the most confident one (Fast-dLLM, Wu et al.
    2025, factor-based parallel decoding): a few fairly sure tokens may go together, many only
    when all are very sure."""
    conf = np.where(masked, confidence, -np.inf)
    order = np.argsort(-conf, kind="stable")[: int(masked.sum())]
    n = np.arange(1, len(order) + 1)
    ok = (n + 1) * (1.0 - conf[order]) < factor
    count = max(1, int(np.argmin(ok)) if not ok.all() else len(order))
    chosen = np.zeros_like(masked)
    chosen[order[:count]] = True
    return chosen & masked


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
