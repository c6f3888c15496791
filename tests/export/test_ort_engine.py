"""OrtEngine against TorchEngine: whole generations in every mode, cache handling, errors."""

from __future__ import annotations

import numpy as np
import pytest

from dlm.engine import PassRequest, TorchEngine
from export import parity
from export.ort_engine import OrtEngine
from tests.conftest import random_prompts, tiny_model


@pytest.fixture(scope="module")
def engines(nld_build):
    cfg = nld_build.model.cfg
    return TorchEngine(nld_build.model), OrtEngine(nld_build.out / "denoiser.onnx", cfg, threads=1)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_generations_identical_in_every_mode(engines, temperature):
    """Ragged batch (prompts of 2..40 tokens), every mode and remasking policy, 3 blocks each."""
    torch_engine, ort_engine = engines
    cfg = torch_engine.config
    prompts = random_prompts(5, vocab=cfg.vocab_size, lo=2, hi=40, seed=4)
    report = parity.generation_parity(
        torch_engine,
        ort_engine,
        prompts,
        max_tokens=24,
        temperature=temperature,
        end_id=cfg.vocab_size - 1,
    )
    assert report["ok"], "\n".join(parity.format_generation_parity(report))
    assert set(report["modes"]) == set(parity.GEN_SETTINGS)
    # The confident model commits several tokens per diffusion pass: the parallel path is run.
    diff = report["modes"]["diffusion-low-threshold"]
    assert diff["tokens"] > diff["passes"]


def test_build_generations_identical(nld_build):
    gen = nld_build.manifest["parity"]["generation"]
    assert gen["ok"] and gen["temperature"] == 0.0, "\n".join(parity.format_generation_parity(gen))
    assert set(gen["modes"]) == set(parity.GEN_SETTINGS)


def test_cache_rollback_and_release(engines):
    torch_engine, ort_engine = engines
    prompt = list(range(5, 25))
    for e in engines:
        e.step([PassRequest(7, 0, prompt, tail=0, write=True, n_out=1)])
        assert e.kv.cached(7) == 20
    # Roll back to 12 cached positions and run a block there: both engines agree.
    block = [3] * 8
    a, b = (e.step([PassRequest(7, 12, block, tail=8, write=False, n_out=8)])[0] for e in engines)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)
    assert ort_engine.kv.cached(7) == 12
    ort_engine.release(7)
    torch_engine.release(7)
    assert len(ort_engine.kv) == 0 and ort_engine.kv.cached(7) == 0


def test_bad_pass_names_the_field(engines):
    _, ort_engine = engines
    with pytest.raises(ValueError, match="pass.start"):
        ort_engine.step([PassRequest(9, 4, [5, 6], tail=0, write=False, n_out=1)])


def test_config_mismatch_fails_fast(nld_build):
    other = tiny_model(num_layers=3, vocab_size=300).cfg
    with pytest.raises(ValueError, match="axis L"):
        OrtEngine(nld_build.out / "denoiser.onnx", other)
    with pytest.raises(FileNotFoundError, match="make engine"):
        OrtEngine(nld_build.out / "missing.onnx", other)


def test_small_steps_run_on_the_spinning_session_with_the_same_tokens(nld_build):
    """Steps of at most spin_rows rows take the session whose pool spins; the tokens and
    confidences are those of the session that never spins, at every batch size."""
    cfg = nld_build.model.cfg
    path = nld_build.out / "denoiser.onnx"
    spinning, plain = (OrtEngine(path, cfg, threads=2, spin_rows=n) for n in (2, 0))
    assert plain.spinning is None
    option = "session.intra_op.allow_spinning"
    assert spinning.spinning.get_session_options().get_session_config_entry(option) == "1"
    assert spinning.session.get_session_options().get_session_config_entry(option) == "0"
    used = []
    for name in ("session", "spinning"):
        session = getattr(spinning, name)
        run = session.run
        session.run = lambda *a, name=name, run=run: used.append(name) or run(*a)
    prompts = random_prompts(4, vocab=cfg.vocab_size, lo=3, hi=30, seed=9)
    for rows in (1, 2, 4):
        ids = range(10 * rows, 10 * rows + rows)
        prefill = [PassRequest(s, 0, p, 0, True, 1) for s, p in zip(ids, prompts, strict=False)]
        block = [
            PassRequest(s, len(p), [3] * 6, 6, False, 6) for s, p in zip(ids, prompts, strict=False)
        ]
        for passes in (prefill, block):
            a, b = spinning.step(passes), plain.step(passes)
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x.tokens, y.tokens)
                np.testing.assert_array_equal(x.confidence, y.confidence)
    assert used == ["spinning"] * 4 + ["session"] * 2


def test_spin_rows_is_checked_and_one_thread_holds_one_session(nld_build):
    cfg, path = nld_build.model.cfg, nld_build.out / "denoiser.onnx"
    with pytest.raises(ValueError, match="spin_rows=-1"):
        OrtEngine(path, cfg, spin_rows=-1)
    single = OrtEngine(path, cfg, threads=1, spin_rows=2)
    assert single.spin_rows == 0 and single.spinning is None
