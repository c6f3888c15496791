"""The canvas policy against transformers' `DiffusionGemmaForBlockDiffusion.generate`.

Both sides get the same random draws: the reference's sampler and `torch.multinomial` are
replaced by ones that draw what ours draws (`dlm.sampling.canvas.random_tokens` for the initial
and renoised canvases, the DenoiseStep op's Gumbel noise for the sampled canvas), keyed by the
request's seed, the canvas's position and the step. Then every acceptance, renoising, stop and
committed token must agree, token for token, with the denoising steps counted alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dlm.gemma import checkpoint
from dlm.gemma.engine import GemmaEngine
from dlm.sampling import GenerationRequest, RequestError, generate
from dlm.sampling.canvas import RENOISE, SAMPLE, accept_by_entropy, draw, random_tokens
from dlm.sampling.sequence import pass_seed
from plugins.denoise_step.reference import gumbel_noise_numpy

pytest.importorskip("transformers")
from transformers.models.diffusion_gemma import generation_diffusion_gemma as hf  # noqa: E402

from tests.dlm.gemma_reference import BASE, CANVAS, build_reference  # noqa: E402

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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma")
    # Self-conditioning at a tenth: at full strength this random model's steps amplify float
    # rounding (1e-7) about threefold each, until a sampling or routing decision flips; a
    # tenth keeps the two sides within 1e-5 over a canvas (the forward test runs it in full).
    ref = build_reference(folder, seed=3, self_conditioning=0.1)
    _, ours = checkpoint.load(folder)
    return ref, GemmaEngine(ours)


class Draws(hf.EntropyBoundSampler):
    """The reference's sampler, drawing our random canvases; also the step being sampled."""

    def __init__(self, seed: int, prompt_len: int, steps: int, bound: float) -> None:
        super().__init__(hf.EntropyBoundSamplerConfig(bound), CANVAS, VOCAB, steps)
        self.seed, self.steps = seed, steps
        self.start = prompt_len - CANVAS  # the first canvas's init moves it to prompt_len

    def initialize_canvas(self, batch_size, device):
        self.start += CANVAS
        self.sampling = self.steps
        return self._tokens(draw(self.steps + 1, RENOISE))

    def renoise_canvas(self, accepted_canvas, cur_step):
        n = int(cur_step)
        self.sampling = n - 1
        noise = self._tokens(draw(n, RENOISE))
        return torch.where(self.accepted_token_mask, accepted_canvas, noise)

    def _tokens(self, d: int) -> torch.Tensor:
        return torch.from_numpy(random_tokens(pass_seed(self.seed, self.start, d), CANVAS, VOCAB))[
            None
        ]

    def multinomial(self, probs, num_samples=1):
        """Gumbel-max over log(probs) with the op's noise for this step: our sampled canvas."""
        seed = pass_seed(self.seed, self.start, draw(self.sampling, SAMPLE))
        g = gumbel_noise_numpy(np.array([seed]), probs.shape[0], probs.shape[1])[0]
        scores = np.log(probs.double().numpy()) + g
        return torch.from_numpy(scores.argmax(-1))[:, None]


def reference(ref, monkeypatch, prompt: list[int], max_tokens: int, seed: int, **knobs):
    """(tokens up to eos and max_tokens, denoising steps) of the reference's generate."""
    req = GenerationRequest([1], **knobs)  # our defaults, which are transformers'
    draws = Draws(seed, len(prompt), req.max_denoising_steps, req.entropy_bound)
    monkeypatch.setattr(ref, "_prepare_sampler", lambda config: draws)
    monkeypatch.setattr(hf.torch, "multinomial", draws.multinomial)
    calls = []
    forward = ref.forward
    monkeypatch.setattr(ref, "forward", lambda **kw: calls.append(1) or forward(**kw))
    eos = knobs.get("end_id", ref.config.text_config.eos_token_id)
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_tokens,
            max_denoising_steps=req.max_denoising_steps,
            sampler_config=hf.EntropyBoundSamplerConfig(req.entropy_bound),
            t_min=req.t_min,
            t_max=req.t_max,
            stability_threshold=req.stability_threshold,
            confidence_threshold=req.confidence_threshold,
            eos_token_id=eos,
        )
    monkeypatch.undo()
    tokens = out.sequences[0, len(prompt) :].tolist()[:max_tokens]
    if eos in tokens:
        tokens = tokens[: tokens.index(eos)]
    return tokens, len(calls)


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (5 + 3 * i,), generator=g).tolist() for i in range(n)]


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers_generate(case, models, monkeypatch):
    ref, engine = models
    knobs = dict(max_denoising_steps=STEPS, **CASES[case])
    batch = prompts(3)
    max_tokens = 2 * CANVAS + 2  # three canvases, the last cut short
    requests = [
        GenerationRequest(p, max_tokens=max_tokens, seed=11 + i, **knobs)
        for i, p in enumerate(batch)
    ]
    results = generate(engine, requests)  # ours batched: the reference runs one at a time
    for i, (p, res) in enumerate(zip(batch, results, strict=True)):
        tokens, steps = reference(ref, monkeypatch, p, max_tokens, seed=11 + i, **knobs)
        assert res.token_ids == tokens, f"{case}, prompt {i}: ours {res.token_ids} vs {tokens}"
        assert sum(b.passes for b in res.blocks) == steps, f"{case}, prompt {i}: steps"
    passes = [b.passes for r in results for b in r.blocks]
    if case == "stable_0":  # confident and nothing to hold: one step a canvas
        assert set(passes) == {1}
    elif case.startswith("stable"):  # the early stop did happen, where the argmax held
        assert min(passes) < STEPS, passes
    else:
        assert set(passes) == {STEPS}


def test_stops_at_eos_as_the_reference(models, monkeypatch):
    ref, engine = models
    prompt = prompts(1, seed=5)[0]
    knobs = dict(max_denoising_steps=STEPS, entropy_bound=2.0)
    full = generate(engine, [GenerationRequest(prompt, max_tokens=3 * CANVAS, **knobs)])[0]
    eos = full.token_ids[min(CANVAS + 2, len(full.token_ids) - 1)]  # ends it in canvas 2
    cut = full.token_ids.index(eos)
    res = generate(engine, [GenerationRequest(prompt, max_tokens=3 * CANVAS, end_id=eos, **knobs)])
    tokens, steps = reference(ref, monkeypatch, prompt, 3 * CANVAS, seed=0, end_id=eos, **knobs)
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
