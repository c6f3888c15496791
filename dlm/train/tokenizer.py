"""Byte-level BPE tokenizer for the default code model (Python source).

Contract:
- Special tokens sit at fixed ids: PAD_ID=0, BOS_ID=1, EOS_ID=2, MASK_ID=3, named once here.
- Byte-level, no normalizer, no added prefix space, no post-processor: `decode(encode(s)) == s`
  for any text (tabs, unicode, emoji, CR, the empty string). BOS/EOS are never added implicitly;
  callers append them where a document needs them.
- Text never turns into special ids: a source file that literally contains "<|eos|>" is encoded
  as ordinary bytes (`encode_special_tokens`), so training data cannot inject control tokens.
  This flag is runtime state, so always load with `load_tokenizer`, not `Tokenizer.from_file`.
- Whitespace is cheap: a newline plus the indentation that follows it is one pre-token (BPE
  learns "\\n", "\\n    ", "\\n        " ... as single tokens), and runs of spaces or tabs inside
  a line are kept apart from words, so alignment spaces do not fragment identifiers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, MASK_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>", "<|mask|>"
PAD_ID, BOS_ID, EOS_ID, MASK_ID = 0, 1, 2, 3
# Order is the id: the BPE trainer assigns special tokens the first ids in this order.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, MASK_TOKEN)

# 4 specials + 256 byte symbols; below this the trainer could not represent every byte.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256
# Corpora are stored as uint16 token ids.
MAX_VOCAB_SIZE = 1 << 16

# Pre-tokenizer split, alternatives tried left to right at each position:
#   \n+[ \t]*                newlines plus the next line's indentation (one piece, cheap)
#   ' '?identifier           a word with at most one leading space (like GPT-2's " foo")
#   ' '?digits               numbers, at most 3 digits a piece so numerals do not bloat the vocab
#   ' '?punctuation run      operators and brackets: "):", " ==", '"""'
#   [ \t]+                   any other run of blanks (alignment, before inline comments)
# Anything else (e.g. \r, \f, unicode spaces) falls between matches and is kept as its own piece
# by the "isolated" behaviour, so no byte is ever dropped.
SPLIT_PATTERN = (
    r"\n+[ \t]*"
    r"| ?[\p{L}\p{M}_][\p{L}\p{M}\p{N}_]*"
    r"| ?\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{M}\p{N}_]+"
    r"|[ \t]+"
)


class _HasText(Protocol):
    text: str


def new_tokenizer() -> Tokenizer:
    """An untrained tokenizer with the pipeline above (empty vocabulary; train it before use)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            # use_regex=False: the split above already chose the pieces; ByteLevel only maps
            # bytes to printable symbols.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _texts(files: Iterable[_HasText | str]) -> Iterator[str]:
    for f in files:
        yield f if isinstance(f, str) else f.text


def train_tokenizer(
    files: Sequence[_HasText | str], vocab_size: int = 4096, show_progress: bool = False
) -> Tokenizer:
    """Train byte-level BPE on `files` (SourceFile objects or raw strings).

    Deterministic for the same input order. Raises ValueError if vocab_size is outside
    [MIN_VOCAB_SIZE, MAX_VOCAB_SIZE] or files is empty.
    """
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} out of range; allowed [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}]"
        )
    if len(files) == 0:
        raise ValueError("files is empty; need at least one text to train the tokenizer on")
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols up front, so unseen bytes still encode (exact round trip).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(_texts(files), trainer=trainer, length=len(files))
    _finish(tok)
    return tok


def _finish(tok: Tokenizer) -> None:
    """Check the fixed special ids and make text unable to produce them."""
    for token, want in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID, MASK_ID), strict=True):
        got = tok.token_to_id(token)
        if got != want:
            raise ValueError(f"special token {token!r} has id {got}; expected {want}")
    if tok.get_vocab_size() > MAX_VOCAB_SIZE:
        raise ValueError(
            f"vocab size {tok.get_vocab_size()} does not fit uint16; allowed <= {MAX_VOCAB_SIZE}"
        )
    tok.encode_special_tokens = True


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> Path:
    """Write DIR/tokenizer.json and DIR/tokenizer_config.json; returns the tokenizer.json path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    tok.save(str(path))
    write_tokenizer_config(directory, model_max_length=None)
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load tokenizer.json (or a directory holding it) and re-apply the runtime settings."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    _finish(tok)
    return tok


def write_tokenizer_config(directory: str | Path, model_max_length: int | None = None) -> Path:
    """Write DIR/tokenizer_config.json in the Hugging Face layout for PreTrainedTokenizerFast.

    Keeps transformers from adding BOS/EOS or cleaning up spaces, which would break the exact
    round trip the serving pre/postprocessing relies on.
    """
    directory = Path(directory)
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    config: dict[str, object] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "pad_token": PAD_TOKEN,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "mask_token": MASK_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    path = directory / "tokenizer_config.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path
