"""The training recipe end to end on the `tiny` preset: both phases, export, seeding, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlm import checkpoint
from dlm.train import train

STEPS = [
    "--preset",
    "tiny",
    "--seq-len",
    "16",
    "--block",
    "8",
    "--batch",
    "4",
    "--warmup",
    "2",
    "--pretrain-steps",
    "4",
    "--distill-steps",
    "2",
    "--distill-rounds",
    "1",
    "--distill-sequences",
    "6",
    "--distill-prefix",
    "8",
    "--eval-every",
    "2",
    "--eval-windows",
    "4",
]


@pytest.fixture
def corpus(tmp_path):
    """A corpus folder of random token ids below the tiny preset's vocabulary, and a tokenizer."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "train.npy", rng.integers(4, 64, size=2000).astype(np.uint16))
    np.save(folder / "heldout.npy", rng.integers(4, 64, size=400).astype(np.uint16))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text("{}\n")
    return folder


def run(corpus, tmp_path, name: str, *extra: str) -> tuple[dict, dict]:
    out, work = tmp_path / f"{name}_out", tmp_path / f"{name}_work"
    argv = ["--corpus", str(corpus), "--out", str(out), "--work", str(work), "--device", "cpu"]
    assert train.main([*argv, *STEPS, *extra]) == 0
    weights = checkpoint.load(out, dtype=torch.float32).state_dict()
    return weights, json.loads((out / "training_log.json").read_text())


def test_both_phases_export_a_loadable_model(corpus, tmp_path):
    weights, log = run(corpus, tmp_path, "a")
    phases = [e["phase"] for e in log["evals"]]
    assert phases.count("pretrain") >= 2 and "distill" in phases
    assert all(np.isfinite(e["ar"]) and np.isfinite(e["diffusion"]) for e in log["evals"])
    assert log["recipe"]["preset"] == "tiny"
    out = tmp_path / "a_out"
    assert json.loads((out / "generation_config.json").read_text())["block_length"] == 8
    assert (out / "tokenizer.json").exists()
    assert weights  # loads through the core loader


def test_seeded_runs_are_identical(corpus, tmp_path):
    a, _ = run(corpus, tmp_path, "a")
    b, _ = run(corpus, tmp_path, "b")
    c, _ = run(corpus, tmp_path, "c", "--seed", "1")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_from_the_saved_state(corpus, tmp_path, capsys):
    run(corpus, tmp_path, "r")
    capsys.readouterr()
    _, log = run(corpus, tmp_path, "r", "--resume")
    assert "resumed distill at step 2" in capsys.readouterr().out
    assert [e["phase"] for e in log["evals"]].count("pretrain") >= 2  # the log carried over


def test_resume_with_another_recipe_is_refused(corpus, tmp_path):
    run(corpus, tmp_path, "m")
    with pytest.raises(SystemExit, match="different recipe.*seq_len"):
        run(corpus, tmp_path, "m", "--resume", "--seq-len", "24")
