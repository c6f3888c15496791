"""The canvas policy against transformers' `DiffusionGemmaForBlockDiffusion.generate`.

Both sides get the same random draws (`benchmarks.gemma_reference.reference_generate` makes the
reference draw what ours draws); then every acceptance, renoising, stop and committed token must
agree, token for token, with the denoising steps counted alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dlm.gemma import checkpoint
from dlm.gemma.engine import GemmaEngine
from dlm.sampling import GenerationRequest, RequestError, generate
from dlm.sampling.canvas import accept_by_entropy, random_tokens

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
from benchmarks.gemma_reference import BASE, CANVAS, build_reference  # noqa: E402
from benchmarks.gemma_reference import reference_generate as reference  # noqa: E402

VOCAB = BASE["vocab_size"]
STEPS = 6
CASES = {
    # the reference's defaults: the random model is never confident, every step runs
    "defaults": dict(),
    "wide_bound": dict(entropy_bound=3.0),
    # always confident: stops once the argmax held for one step, for two, or at once; all
    # accepted, cold: the canvas is about its argmax, which then settles within a few steps
    "stable_1": dict(entropy_bound=1e3, t_min=0.01, t_max=0.02, confidence_threshold=50.0),
    "stable_2": dict(
        entropy_bound=1e3, t_min=0.01, t_max=0.02, confidence_threshold=50.0, stability_threshold=2
    ),
    "stable_0": dict(confidence_threshold=50.0, stability_threshold=0),
    "schedule": dict(t_min=0.1, t_max=2.0, entropy_bound=1.0),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma")
    # Self-conditioning at a tenth: at full strength this random model's steps amplify float
    # rounding (1e-7) about threefold each, until a sampling or routing decision flips; a
    # tenth keeps the two sides within 1e-5 over a canvas (the forward test runs it in full).
    ref = build_reference(folder, seed=3, self_conditioning=0.1)
    _, ours = checkpoint.load(folder)
    return ref, GemmaEngine.torch(ours)


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (5 + 3 * i,), generator=g).tolist() for i in range(n)]


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers_generate(case, models):
    ref, engine = models
    knobs = dict(max_denoising_steps=STEPS, **CASES[case])
    batch = prompts(3)
    max_tokens = 2 * CANVAS + 2  # three canvases, the last cut short
    requests = [
        GenerationRequest(p, max_tokens=max_tokens, seed=11 + i, **knobs)
        for i, p in enumerate(batch)
    ]
    results = generate(engine, requests)  # ours batched: the reference runs one at a time
    for i, (req, res) in enumerate(zip(requests, results, strict=True)):
        tokens, steps = reference(ref, req)
        assert res.token_ids == tokens, f"{case}, prompt {i}: ours {res.token_ids} vs {tokens}"
        assert sum(b.passes for b in res.blocks) == steps, f"{case}, prompt {i}: steps"
    passes = [b.passes for r in results for b in r.blocks]
    if case == "stable_0":  # confident and nothing to hold: one step a canvas
        assert set(passes) == {1}
    elif case.startswith("stable"):  # the early stop did happen, where the argmax held
        assert min(passes) < STEPS, passes
    else:
        assert set(passes) == {STEPS}


def test_stops_at_eos_as_the_reference(models):
    ref, engine = models
    prompt = prompts(1, seed=5)[0]
    knobs = dict(max_denoising_steps=STEPS, entropy_bound=2.0)
    full = generate(engine, [GenerationRequest(prompt, max_tokens=3 * CANVAS, **knobs)])[0]
    eos = full.token_ids[min(CANVAS + 2, len(full.token_ids) - 1)]  # ends it in canvas 2
    cut = full.token_ids.index(eos)
    req = GenerationRequest(prompt, max_tokens=3 * CANVAS, end_id=eos, **knobs)
    res = generate(engine, [req])
    tokens, steps = reference(ref, req)
    assert res[0].token_ids == tokens == full.token_ids[:cut]
    assert res[0].finish_reason == "eos"
    assert sum(b.passes for b in res[0].blocks) == steps


def test_same_tokens_alone_or_batched(models):
    _, engine = models
    batch = prompts(4, seed=2)
    requests = [GenerationRequest(p, max_tokens=CANVAS + 3, seed=7, max_denoising_steps=4)
                for p in batch]  # fmt: skip
    together = generate(engine, requests)
    for req, res in zip(requests, together, strict=True):
        alone = generate(engine, [dataclasses.replace(req)])[0]
        assert alone.token_ids == res.token_ids
    assert len(engine) == 0, "every sequence's cache is released"


def test_accept_by_entropy():
    entropy = np.array([0.5, 0.01, 0.3, 0.02, 2.0], np.float32)
    # sorted 0.01 0.02 0.3 0.5 2.0; sum - max: 0, 0.01, 0.03, 0.33, 0.83
    assert accept_by_entropy(entropy, 0.1).tolist() == [False, True, True, True, False]
    assert accept_by_entropy(entropy, 1e-6).tolist() == [False, True, False, False, False]
    assert accept_by_entropy(entropy, 1.0).all()


def test_random_tokens_cover_the_vocabulary():
    tokens = random_tokens(12345, 20_000, VOCAB)
    assert tokens.min() == 0 and tokens.max() == VOCAB - 1
    counts = np.bincount(tokens, minlength=VOCAB)
    assert counts.min() > 0.7 * len(tokens) / VOCAB  # uniform within noise
    assert not np.array_equal(tokens[:50], random_tokens(12346, 50, VOCAB))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mode", "ar", "mode='ar': must be diffusion for this diffusion_gemma model"),
        ("frequency_penalty", 0.5, "frequency_penalty=0.5: must be 0 for this diffusion_gemma"),
        ("max_denoising_steps", 0, r"max_denoising_steps=0: must be an integer in \[1, 1024\]"),
        ("entropy_bound", 0.0, "entropy_bound=0.0: must be a number > 0"),
        ("t_max", 0.3, r"t_max=0.3: must be a number in \(t_min=0.4, 100\]"),
        ("stability_threshold", 99, r"stability_threshold=99: must be an integer in \[0, max_"),
    ],
)
def test_bad_knobs_named(models, field, value, message):
    _, engine = models
    with pytest.raises(RequestError, match=message):
        GenerationRequest([5, 6], **{field: value}).validate(engine.config)
