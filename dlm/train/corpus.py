"""Training corpus for the default code model: the running interpreter's standard library source.

The stdlib `.py` files (PSF licence, present with every Python install) are read at training time
and never committed. Everything here is deterministic for a given Python version:
- files are visited in sorted relative-path order;
- the held-out split is by file, from a hash of the relative path (no RNG, no machine state);
- held-out prompts are the first lines of functions in held-out files, parsed with `ast`.

CLI (builds the tokenizer and the token arrays):
    python -m dlm.train.corpus --out build/corpus [--vocab-size 4096] [--no-tests]
writes DIR/tokenizer.json, DIR/tokenizer_config.json, DIR/train.npy, DIR/heldout.npy (uint16
token ids, each document followed by EOS), DIR/prompts.jsonl and DIR/corpus.json (statistics).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from dlm.train.tokenizer import (
    EOS_ID,
    MAX_VOCAB_SIZE,
    SPECIAL_TOKENS,
    save_tokenizer,
    train_tokenizer,
)

log = logging.getLogger(__name__)

HELDOUT_FRACTION = 0.03
MAX_FILE_BYTES = 400_000  # drops generated giants such as pydoc_data/topics.py (~700 KB)
PROMPT_MAX_CHARS = 200
REFERENCE_MAX_LINES = 16

# Relative directories never read: third-party code, IDE/demo programs, lib2to3's deliberately
# odd test inputs (BOMs, CRLF, Python 2 grammar), and the build-specific config-* folder.
_EXCLUDED_DIRS = ("site-packages", "dist-packages", "idlelib", "turtledemo", "lib2to3/tests/data")
_TEST_DIR_NAMES = frozenset({"test", "tests"})


@dataclass(frozen=True)
class SourceFile:
    """One normalised source file; `path` is relative to the stdlib root, '/'-separated."""

    path: str
    text: str


@dataclass(frozen=True)
class Prompt:
    """A held-out evaluation prompt: a function's header and its first body line.

    `prompt + reference` is the start of the function's source (dedented to column 0); the
    prompt ends at a line end without the newline, so the model's first token starts the next line.
    """

    id: str  # "<path>:<line>" of the def line
    path: str
    line: int
    prompt: str
    reference: str  # the next lines of the function (up to REFERENCE_MAX_LINES), "\n"-prefixed


def stdlib_dir() -> Path:
    """The running interpreter's standard-library source folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_test_path(rel_path: str) -> bool:
    """True for files of the test suites: under a test/ or tests/ folder, or named test_*.py."""
    parts = rel_path.split("/")
    return any(p in _TEST_DIR_NAMES for p in parts[:-1]) or parts[-1].startswith("test_")


def _excluded(rel_path: str) -> bool:
    parts = rel_path.split("/")
    if "__pycache__" in parts or parts[0].startswith("config-"):
        return True
    # _sysconfigdata_*.py is generated per build and machine; it would break "same on any machine".
    if parts[0].startswith("_sysconfigdata"):
        return True
    return any(rel_path == d or rel_path.startswith(d + "/") for d in _EXCLUDED_DIRS)


def normalize_source(text: str) -> str:
    """Newlines to '\\n', no BOM, no trailing blanks, one final newline ('' if blank)."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    body = "\n".join(lines).strip("\n")
    return body + "\n" if body else ""


def scan_sources(
    root: Path | None = None, include_tests: bool = True, max_bytes: int = MAX_FILE_BYTES
) -> tuple[list[SourceFile], dict[str, str]]:
    """Read every kept `.py` file under `root` (default: stdlib_dir()).

    Returns (files sorted by path, {relative path: reason} for skipped files). Reasons:
    "too_large" (> max_bytes on disk), "not_utf8", "empty" (blank after normalisation).
    """
    root = stdlib_dir() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root={str(root)!r} is not a directory")
    files: list[SourceFile] = []
    skipped: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow symlinked dirs
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # Prune in place (and sort, so the walk order never matters).
        dirnames[:] = sorted(d for d in dirnames if not _excluded(rel_dir + d))
        for name in sorted(filenames):
            rel = rel_dir + name
            if not name.endswith(".py") or _excluded(rel):
                continue
            if not include_tests and is_test_path(rel):
                continue
            full = Path(dirpath, name)
            if full.stat().st_size > max_bytes:
                skipped[rel] = "too_large"
                continue
            try:
                raw = full.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                skipped[rel] = "not_utf8"
                continue
            text = normalize_source(raw)
            if not text:
                skipped[rel] = "empty"
                continue
            files.append(SourceFile(rel, text))
    files.sort(key=lambda f: f.path)
    return files, skipped


def collect_files(
    root: Path | None = None, include_tests: bool = True, max_bytes: int = MAX_FILE_BYTES
) -> list[SourceFile]:
    """The kept stdlib files, sorted by relative path (see scan_sources)."""
    return scan_sources(root, include_tests, max_bytes)[0]


def is_held_out(rel_path: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """By-file split: SHA-256 of the '/'-separated relative path, read as a uniform [0, 1)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction} out of range; allowed [0, 1]")
    digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_files(
    files: Sequence[SourceFile], fraction: float = HELDOUT_FRACTION
) -> tuple[list[SourceFile], list[SourceFile]]:
    """(train, held_out), each in the input order."""
    train: list[SourceFile] = []
    held: list[SourceFile] = []
    for f in files:
        (held if is_held_out(f.path, fraction) else train).append(f)
    return train, held


