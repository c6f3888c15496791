"""Stateless incremental detokenisation: streamed texts concatenate to decode(all ids)."""

import random

import pytest

from dlm.tokenizer import TextTokenizer
from serving.detok import MASK_PLACEHOLDER, Postprocessor, block_text, safe, text_delta


@pytest.fixture(scope="module")
def tok(tiny_checkpoint):
    return TextTokenizer(tiny_checkpoint)


def stream(decode, ids, cuts):
    """Texts of the responses of a stream whose i-th response covers ids[:cuts[i]]."""
    texts, shown = [], 0
    for i, n in enumerate(cuts):
        final = i == len(cuts) - 1
        texts.append(text_delta(decode, ids[:n], shown, final))
        shown = n
    return texts


def test_safe_drops_only_a_trailing_replacement_run():
    assert safe("ab\ufffd\ufffd") == "ab"
    assert safe("a\ufffdb") == "a\ufffdb"


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n    return x + 1\n",
        "print('héllo wörld') # ünïcödé ✓ 日本",
        "  leading spaces  and  gaps ",
        "emoji 🙂🙃 and more",
    ],
)
def test_concatenation_equals_decode_for_every_cut(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    for step in (1, 2, 3):
        cuts = list(range(step, len(ids), step)) + [len(ids)]
        texts = stream(tok.decode, ids, cuts)
        assert "".join(texts) == text
        assert all("\ufffd" not in t for t in texts)  # no broken character was ever sent


def test_random_ids_concatenate_and_never_resend(tok):
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(4, tok.vocab_size) for _ in range(rng.randrange(1, 40))]
        cuts = sorted(set(rng.sample(range(1, len(ids) + 1), k=min(len(ids), 5)) + [len(ids)]))
        assert "".join(stream(tok.decode, ids, cuts)) == tok.decode(ids)


def test_final_response_sends_an_incomplete_character(tok):
    ids = tok.encode("✓")
    assert len(ids) > 1  # a multi-byte character split over byte-level tokens
    assert text_delta(tok.decode, ids[:1], 0, final=False) == ""
    assert text_delta(tok.decode, ids[:1], 0, final=True) == tok.decode(ids[:1])


def test_shown_beyond_the_ids_sends_nothing(tok):
    ids = tok.encode("abc def")
    assert text_delta(tok.decode, ids[:1], len(ids), final=True) == ""


def test_block_text_shows_masks(tok, tiny_checkpoint):
    mask = Postprocessor(tiny_checkpoint).mask_id
    ids = tok.encode("def f")
    block = ids[:1] + [mask, mask] + ids[1:]
    assert block_text(tok.decode, block, mask) == (
        tok.decode(ids[:1]) + MASK_PLACEHOLDER * 2 + tok.decode(ids[1:])
    )


def test_postprocessor(tiny_checkpoint, tok):
    post = Postprocessor(tiny_checkpoint)
    ids = tok.encode("import os\n")
    assert post(ids, 0, True, []) == ("import os\n", "")
