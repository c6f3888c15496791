"""Tests for the stdlib corpus and the byte-level BPE tokenizer (dlm.train: sources, prompts,
corpus, tokenizer).

Fast: the tokenizer is trained on a few dozen stdlib files with a 300-token vocabulary.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm.train import corpus, prompts, sources
from dlm.train.sources import SourceFile
from dlm.train.tokenizer import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

TRICKY = [
    "",
    " ",
    "\n",
    "x",
    "def f(x):\n    return x\n",
    "class A:\n    def m(self):\n        if x:\n            return 1\n",
    "\tif x:\n\t\treturn y\t# tab comment\n",
    "mixed \t \t indentation\n  \t  x",
    "s = 'héllo wörld – ∑ 日本語 🐍🎉 👨‍👩‍👧'\n",
    "line\r\nwindows\rold mac\n",
    "trailing spaces   \n\n\n   ",
    "\x00\x0c\u00a0\u2003\ufeff nul, form feed, nbsp, em space, bom",
    " leading space, no prefix added",
    "<|eos|><|mask|> <|pad|>text that looks special<|bos|>",
    "x = 10000000000 + 0x1F - 1e-9j",
]


@pytest.fixture(scope="module")
def stdlib_files() -> list[SourceFile]:
    return sources.collect_files()


@pytest.fixture(scope="module")
def tok(stdlib_files):
    # Small but varied: every 40th file, so the test does not depend on one package.
    return train_tokenizer(stdlib_files[::40], vocab_size=300)


@pytest.mark.parametrize("text", TRICKY)
def test_roundtrip_tricky(tok, text):
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=False) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_any_text(tok, text):
    assert tok.decode(tok.encode(text).ids) == text


def test_roundtrip_stdlib_files(tok, stdlib_files):
    sample = stdlib_files[7::97]
    for f, enc in zip(sample, tok.encode_batch([f.text for f in sample]), strict=True):
        assert tok.decode(enc.ids) == f.text, f.path


def test_special_token_ids_fixed(tok, tmp_path):
    assert (PAD_ID, BOS_ID, EOS_ID, MASK_ID) == (0, 1, 2, 3)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i
    save_tokenizer(tok, tmp_path)
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert [loaded.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert loaded.encode("def f(x):\n    return x").ids == tok.encode("def f(x):\n    return x").ids
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|eos|>" and config["mask_token"] == "<|mask|>"
    assert config["added_tokens_decoder"]["3"]["content"] == "<|mask|>"


def test_text_never_becomes_special_ids(tok, tmp_path):
    save_tokenizer(tok, tmp_path)
    for t in (tok, load_tokenizer(tmp_path)):
        ids = t.encode("<|eos|> <|mask|> <|pad|> <|bos|>").ids
        assert not set(ids) & {PAD_ID, BOS_ID, EOS_ID, MASK_ID}, ids


def test_no_implicit_bos_eos(tok):
    assert tok.encode("").ids == []
    assert tok.encode("x").ids == tok.encode("x", add_special_tokens=False).ids


def test_indentation_is_cheap(stdlib_files):
    small = train_tokenizer(stdlib_files[::10], vocab_size=600)
    for indent in ("\n", "\n    ", "\n        ", "    ", "        "):
        assert len(small.encode(indent).ids) == 1, repr(indent)


def test_vocab_size_validated(stdlib_files):
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(stdlib_files[:2], vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size=70000"):
        train_tokenizer(stdlib_files[:2], vocab_size=70000)


def test_normalize_source():
    assert sources.normalize_source("\ufeffa = 1  \r\nb = 2\t\r\rc\n\n\n") == "a = 1\nb = 2\n\nc\n"
    assert sources.normalize_source("  \n\t\n") == ""


def test_is_test_path():
    assert sources.is_test_path("test/test_os.py")
    assert sources.is_test_path("unittest/test/support.py")
    assert sources.is_test_path("distutils/tests/test_util.py")
    assert sources.is_test_path("foo/test_bar.py")
    assert not sources.is_test_path("unittest/case.py")
    assert not sources.is_test_path("contest.py")


def test_scan_exclusions(tmp_path):
    files = {
        "a.py": "x = 1   \r\n",
        "pkg/b.py": "def f():\n    return 2\n",
        "empty.py": "\n\n",
        "latin.py": "s = 'caf\xe9'\n".encode("latin-1"),
        "big.py": "x = 1\n" * 100,
        "site-packages/third.py": "x\n",
        "idlelib/ide.py": "x\n",
        "pkg/__pycache__/c.py": "x\n",
        "lib2to3/tests/data/odd.py": "x\n",
        "lib2to3/tests/real.py": "x\n",
        "test/test_a.py": "x\n",
        "notes.txt": "not python\n",
    }
    for rel, content in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    kept, skipped = sources.scan_sources(tmp_path, max_bytes=500)
    assert [f.path for f in kept] == ["a.py", "lib2to3/tests/real.py", "pkg/b.py", "test/test_a.py"]
    assert kept[0].text == "x = 1\n"
    assert skipped == {"big.py": "too_large", "empty.py": "empty", "latin.py": "not_utf8"}
    no_tests = sources.collect_files(tmp_path, include_tests=False, max_bytes=500)
    assert [f.path for f in no_tests] == ["a.py", "pkg/b.py"]


def test_stdlib_collection(stdlib_files):
    paths = [f.path for f in stdlib_files]
    assert paths == sorted(paths) and len(paths) == len(set(paths))
    assert "os.py" in paths and "asyncio/tasks.py" in paths
    banned = ("site-packages/", "idlelib/", "turtledemo/", "__pycache__", "lib2to3/tests/data/")
    assert not [p for p in paths if any(b in p for b in banned)]
    no_tests = sources.collect_files(include_tests=False)
    assert 0 < len(no_tests) < len(stdlib_files)
    assert not [f.path for f in no_tests if sources.is_test_path(f.path)]


def test_split_deterministic_and_disjoint(stdlib_files):
    train, held = sources.split_files(stdlib_files)
    train2, held2 = sources.split_files(list(reversed(stdlib_files)))
    assert {f.path for f in train} == {f.path for f in train2}
    assert {f.path for f in held} == {f.path for f in held2}
    assert not {f.path for f in train} & {f.path for f in held}
    assert len(train) + len(held) == len(stdlib_files)
    assert 0.01 < len(held) / len(stdlib_files) < 0.06


def test_split_is_pinned():
    # The split must be the same on every machine: pin the hash scheme on fixed paths.
    paths = [f"pkg/mod_{i}.py" for i in range(2000)]
    held = [p for p in paths if sources.is_held_out(p)]
    assert len(held) == 57
    assert held[:3] == ["pkg/mod_23.py", "pkg/mod_88.py", "pkg/mod_147.py"]
    assert not sources.is_held_out("os.py") and sources.is_held_out("os.py", fraction=1.0)
    with pytest.raises(ValueError, match="fraction=1.5"):
        sources.is_held_out("os.py", fraction=1.5)


def test_held_out_prompts(stdlib_files):
    _, held = sources.split_files(stdlib_files)
    got = prompts.held_out_prompts(64, held)
    assert got == prompts.held_out_prompts(64, list(reversed(held)))
    assert len(got) == 64 and len({p.id for p in got}) == 64
    held_paths = {f.path for f in held}
    assert len({p.path for p in got}) >= 20  # spread over many modules
    for p in got:
        assert p.path in held_paths
        assert len(p.prompt) <= prompts.PROMPT_MAX_CHARS
        assert p.prompt.startswith(("def ", "async def ")), p.prompt
        assert "(" in p.prompt and "\n" in p.prompt and not p.prompt.endswith("\n")
        assert p.reference.startswith("\n") and p.reference.strip()
        # prompt + reference is a contiguous stretch of the (dedented) file.
        source = next(f.text for f in held if f.path == p.path)
        last = (p.prompt + p.reference).split("\n")[-1].strip()
        assert last in source


def test_file_context_keeps_whole_top_level_statements():
    text = '"""Doc.\n\nMore.\n"""\nimport os\n\nX = 1\n\n@dec\ndef f():\n    pass\n\nclass A:\n'
    text += "    def g(self):\n        pass\n"
    # Never inside the docstring (its lines start at column 0 too), never past the function.
    assert prompts.file_context(text, 10, 1000) == '"""Doc.\n\nMore.\n"""\nimport os\n\nX = 1\n\n'
    assert prompts.file_context(text, 14, 1000).endswith("    pass\n\n")  # before class A
    assert prompts.file_context(text, 14, 20) == '"""Doc.\n\nMore.\n"""\n'
    assert prompts.file_context(text, 10, 10) == ""
    assert prompts.file_context("def (:\n", 5, 100) == ""  # unparsable: no context


def test_file_context_of_held_out_prompts_parses(stdlib_files):
    _, held = sources.split_files(stdlib_files)
    text = {f.path: f.text for f in held}
    for p in prompts.held_out_prompts(64, held):
        context = prompts.file_context(text[p.path], p.line, 2000)
        assert len(context) <= 2000 and text[p.path].startswith(context)
        ast.parse(context)  # whole statements only


def test_held_out_prompts_errors(stdlib_files):
    with pytest.raises(ValueError, match="n=0"):
        prompts.held_out_prompts(0, stdlib_files[:3])
    with pytest.raises(ValueError, match="n=100000"):
        prompts.held_out_prompts(100000, stdlib_files[:3])


def test_encode_corpus_eos_between_documents(tok):
    docs = ["def f():\n    pass\n", SourceFile("b.py", "x = 'é🐍'\n"), "y\n"]
    arr = corpus.encode_corpus(tok, docs, batch_size=2)
    assert arr.dtype == np.uint16
    assert int((arr == EOS_ID).sum()) == 3 and arr[-1] == EOS_ID
    pieces = np.split(arr, np.flatnonzero(arr == EOS_ID) + 1)[:-1]
    texts = [d if isinstance(d, str) else d.text for d in docs]
    assert [tok.decode(p[:-1].tolist()) for p in pieces] == texts
    assert corpus.encode_corpus(tok, []).size == 0


def test_cli_builds_outputs(tmp_path: Path):
    root = tmp_path / "src"
    root.mkdir()
    for i in range(20):
        body = "".join(
            f"def func_{i}_{j}(a, b={j}):\n    '''Add {j}.'''\n    c = a + b\n    return c\n\n"
            for j in range(4)
        )
        (root / f"mod_{i}.py").write_text(body)
    out = tmp_path / "out"
    rc = corpus.main(
        ["--out", str(out), "--root", str(root), "--vocab-size", "300"]
        + ["--heldout-fraction", "0.5", "--num-prompts", "8"]
    )
    assert rc == 0
    stats = json.loads((out / "corpus.json").read_text())
    train, held = np.load(out / "train.npy"), np.load(out / "heldout.npy")
    assert train.dtype == np.uint16 and stats["train"]["tokens"] == train.size
    assert stats["heldout"]["tokens"] == held.size
    assert stats["train"]["files"] + stats["heldout"]["files"] == 20
    assert (train == EOS_ID).sum() == stats["train"]["files"]
    assert len((out / "prompts.jsonl").read_text().splitlines()) == 8
    assert load_tokenizer(out).token_to_id("<|mask|>") == MASK_ID
