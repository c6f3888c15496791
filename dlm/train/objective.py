"""The joint autoregressive + block-diffusion objective of Nemotron-Labs Diffusion.

L = L_AR + w * L_diffusion, computed in ONE forward over the concatenation [noisy ; clean]
(the vectorised block-diffusion training of BD3-LM, Arriola et al. 2025, as used by
Nemotron-Labs Diffusion):

- clean copy: causal attention; position i predicts token i + 1 (L_AR);
- noisy copy: the window split into blocks of `block` tokens, each masked at its own ratio
  t ~ U(t_min, 1); a noisy position in block k sees the clean tokens of blocks < k and the noisy
  tokens of block k (block-bidirectional); a masked position predicts its own token (L_diff,
  averaged over masked positions).

With `complementary=True` a second noisy copy carries the complementary mask, so every position
is supervised by the diffusion loss in every step (complementary masking, as in LLaDA-style
fine-tuning recipes) at the cost of a 3L-token forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlm.model import DiffusionLM


def joint_mask(length: int, block: int, copies: int, device=None) -> torch.Tensor:
    """Boolean attention mask [(copies + 1) L] x [(copies + 1) L]: noisy copies, then clean."""
    i = torch.arange(length, device=device)
    blk = i // block
    causal = i[None, :] <= i[:, None]
    prev_blocks = blk[None, :] < blk[:, None]  # noisy query (row) -> clean key (col)
    same_block = blk[None, :] == blk[:, None]
    n = (copies + 1) * length
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    for c in range(copies):
        s = slice(c * length, (c + 1) * length)
        mask[s, s] = same_block
        mask[s, copies * length :] = prev_blocks
    mask[copies * length :, copies * length :] = causal
    return mask


def noise(
    x: torch.Tensor,
    block: int,
    mask_id: int,
    t_min: float = 0.05,
    generator: torch.Generator | None = None,
    full_share: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each block of x [B, L] at its own ratio t ~ U(t_min, 1), or entirely for a
    `full_share` of the blocks (what a one-shot draft of a whole block sees). Returns (noisy,
    masked)."""
    b, length = x.shape
    nblocks = (length + block - 1) // block
    t = torch.rand(b, nblocks, device=x.device, generator=generator) * (1 - t_min) + t_min
    if full_share > 0:
        full = torch.rand(b, nblocks, device=x.device, generator=generator) < full_share
        t = torch.where(full, torch.full_like(t, 1.0 + 1e-6), t)
    t = t.repeat_interleave(block, dim=1)[:, :length]
    masked = torch.rand(b, length, device=x.device, generator=generator) < t
    return torch.where(masked, torch.full_like(x, mask_id), x), masked


def joint_loss(
    model: DiffusionLM,
    x: torch.Tensor,
    block: int,
    diffusion_weight: float,
    complementary: bool = False,
    ar_weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    full_share: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Losses for a batch of windows x [B, L] (int64). Returns loss, ar, diffusion, accuracy."""
    b, length = x.shape
    cfg = model.cfg
    noisy, masked = noise(x, block, cfg.mask_token_id, generator=generator, full_share=full_share)
    copies = [noisy]
    masks = [masked]
    if complementary:
        copies.append(torch.where(masked, x, torch.full_like(x, cfg.mask_token_id)))
        masks.append(~masked)
    inp = torch.cat(copies + [x], dim=1)
    pos = torch.arange(length, device=x.device).repeat(len(copies) + 1)[None].expand(b, -1)
    attn = joint_mask(length, block, len(copies), x.device)[None].expand(b, -1, -1)
    past_k, past_v = model.empty_past(b, x.device, next(model.parameters()).dtype)
    h, _, _ = model.hidden(inp, pos, attn, past_k, past_v)
    logits = model.logits(h).float()  # [B, (copies + 1) L, V]
    clean = logits[:, len(copies) * length :]
    ar_ce = F.cross_entropy(
        clean[:, :-1].reshape(-1, clean.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
    ).view(b, length - 1)
    ar = (
        (ar_ce * ar_weights[:, 1:]).sum() / ar_weights[:, 1:].sum().clamp(min=1)
        if ar_weights is not None
        else ar_ce.mean()
    )
    diff_terms, correct, count = [], 0, 0
    for c, m in enumerate(masks):
        lc = logits[:, c * length : (c + 1) * length][m]
        target = x[m]
        diff_terms.append(F.cross_entropy(lc, target, reduction="sum"))
        correct += (lc.argmax(-1) == target).sum()
        count += int(m.sum())
    diff = torch.stack(diff_terms).sum() / max(count, 1)
    return {
        "loss": ar + diffusion_weight * diff,
        "ar": ar.detach(),
        "diffusion": diff.detach(),
        "diff_acc": torch.as_tensor(correct / max(count, 1)).detach(),
    }
