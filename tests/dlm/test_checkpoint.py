"""Checkpoints in each family's real layout load back; broken ones fail naming the problem."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dlm import checkpoint
from dlm.hf_config import CheckpointError
from tests.conftest import tiny_model

FAMILIES = {
    "nld": {},
    "llada": {"family": "llada", "attention": "bidirectional", "num_kv_heads": 4},
    "dream": {
        "family": "dream",
        "attention": "bidirectional",
        "qkv_bias": True,
        "logits_shift": True,
    },
}
REAL_NAMES = {
    "nld": [
        "encoder.embed_tokens.weight",
        "encoder.layers.1.self_attn.q_proj.weight",
        "encoder.layers.0.mlp.gate_proj.weight",
        "encoder.norm.weight",
        "diffusion_head.weight",
    ],
    "llada": [
        "model.transformer.wte.weight",
        "model.transformer.blocks.1.attn_out.weight",
        "model.transformer.blocks.0.ff_proj.weight",
        "model.transformer.blocks.0.ff_out.weight",
        "model.transformer.ln_f.weight",
        "model.transformer.ff_out.weight",
    ],
    "dream": [
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.q_proj.bias",
        "model.layers.0.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ],
}


def names_in(folder):
    index = folder / checkpoint.INDEX
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    with safe_open(folder / checkpoint.SINGLE, "pt") as f:
        return set(f.keys())


def outputs(model):
    ids = torch.tensor([[5, 9, 17, 33]])
    pk, pv = model.empty_past(1)
    n = torch.tensor([4])
    return model(ids, pk, pv, torch.tensor([0]), n, n, torch.tensor([0]), torch.arange(4)[None])[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("shard", [None, 20_000])
def test_round_trip_in_family_layout(tmp_path, family, shard):
    model = tiny_model(**FAMILIES[family])
    checkpoint.save(model, tmp_path, max_shard_bytes=shard)
    assert set(REAL_NAMES[family]) <= names_in(tmp_path)
    if shard:
        assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    hf = json.loads((tmp_path / "config.json").read_text())
    del hf["dlm"]  # load from the family's own config keys, as for a downloaded checkpoint
    (tmp_path / "config.json").write_text(json.dumps(hf))
    loaded = checkpoint.load(tmp_path)
    assert loaded.cfg.family == family
    torch.testing.assert_close(outputs(loaded), outputs(model))


def test_missing_tensor_named(tmp_path):
    checkpoint.save(tiny_model(), tmp_path)
    with safe_open(tmp_path / checkpoint.SINGLE, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "encoder.norm.weight"}
    save_file(tensors, tmp_path / checkpoint.SINGLE)
    with pytest.raises(CheckpointError, match="missing tensors.*encoder.norm.weight"):
        checkpoint.load(tmp_path)


def test_unexpected_and_misshaped_named(tmp_path):
    checkpoint.save(tiny_model(), tmp_path)
    with safe_open(tmp_path / checkpoint.SINGLE, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file({**tensors, "encoder.extra.weight": torch.zeros(2)}, tmp_path / checkpoint.SINGLE)
    with pytest.raises(CheckpointError, match="unexpected tensors.*encoder.extra.weight"):
        checkpoint.load(tmp_path)
    tensors["encoder.norm.weight"] = torch.zeros(7)
    save_file(tensors, tmp_path / checkpoint.SINGLE)
    with pytest.raises(CheckpointError, match=r"encoder.norm.weight.*\(7,\).*\(32,\)"):
        checkpoint.load(tmp_path)


def test_missing_shard_and_config_named(tmp_path):
    checkpoint.save(tiny_model(), tmp_path, max_shard_bytes=20_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        checkpoint.load(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        checkpoint.load(tmp_path)


def test_config_missing_key_named(tmp_path):
    checkpoint.save(tiny_model(), tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    del hf["dlm"], hf["mask_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match="mask_token_id"):
        checkpoint.load(tmp_path)
