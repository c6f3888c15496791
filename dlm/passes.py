"""One engine pass as every engine computes it: the model's forward, the request's penalties on
the logits, then the fused DenoiseStep (a token and its confidence per output position).

`TorchEngine` runs `run_pass`, the exporter traces it into the ONNX graph (export/onnx_export.py:
ONNX Runtime and TensorRT run that) and the parity checks take it as the reference, so that no
engine can drift from another.

Penalties, per row (`dlm.sampling.request` checks their ranges):
- `repetition_penalty` r (CTRL, transformers): a token already counted has its logit divided by r
  if positive, multiplied by r if not; 1 is off;
- `frequency_penalty` f and `presence_penalty` p (OpenAI): logit - f * count - p * [count > 0];
  0 is off.
What counts is the request's own generated tokens before the position being predicted (not the
prompt: a completion may repeat its prompt's names freely). The host gives each row the tokens in
the order they were generated (`penalty_ids` [B, H]) and, per output position, how many of them
precede the token it predicts (`penalty_len` [B, K]); see `Sequence.make_pass`. That per-position
count is what keeps self-speculation lossless: verify slot j counts the draft tokens before it,
as an `ar` step at that position counts them. Rows whose penalty_len is 0 are left exactly as
they were (no count, no change), and the PyTorch engine skips the work when no row counts any.
"""

from __future__ import annotations

import torch

from dlm.model import DiffusionLM

NO_PENALTIES = (1.0, 0.0, 0.0)  # repetition, frequency, presence: off


def penalize(
    logits: torch.Tensor,
    penalty_ids: torch.Tensor,
    penalty_len: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """logits [B, K, V]; penalty_ids [B, H]; penalty_len [B, K]; the three penalties [B]."""
    b, k, _ = logits.shape
    h = penalty_ids.shape[1]
    counted = torch.arange(h, device=logits.device)[None, None, :] < penalty_len[..., None]
    index = penalty_ids[:, None, :].expand(b, k, h)
    counts = torch.zeros(logits.shape, device=logits.device, dtype=torch.float32)
    counts = counts.scatter_add(2, index, counted.to(torch.float32))  # [B, K, V]
    seen = counts > 0
    r = repetition.to(logits.dtype)[:, None, None]
    logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    cut = frequency[:, None, None] * counts + presence[:, None, None] * seen.to(torch.float32)
    return logits - cut.to(logits.dtype)


def run_pass(model: DiffusionLM, x: dict[str, torch.Tensor], step, penalties: bool = True, kv=None):
    """(token [B, K], confidence [B, K], new_k, new_v, logits [B, K, V]) of one graph run on the
    inputs of export/contract.INPUTS; `step` is a DenoiseStep implementation; `penalties=False`
    skips them (exact when no row's penalty_len is above 0). With a K/V layout `kv`
    (`dlm.kv.SlotPass`) the pass attends through it instead of `past_k`/`past_v`, and new_k /
    new_v are None (the layout kept them)."""
    shape = [x[k] for k in ("past_len", "n_new", "tail", "fork", "out_index")]
    if kv is None:
        logits, new_k, new_v = model(x["input_ids"], x["past_k"], x["past_v"], *shape)
    else:
        logits, new_k, new_v = model.run(x["input_ids"], kv, *shape), None, None
    if penalties:
        logits = penalize(
            logits,
            x["penalty_ids"],
            x["penalty_len"],
            x["repetition_penalty"],
            x["frequency_penalty"],
            x["presence_penalty"],
        )
    token, confidence = step(logits, x["temperature"], x["seed"])
    return token, confidence, new_k, new_v, logits
