"""Training corpus for the default code model: the running interpreter's standard library source
and, with `--packages`, the installed packages under permissive licences (dlm/train/sources.py
reads and splits the files, dlm/train/packages.py reads the licences, dlm/train/prompts.py picks
held-out prompts), tokenized with a BPE trained on the train split.

CLI (builds the tokenizer and the token arrays):
    python -m dlm.train.corpus --out build/corpus [--vocab-size 4096] [--no-tests] [--packages]
writes DIR/tokenizer.json, DIR/tokenizer_config.json, DIR/train.npy, DIR/heldout.npy (uint16
token ids, each document followed by EOS), DIR/prompts.jsonl, DIR/corpus.json (statistics) and,
with --packages, DIR/packages.md (every package found, its licence, kept or why not).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from dlm.train.packages import Package, licence_table, scan_packages
from dlm.train.prompts import held_out_prompts
from dlm.train.sources import (
    HELDOUT_FRACTION,
    MAX_FILE_BYTES,
    SourceFile,
    dedupe,
    scan_sources,
    split_files,
    stdlib_dir,
)
from dlm.train.tokenizer import (
    EOS_ID,
    MAX_VOCAB_SIZE,
    SPECIAL_TOKENS,
    save_tokenizer,
    train_tokenizer,
)

log = logging.getLogger(__name__)


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
    packages: bool = False,
    site: Path | None = None,
) -> dict[str, object]:
    """Build the tokenizer and token arrays into `out`; returns the corpus.json statistics.

    `root` defaults to stdlib_dir(); tests pass a small folder. `packages`: add the permissive
    packages installed in `site` (dlm/train/packages.py; default this environment's), listed
    with their licences in corpus.json and DIR/packages.md; every text kept once.
    """
    root = stdlib_dir() if root is None else Path(root)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files, skipped = scan_sources(root, include_tests=include_tests)
    log.info(
        "read %d files (%d skipped) from %s in %.1fs",
        len(files),
        len(skipped),
        root,
        time.perf_counter() - t0,
    )
    report: list[Package] = []
    duplicates = 0
    if packages:
        more, report = scan_packages(site, include_tests=include_tests)
        files, duplicates = dedupe(files + more)
        (out / "packages.md").write_text(licence_table(report), encoding="utf-8")
        log.info(
            "read %d files of %d permissive packages (%d left out); %d duplicate texts dropped",
            len(more),
            sum(p.kept for p in report),
            sum(not p.kept for p in report),
            duplicates,
        )
    train, held = split_files(files, fraction)
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
        "duplicates_dropped": duplicates,
        "packages": [asdict(p) for p in report],
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
    ap.add_argument(
        "--packages",
        action="store_true",
        help="add the installed packages under permissive licences (listed in packages.md)",
    )
    ap.add_argument("--site", type=Path, default=None, help="their site-packages (default: ours)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    stats = build(
        args.out,
        args.vocab_size,
        not args.no_tests,
        args.heldout_fraction,
        args.num_prompts,
        args.root,
        args.packages,
        args.site,
    )
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
