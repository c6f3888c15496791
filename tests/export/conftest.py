"""Engines built once per session from tiny random checkpoints made here (no weights shipped).

`nld_build`: a Nemotron-Labs-style tiny model with YaRN and the long-position query scale
switched on (positions past 16 scale queries), its output head scaled so that confidences are
high and diffusion commits several tokens per pass, plus a BPE tokenizer: built with
`export.build.build` (ONNX Runtime backend), the path `make engine` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dlm import checkpoint
from dlm.config import YarnScaling
from dlm.model import DiffusionLM
from tests.conftest import tiny_model, train_tiny_tokenizer


def confident_nld_model() -> DiffusionLM:
    m = tiny_model(
        seed=3,
        vocab_size=300,
        yarn=YarnScaling(factor=4.0, original_max_position=64),
        query_scale_beta=0.1,
        query_scale_max_position=16,
    )
    m.diffusion_head.weight.data *= 8
    return m


@dataclass
class Built:
    model_dir: Path
    out: Path
    manifest: dict
    model: DiffusionLM
    log: list[str]


@pytest.fixture(scope="session")
def nld_build(tmp_path_factory) -> Built:
    from export.build import build

    root = tmp_path_factory.mktemp("export")
    model_dir = root / "model"
    model = confident_nld_model()
    checkpoint.save(model, model_dir)
    train_tiny_tokenizer(model_dir)
    log: list[str] = []
    manifest = build(model_dir, root / "engine", backend="onnxruntime", log=log.append)
    return Built(model_dir, root / "engine", manifest, checkpoint.load(model_dir), log)
