import pytest

from dlm.config import PRESETS, ModelConfig, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    cfg = preset(name)
    assert cfg.num_heads % cfg.num_kv_heads == 0


def test_public_facts():
    nld3 = preset("nemotron-labs-diffusion-3b")
    assert (nld3.hidden_size, nld3.num_layers, nld3.num_heads, nld3.num_kv_heads) == (
        3072,
        26,
        32,
        8,
    )
    assert (nld3.vocab_size, nld3.mask_token_id, nld3.block_length) == (131072, 100, 32)
    assert nld3.yarn is not None and nld3.rope_theta == 1e6
    llada = preset("llada-8b")
    assert (llada.mask_token_id, llada.eos_token_id, llada.attention) == (
        126336,
        126081,
        "bidirectional",
    )
    assert preset("dream-7b").logits_shift and preset("dream-7b").qkv_bias


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("num_kv_heads", 3, "divisor of num_heads"),
        ("mask_token_id", 10**9, "token id"),
        ("attention", "sideways", "block_causal or bidirectional"),
        ("dropout", 1.5, "[0, 1)"),
    ],
)
def test_bad_field_named(field, value, words):
    with pytest.raises(ValueError, match=field) as e:
        preset("tiny", **{field: value})
    assert words in str(e.value)


def test_from_dict_rejects_unknown():
    with pytest.raises(ValueError, match="unknown fields"):
        ModelConfig.from_dict({"hidden_sise": 3})


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset='nope'"):
        preset("nope")
