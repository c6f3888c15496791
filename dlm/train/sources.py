"""The default code model's source files: the running interpreter's standard library.

The stdlib `.py` files (PSF licence, present with every Python install) are read at training time
and never committed. Everything here is deterministic for a given Python version: files are
visited in sorted relative-path order, and the held-out split is by file, from a hash of the
relative path (no RNG, no machine state).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HELDOUT_FRACTION = 0.03
MAX_FILE_BYTES = 400_000  # drops generated giants such as pydoc_data/topics.py (~700 KB)

# Relative directories never read: third-party code, IDE/demo programs, lib2to3's deliberately
# odd test inputs (BOMs, CRLF, Python 2 grammar), and the build-specific config-* folder.
_EXCLUDED_DIRS = ("site-packages", "dist-packages", "idlelib", "turtledemo", "lib2to3/tests/data")
_TEST_DIR_NAMES = frozenset({"test", "tests"})


@dataclass(frozen=True)
class SourceFile:
    """One normalised source file; `path` is relative to the stdlib root, '/'-separated."""

    path: str
    text: str


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


def read_source(path: Path, max_bytes: int = MAX_FILE_BYTES) -> tuple[str, str]:
    """(normalised text, "") of a source file, or ("", why it is skipped): "too_large" (over
    max_bytes on disk), "not_utf8", "empty" (blank after normalisation)."""
    if path.stat().st_size > max_bytes:
        return "", "too_large"
    try:
        text = normalize_source(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return "", "not_utf8"
    return (text, "") if text else ("", "empty")


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
            text, reason = read_source(Path(dirpath, name), max_bytes)
            if reason:
                skipped[rel] = reason
            else:
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


def dedupe(files: Sequence[SourceFile]) -> tuple[list[SourceFile], int]:
    """The files in path order, each text once (the first path that has it); and how many
    copies were dropped (packages vendor each other's modules, and the stdlib's)."""
    seen: set[bytes] = set()
    kept: list[SourceFile] = []
    for f in sorted(files, key=lambda f: f.path):
        digest = hashlib.sha256(f.text.encode("utf-8")).digest()
        if digest not in seen:
            seen.add(digest)
            kept.append(f)
    return kept, len(files) - len(kept)
