"""transformers' DiffusionGemma as the reference of ours: a random checkpoint in its layout,
and its `generate` drawing what our canvas policy draws.

`build_reference` makes a random `DiffusionGemmaForBlockDiffusion` (vision tower included) and
saves it; `reference_generate` runs its `generate` with its sampler and `torch.multinomial`
replaced by ones that draw what `dlm.sampling.canvas` draws (`random_tokens` for the initial and
renoised canvases, the DenoiseStep op's Gumbel noise for the sampled one), keyed by the same
seed, canvas position and step, so that both sides can be compared token for token. Used by
tests/dlm/test_gemma_generate.py and `benchmarks.gemma_serving`; transformers is a test and
benchmark dependency only.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
from transformers.models.diffusion_gemma import generation_diffusion_gemma as hf

from dlm.sampling import GenerationRequest
from dlm.sampling.canvas import RENOISE, SAMPLE, draw, random_tokens
from dlm.sampling.sequence import pass_seed
from plugins.denoise_step.reference import gumbel_noise_numpy

BASE = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    layer_types=["sliding_attention", "full_attention", "full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    global_head_dim=16,  # proportional RoPE on 16 dims at factor 0.25: 2 of 8 pairs rotate
    num_global_key_value_heads=1,
    sliding_window=64,  # wider than any context here, except in the "sliding_window" case
    num_experts=4,
    top_k_experts=2,
    moe_intermediate_size=16,
    max_position_embeddings=256,
)
VISION = dict(
    model_type="gemma4_vision",
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=8,
)
CANVAS = 6


def randomize(ref, seed: int) -> None:
    """Weights at a scale where every part matters (the default init leaves logits ~1e-3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():  # tied weights are one parameter here
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.3 * noise if p.ndim == 1 else noise / p.shape[-1] ** 0.5)
        for name, b in ref.named_buffers():
            if name.endswith("layer_scalar"):  # each side's own: they differ here
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


def build_reference(
    folder,
    seed: int = 0,
    self_conditioning: float = 1.0,
    canvas_length: int = CANVAS,
    attention: str = "eager",
    **overrides,
):
    """Saved to `folder`; `self_conditioning` scales that path's output weights (below 1 the
    random model's steps stop amplifying float rounding from one step to the next)."""
    tie = overrides.pop("tie_word_embeddings", True)
    cfg = DiffusionGemmaConfig(
        text_config=dict(BASE, **overrides),
        vision_config=VISION,
        canvas_length=canvas_length,
        tie_word_embeddings=tie,
        attn_implementation=attention,
    )
    torch.manual_seed(seed)
    ref = DiffusionGemmaForBlockDiffusion(cfg).eval()
    randomize(ref, seed)
    with torch.no_grad():
        ref.model.decoder.self_conditioning.down_proj.weight.mul_(self_conditioning)
    ref.save_pretrained(folder)
    return ref


class Draws(hf.EntropyBoundSampler):
    """The reference's sampler, drawing our random canvases; also the step being sampled."""

    def __init__(self, seed: int, prompt_len: int, canvas: int, vocab: int, steps: int, bound):
        super().__init__(hf.EntropyBoundSamplerConfig(bound), canvas, vocab, steps)
        self.seed, self.steps, self.canvas, self.vocab = seed, steps, canvas, vocab
        self.start = prompt_len - canvas  # the first canvas's init moves it to prompt_len

    def initialize_canvas(self, batch_size, device):
        self.start += self.canvas
        self.sampling = self.steps
        return self._tokens(draw(self.steps + 1, RENOISE))

    def renoise_canvas(self, accepted_canvas, cur_step):
        n = int(cur_step)
        self.sampling = n - 1
        noise = self._tokens(draw(n, RENOISE))
        return torch.where(self.accepted_token_mask, accepted_canvas, noise)

    def _tokens(self, d: int) -> torch.Tensor:
        seed = pass_seed(self.seed, self.start, d)
        return torch.from_numpy(random_tokens(seed, self.canvas, self.vocab))[None]

    def multinomial(self, probs, num_samples=1):
        """Gumbel-max over log(probs) with the op's noise for this step: our sampled canvas."""
        seed = pass_seed(self.seed, self.start, draw(self.sampling, SAMPLE))
        g = gumbel_noise_numpy(np.array([seed]), probs.shape[0], probs.shape[1])[0]
        scores = np.log(probs.double().numpy()) + g
        return torch.from_numpy(scores.argmax(-1))[:, None]


def generate_kwargs(request: GenerationRequest, eos: int) -> dict:
    """A request's knobs as `generate`'s (our defaults are transformers')."""
    return dict(
        max_new_tokens=request.max_tokens,
        max_denoising_steps=request.max_denoising_steps,
        sampler_config=hf.EntropyBoundSamplerConfig(request.entropy_bound),
        t_min=request.t_min,
        t_max=request.t_max,
        stability_threshold=request.stability_threshold,
        confidence_threshold=request.confidence_threshold,
        eos_token_id=eos,
    )


def reference_generate(ref, request: GenerationRequest) -> tuple[list[int], int]:
    """(tokens up to eos and max_tokens, denoising steps) of `ref.generate` on one request,
    drawing what our canvas policy draws for it."""
    cfg = ref.config
    eos = cfg.text_config.eos_token_id if request.end_id is None else request.end_id
    prompt = request.prompt_ids
    draws = Draws(
        request.seed,
        len(prompt),
        cfg.canvas_length,
        cfg.text_config.vocab_size,
        request.max_denoising_steps,
        request.entropy_bound,
    )
    calls = []
    forward = ref.forward
    with (
        mock.patch.object(ref, "_prepare_sampler", lambda config: draws),
        mock.patch.object(hf.torch, "multinomial", draws.multinomial),
        mock.patch.object(ref, "forward", lambda **kw: calls.append(1) or forward(**kw)),
        torch.no_grad(),
    ):
        out = ref.generate(torch.tensor([prompt]), **generate_kwargs(request, eos))
    tokens = out.sequences[0, len(prompt) :].tolist()[: request.max_tokens]
    if eos in tokens:
        tokens = tokens[: tokens.index(eos)]
    return tokens, len(calls)
