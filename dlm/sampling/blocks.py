"""The block length a `self_spec` or `diffusion` request gets when it names neither
`block_length` nor `steps`: the size that commits the most tokens per second at batch 1 by the
engine's measured pass times (`dlm.cost`), at most the model's trained block.

Chosen once, when `make engine` measures the build's cost model, and kept in its manifest
(`defaults.block_length`), so that every process that serves the build gives a request the same
block (the server's preprocessing, `python -m dlm generate --engine`, the benchmarks): a
diffusion request's tokens depend on its block. A PyTorch engine served from the checkpoint,
with no build, keeps the trained block. On a GPU, where a 32-token pass costs about what a
1-token pass does, the choice is the trained block; on a 2-core CPU, where it costs 3-4 times as
much, it is 4 (measured: self_spec 1.9-2.1x ar at block 3-4 against 0.66-0.77x at 32;
diffusion 1.2-1.6x at 4-8 against 0.67-0.73x; benchmarks/results/block_defaults_cpu).

- self_spec: a round of size s commits and carries what `dlm.sampling.auto` estimates with its
  priors (drafts of 3 tokens on average, each accepted after the ones before it 4 times in 5);
- diffusion: a block of s tokens costs one commit pass and max(1, (s - 1) / c) denoise passes,
  each of s tokens, where c is how many masked positions a denoise pass commits.

Whether self_spec's rounds carry the fork (`dlm.sampling.self_spec`) is decided with the block,
by the same pass times at batch 1 (`self_spec_forks`), and kept in the manifest too
(`defaults.self_spec_fork`): the fork changes a request's passes, never its tokens, and a request
makes the same passes in every process that serves the build. On the 2-core CPU it does not fork
(its tokens cost more than the drafts they save), on a GPU at a small batch it does.
"""

from __future__ import annotations

from dlm.cost import CostModel
from dlm.sampling.auto import SIZES, Drafting, best_size
from dlm.sampling.self_spec import round_rate

# Masked positions a denoise pass commits at the threshold 0.9 default: 1.7-1.9 on the shipped
# model at blocks 4-32 (tokens per forward 1.45 / 1.65 / 1.79 / 1.63 at 4 / 8 / 16 / 32). Blocks
# of 2-3 leave a pass too few masked positions to commit several (1.00 / 1.22 tokens per
# forward): the smallest block diffusion is given is 4.
DIFFUSION_COMMITS = 1.8
DIFFUSION_SMALLEST = 4


def diffusion_block(cost: CostModel, trained: int) -> int:
    def rate(s: int) -> float:
        passes = 1 + max(1.0, (s - 1) / DIFFUSION_COMMITS)
        return s / (passes * cost.table_seconds(1, s))

    sizes = [s for s in SIZES if DIFFUSION_SMALLEST <= s < trained] + [trained]
    return max(sizes, key=lambda s: (rate(s), s))  # ties to the larger block


def self_spec_block(cost: CostModel, trained: int) -> int:
    return best_size(cost, 1, Drafting(), trained, smallest=2)


def block_lengths(cost: CostModel, trained: int) -> dict[str, int]:
    """{mode: block length} for the modes whose requests default to a chosen block."""
    choose = {"self_spec": self_spec_block, "diffusion": diffusion_block}
    return {mode: rule(cost, trained) for mode, rule in choose.items()}


def self_spec_forks(cost: CostModel, block: int) -> bool:
    """Whether self_spec's rounds of `block` fork at batch 1, drafting as auto's priors say."""
    d = Drafting()
    return round_rate(cost, 1, d.tokens(block), d.branch(block), d.committed(block))[1]
