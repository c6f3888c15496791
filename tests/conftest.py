"""Shared fixtures: tiny random models and checkpoint folders made by the tests (no downloads)."""

from __future__ import annotations

import os

# OpenAI Triton kernels run in Triton's interpreter in this suite (CPU). Set before any test
# module imports triton: transformers (tests/dlm/test_gemma.py) imports it too, and a triton
# first imported without it keeps compiled-mode helpers that the interpreter cannot call.
os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import pytest
import torch

from dlm import checkpoint
from dlm.config import preset
from dlm.model import DiffusionLM

SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|mask|>"]


def tiny_model(seed: int = 0, **overrides) -> DiffusionLM:
    torch.manual_seed(seed)
    return DiffusionLM(preset("tiny", **overrides)).eval()


def random_prompts(n: int, vocab: int = 64, lo: int = 3, hi: int = 20, seed: int = 0):
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def train_tiny_tokenizer(folder, vocab_size: int = 300) -> None:
    """A byte-level BPE with the four special tokens at ids 0-3, trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n", "import os\nprint('hi')\n"]
    tok.train_from_iterator(text * 20, trainer)
    tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A folder with a tiny random NLD-layout model (vocab 300) and a real BPE tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_ckpt")
    model = tiny_model(vocab_size=300)
    checkpoint.save(model, folder)
    train_tiny_tokenizer(folder)
    (folder / "generation_config.json").write_text('{"mode": "diffusion", "block_length": 8}\n')
    return folder