def _strip_indent(line: str, indent: str) -> str:
    # Lines inside multi-line strings may not carry the def's indentation; keep those as they are.
    return line[len(indent) :] if line.startswith(indent) else line


def _function_prompts(f: SourceFile, max_chars: int) -> list[Prompt]:
    """Prompts for every function in one file, in source order."""
    try:
        tree = ast.parse(f.text)
    except (SyntaxError, ValueError):  # test suites ship deliberately broken files
        return []
    lines = f.text.split("\n")
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    out: list[Prompt] = []
    for node in sorted(nodes, key=lambda n: n.lineno):
        first = node.body[0]
        if first.lineno <= node.lineno:  # one-liner "def f(): ..."
            continue
        header = lines[node.lineno - 1 : first.lineno - 1]
        # Drop comment and blank lines between the signature and the body.
        while header and (not header[-1].strip() or header[-1].strip().startswith("#")):
            header.pop()
        body_end = first.lineno  # exclusive line index of the prompt's body part
        is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
        if is_doc and isinstance(first.value.value, str):
            # A docstring that opens with bare quotes: include its first line of text too.
            if not any(c.isalnum() for c in lines[first.lineno - 1].strip().lstrip("rRbBuU")):
                body_end += 1
        end = node.end_lineno or first.lineno
        if body_end >= end:  # nothing left for the model to complete
            continue
        def_line = lines[node.lineno - 1]
        indent = def_line[: len(def_line) - len(def_line.lstrip())]
        prompt_lines = header + lines[first.lineno - 1 : body_end]
        rest = lines[body_end : min(end, body_end + REFERENCE_MAX_LINES)]
        prompt = "\n".join(_strip_indent(x, indent) for x in prompt_lines)
        if len(prompt) > max_chars:
            continue
        reference = "".join("\n" + _strip_indent(x, indent) for x in rest)
        out.append(Prompt(f"{f.path}:{node.lineno}", f.path, node.lineno, prompt, reference))
    return out


def held_out_prompts(
    n: int = 64,
    files: Sequence[SourceFile] | None = None,
    max_chars: int = PROMPT_MAX_CHARS,
    fraction: float = HELDOUT_FRACTION,
) -> list[Prompt]:
    """`n` evaluation prompts from held-out files, deterministic.

    `files`: the held-out files (default: the held-out split of collect_files(), tests included).
    Files are taken round-robin in path order (each file's 1st function, then each file's 2nd,
    ...) so the prompts spread over many modules. Raises ValueError if fewer than n exist.
    """
    if n < 1:
        raise ValueError(f"n={n} out of range; allowed n >= 1")
    if files is None:
        files = split_files(collect_files(), fraction)[1]
    per_file = [
        p
        for p in (_function_prompts(f, max_chars) for f in sorted(files, key=lambda f: f.path))
        if p
    ]
    out: list[Prompt] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in per_file):
        out.extend(p[depth] for p in per_file if depth < len(p))
        depth += 1
    if len(out) < n:
        raise ValueError(
            f"n={n} prompts requested; only {len(out)} available in {len(files)} files"
        )
    return out[:n]


def file_context(text: str, before_line: int, max_chars: int) -> str:
    """The file's leading top-level statements as a prompt's context: `text` up to the start of
    a top-level statement (so each one in it is whole), at most `max_chars` characters, and not
    past line `before_line` (1-based: a held-out function's def line). "" if none fits."""
    try:
        body = ast.parse(text).body
    except (SyntaxError, ValueError):
        return ""
    line_start = [0]
    for line in text.split("\n"):
        line_start.append(line_start[-1] + len(line) + 1)
    starts = [
        min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        for node in body
    ]
    cuts = [line_start[n - 1] for n in starts if n <= before_line]
    return text[: max((c for c in cuts if c <= max_chars), default=0)]


