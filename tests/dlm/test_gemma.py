"""DiffusionGemma's text model against transformers' DiffusionGemmaForBlockDiffusion.

Each case builds a tiny random reference, writes it with `save_pretrained`, loads it with ours and
compares, on the same token ids, (a) the encoder's cache and hidden states over a context and then
over a second chunk (a committed canvas) after it, (b) canvas-step logits over that cache, on a
first step (no self-conditioning) and on a later one (random previous logits, one row masked off).
The reference runs the way its `generate` drives it: encoder prefill into a DynamicCache, then
decoder steps over the cache.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dlm.gemma import checkpoint
from dlm.gemma.config import GemmaConfig
from dlm.gemma.model import extend
from dlm.hf_config import CheckpointError

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
from transformers import DynamicCache  # noqa: E402

from benchmarks.gemma_reference import BASE, CANVAS, build_reference  # noqa: E402

CONTEXT, BATCH = 9, 2

CASES = {
    # The reference has no layer without experts: one expert every token takes is a dense MLP.
    "dense": dict(num_experts=1, top_k_experts=1),
    "experts": dict(num_experts=8, top_k_experts=3),
    "sliding_window": dict(
        num_hidden_layers=5,
        layer_types=["sliding_attention"] * 2
        + ["full_attention", "sliding_attention"]
        + ["full_attention"],
        sliding_window=4,
    ),
    "softcap": dict(final_logit_softcapping=1.0),  # logits ~ N(0, 1): the cap bites
    "untied": dict(tie_word_embeddings=False),
}


def assert_close(ours, theirs, what: str, rel: float = 1e-4) -> None:
    diff = (ours.float() - theirs.float()).abs()
    scale = theirs.abs().max().item()
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    assert diff.max().item() <= rel * scale, (
        f"{what}: max |diff| {diff.max().item():.3g} (mean {diff.mean().item():.3g}) "
        f"> {rel} x max |reference| {scale:.3g}"
    )


def compare_cache(ours, cache, what: str) -> None:
    for i, (k, v) in enumerate(ours):
        ref = cache.layers[i]
        kept = ref.keys.shape[2]  # a sliding layer keeps only its last window - 1 entries
        assert_close(k[:, :, -kept:], ref.keys, f"{what}: layer {i} keys")
        assert_close(v[:, :, -kept:], ref.values, f"{what}: layer {i} values")


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(case, tmp_path):
    ref = build_reference(tmp_path, **CASES[case])
    cfg, ours = checkpoint.load(tmp_path)
    torch.manual_seed(1)
    context = torch.randint(0, BASE["vocab_size"], (BATCH, CONTEXT))
    committed = torch.randint(0, BASE["vocab_size"], (BATCH, CANVAS))
    positions = torch.arange(CONTEXT + 2 * CANVAS).expand(BATCH, -1)
    first, second = positions[:, :CONTEXT], positions[:, CONTEXT : CONTEXT + CANVAS]
    with torch.no_grad():
        # (a) encoder: prefill, then a committed canvas over the cache
        cache = DynamicCache(config=ref.config.get_text_config(decoder=True))
        out = ref.model.encoder(input_ids=context, cache=cache, position_ids=first)
        new, hidden = ours.encode(context, first)
        assert_close(hidden, out.last_hidden_state, f"{case}: encoder hidden")
        compare_cache(new, cache, f"{case}: prefill")
        ours_cache = extend(None, new)

        # (b) canvas steps over the prefilled cache: first, then self-conditioned
        canvas = torch.randint(0, BASE["vocab_size"], (BATCH, CANVAS))
        step = dict(decoder_input_ids=canvas, cache=cache, decoder_position_ids=second)
        theirs = ref(**step).logits
        assert_close(ours.denoise(canvas, second, None, ours_cache), theirs, f"{case}: step 1")
        previous = 3 * torch.randn(BATCH, CANVAS, BASE["vocab_size"])
        rows = torch.tensor([True, False])
        theirs = ref(**step, self_conditioning_logits=previous, self_conditioning_mask=rows).logits
        mine = ours.denoise(canvas, second, previous, ours_cache, self_conditioning_rows=rows)
        assert_close(mine, theirs, f"{case}: self-conditioned step")

        out = ref.model.encoder(input_ids=committed, cache=cache, position_ids=second)
        new, hidden = ours.encode(committed, second, ours_cache)
        ours_cache = extend(ours_cache, new)
        assert_close(hidden, out.last_hidden_state, f"{case}: encoder hidden, second chunk")
        compare_cache(ours_cache, cache, f"{case}: after the second chunk")

        third = positions[:, CONTEXT + CANVAS :]
        theirs = ref(**dict(step, decoder_position_ids=third), self_conditioning_logits=previous)
        mine = ours.denoise(canvas, third, previous, ours_cache)
        assert_close(mine, theirs.logits, f"{case}: step over the extended cache")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma")
    build_reference(folder)
    return folder


def copy_of(saved, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(saved, folder)
    return folder


def assert_same_weights(model, reference) -> None:
    theirs = reference.state_dict()
    for name, t in model.state_dict().items():
        assert torch.equal(t, theirs[name]), name


def rewrite(folder, edit) -> None:
    path = folder / "model.safetensors"
    with safe_open(path, "pt") as f:
        tensors = {n: f.get_tensor(n) for n in f.keys()}
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_vision_tower_skipped_unread(saved, caplog, monkeypatch):
    with safe_open(saved / "model.safetensors", "pt") as f:
        vision = [n for n in f.keys() if n.startswith(checkpoint.VISION)]
    assert vision, "the reference writes a vision tower"
    read = []

    class Recording:
        def __init__(self, path, framework):
            self.file = safe_open(path, framework)

        def __enter__(self):
            self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def get_tensor(self, name):
            read.append(name)
            return self.file.get_tensor(name)

    monkeypatch.setattr(checkpoint, "safe_open", Recording)
    with caplog.at_level(logging.INFO, logger="dlm.gemma.checkpoint"):
        cfg, model = checkpoint.load(saved)
    assert cfg.has_vision
    assert f"skipped {len(vision)} vision tensors" in caplog.text
    assert read and not set(read) & set(vision)


def test_loads_without_vision(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    rewrite(folder, lambda t: [t.pop(n) for n in list(t) if n.startswith(checkpoint.VISION)])
    hf = json.loads((folder / "config.json").read_text())
    del hf["vision_config"]
    (folder / "config.json").write_text(json.dumps(hf))
    cfg, model = checkpoint.load(folder)
    _, reference = checkpoint.load(saved)
    assert not cfg.has_vision
    assert_same_weights(model, reference)


def test_missing_tensor_named(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    name = "model.decoder.layers.1.self_attn.k_proj.weight"
    rewrite(folder, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=f"missing tensor '{name}'"):
        checkpoint.load(folder)


def test_misshaped_tensor_named(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    name = "model.decoder.layers.0.experts.down_proj"
    rewrite(folder, lambda t: t.update({name: torch.zeros(4, 32, 15)}))
    with pytest.raises(
        CheckpointError, match=rf"'{name}' has shape \(4, 32, 15\), expected \(4, 32, 16\)"
    ):
        checkpoint.load(folder)


def test_unknown_tensor_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    rewrite(folder, lambda t: t.update({"model.decoder.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        checkpoint.load(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("hidden_size"), "missing key text_config.hidden_size"),
        (lambda t: t.update(num_experts="4"), r"text_config.num_experts='4': must be of type int"),
        (lambda t: t["layer_types"].__setitem__(0, "local"), r"layer_types\[0\]='local'"),
        (lambda t: t.update(use_bidirectional_attention="all"), "use_bidirectional_attention"),
        (lambda t: t.update(top_k_experts=9), "config.top_k_experts=9: must be <= 4"),
        (lambda t: t["per_layer_config"]["1"].update(head_dim=32), "per_layer_config"),
    ],
)
def test_config_errors_name_the_key(saved, edit, message):
    hf = json.loads((saved / "config.json").read_text())
    edit(hf["text_config"])
    with pytest.raises(CheckpointError, match=message):
        GemmaConfig.from_hf(hf)


def test_sharded_checkpoint(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    with safe_open(folder / "model.safetensors", "pt") as f:
        tensors = {n: f.get_tensor(n) for n in f.keys()}
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, folder / file, metadata={"format": "pt"})
    weight_map = {n: file for file, part in shards.items() for n in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _, model = checkpoint.load(folder)
    _, reference = checkpoint.load(saved)
    assert_same_weights(model, reference)