def encode_corpus(
    tokenizer: Tokenizer,
    files: Sequence[SourceFile | str],
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Token ids of all documents concatenated, each followed by EOS_ID: uint16 array [total].

    No BOS: the training script cuts fixed windows anywhere in the stream, and EOS alone marks
    where one document ends and the next begins.
    """
    if tokenizer.get_vocab_size() > MAX_VOCAB_SIZE:
        raise ValueError(
            f"tokenizer vocab size {tokenizer.get_vocab_size()} does not fit uint16; "
            f"allowed <= {MAX_VOCAB_SIZE}"
        )
    texts = [f if isinstance(f, str) else f.text for f in files]
    chunks: list[np.ndarray] = []
    eos = np.array([EOS_ID], dtype=np.uint16)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="encode", unit="batch", disable=not progress):
        for enc in tokenizer.encode_batch(
            texts[start : start + batch_size], add_special_tokens=False
        ):
            chunks.append(np.asarray(enc.ids, dtype=np.uint16))
            chunks.append(eos)
    if not chunks:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate(chunks)


def _nbytes(files: Sequence[SourceFile]) -> int:
    return sum(len(f.text.encode("utf-8")) for f in files)


def build(
    out: Path,
    vocab_size: int = 4096,
    include_tests: bool = True,
    fraction: float = HELDOUT_FRACTION,
    num_prompts: int = 64,
    root: Path | None = None,
) -> dict[str, object]:
    """Build the tokenizer and token arrays into `out`; returns the corpus.json statistics.

    `root` defaults to stdlib_dir(); tests pass a small folder.
    """
    root = stdlib_dir() if root is None else Path(root)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files, skipped = scan_sources(root, include_tests=include_tests)
    train, held = split_files(files, fraction)
    log.info(
        "read %d files (%d skipped) from %s in %.1fs",
        len(files),
        len(skipped),
        root,
        time.perf_counter() - t0,
    )
    log.info(
        "split: train %d files / %d bytes, held out %d files / %d bytes",
        len(train),
        _nbytes(train),
        len(held),
        _nbytes(held),
    )

    t1 = time.perf_counter()
    log.info("training byte-level BPE, vocab_size=%d, on the train split", vocab_size)
    tok = train_tokenizer(train, vocab_size, show_progress=sys.stderr.isatty())
    save_tokenizer(tok, out)
    train_s = time.perf_counter() - t1
    log.info("tokenizer trained in %.1fs -> %s", train_s, out / "tokenizer.json")

    t2 = time.perf_counter()
    arrays = {
        name: encode_corpus(tok, fs, progress=True)
        for name, fs in (("train", train), ("heldout", held))
    }
    for name, arr in arrays.items():
        np.save(out / f"{name}.npy", arr)
    encode_s = time.perf_counter() - t2
    log.info(
        "encoded in %.1fs: train %d tokens, held out %d tokens",
        encode_s,
        arrays["train"].size,
        arrays["heldout"].size,
    )

    prompts = held_out_prompts(num_prompts, held)
    with open(out / "prompts.jsonl", "w", encoding="utf-8") as fh:
        for p in prompts:
            fh.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")

    def split_stats(fs: Sequence[SourceFile], arr: np.ndarray) -> dict[str, object]:
        nbytes, ntok = _nbytes(fs), int(arr.size) - len(fs)  # token counts exclude the EOS
        return {
            "files": len(fs),
            "bytes": nbytes,
            "tokens": int(arr.size),
            "tokens_per_byte": round(ntok / max(nbytes, 1), 4),
        }

    stats: dict[str, object] = {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "include_tests": include_tests,
        "heldout_fraction": fraction,
        "split": "sha256(relative path)[:8] / 2**64 < heldout_fraction",
        "max_file_bytes": MAX_FILE_BYTES,
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": {t: i for i, t in enumerate(SPECIAL_TOKENS)},
        "train": split_stats(train, arrays["train"]),
        "heldout": split_stats(held, arrays["heldout"]),
        "skipped": {
            r: sum(1 for v in skipped.values() if v == r) for r in sorted(set(skipped.values()))
        },
        "prompts": len(prompts),
        "file_list_sha256": hashlib.sha256("\n".join(f.path for f in files).encode()).hexdigest(),
        "seconds": {
            "tokenizer_train": round(train_s, 1),
            "encode": round(encode_s, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    (out / "corpus.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s in %.1fs total", out, time.perf_counter() - t0)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dlm.train.corpus", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument(
        "--vocab-size", type=int, default=4096, help="BPE vocabulary size (default 4096)"
    )
    ap.add_argument("--no-tests", action="store_true", help="leave out the stdlib test suites")
    ap.add_argument("--heldout-fraction", type=float, default=HELDOUT_FRACTION)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument(
        "--root", type=Path, default=None, help="source folder (default: this interpreter's stdlib)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    stats = build(
        args.out,
        args.vocab_size,
        not args.no_tests,
        args.heldout_fraction,
        args.num_prompts,
        args.root,
    )
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
