"""More training code, licence-clean: the Python source of the installed packages whose licence
is permissive, read from each package's own metadata.

Which packages are installed is fixed by requirements.txt (`make setup`), so the corpus is the
same on any machine set up by the project. A distribution's licence is its SPDX
`License-Expression` when it has one, else its `License ::` classifiers, else its free-text
`License` field; it is kept only if that names permissive licences alone (PERMISSIVE: MIT, BSD,
Apache-2.0, PSF, ISC, ...). Copyleft ones (GPL, LGPL, MPL, ...) and unknown ones are left out, and
the report says which and why. Vendored third-party copies (`_vendor`, `vendored` folders) are
left out too: their licence is not the distribution's.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from dlm.train.sources import MAX_FILE_BYTES, SourceFile, is_test_path, read_source

# SPDX ids of permissive licences (OSI-approved, no copyleft clause).
PERMISSIVE = frozenset(
    {
        "MIT",
        "MIT-CMU",
        "MIT-0",
        "BSD-2-Clause",
        "BSD-3-Clause",
        "0BSD",
        "Apache-2.0",
        "LLVM-exception",
        "PSF-2.0",
        "Python-2.0",
        "ISC",
        "Zlib",
        "BSL-1.0",
        "Unlicense",
        "HPND",
        "ZPL-2.1",
    }
)
# `License ::` classifiers and free-text `License` fields, matched in order, to SPDX ids.
TEXT_LICENCES = (
    (r"\bMIT\b|Expat", "MIT"),
    (r"\bApache\b", "Apache-2.0"),
    (r"\bBSD\b", "BSD-3-Clause"),
    (r"Python Software Foundation|\bPSF\b", "PSF-2.0"),
    (r"Zope Public", "ZPL-2.1"),
    (r"\bISC\b", "ISC"),
    (r"Mozilla|\bMPL\b", "MPL-2.0"),
    (r"\bLGPL|Lesser General Public", "LGPL"),
    (r"\bGPL|General Public License", "GPL"),
)
_VENDORED = frozenset({"_vendor", "vendor", "vendored", "_vendored", "third_party", "extern"})
_PROJECT = "dlm-triton"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    licence: str  # as read: the SPDX expression or the SPDX ids found, "" if none
    kept: bool
    reason: str  # why it is left out ("" if kept)


def spdx_ids(expression: str) -> list[list[str]]:
    """An SPDX expression as alternatives (OR) of conjunctions (AND, WITH) of licence ids."""
    text = expression.replace("(", " ").replace(")", " ")
    return [
        [i for i in re.split(r"\s+(?:AND|WITH)\s+", alt.strip()) if i]
        for alt in re.split(r"\s+OR\s+", text.strip())
    ]


def licence_of(meta) -> str:
    """The licence a distribution's metadata declares, as an SPDX expression ("" if none)."""
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return expression
    found: list[str] = []
    texts = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    texts = texts or [(meta.get("License") or "").split("\n")[0]]
    for text in texts:
        for pattern, spdx in TEXT_LICENCES:
            if re.search(pattern, text):
                found.append(spdx)
                break
    return " AND ".join(dict.fromkeys(found))  # every one applies: all must be permissive


def is_permissive(expression: str) -> bool:
    """True if some alternative of the expression has only permissive licences."""
    return bool(expression) and any(
        all(i in PERMISSIVE for i in alt) for alt in spdx_ids(expression)
    )


def site_packages() -> Path:
    """This environment's site-packages (the project's .venv when run from it)."""
    return Path(sysconfig.get_paths()["purelib"])


def scan_packages(
    site: Path | None = None, include_tests: bool = True, max_bytes: int = MAX_FILE_BYTES
) -> tuple[list[SourceFile], list[Package]]:
    """The `.py` files of the permissive distributions installed in `site` (default:
    site_packages()), as `site-packages/<path in site-packages>`, sorted; and every
    distribution found, kept or not, sorted by name."""
    site = site_packages() if site is None else Path(site)
    files: list[SourceFile] = []
    report: list[Package] = []
    for dist in md.distributions(path=[str(site)]):
        name, version = dist.metadata["Name"], dist.version
        licence = licence_of(dist.metadata)
        reason = ""
        if name == _PROJECT:
            reason = "this project"
        elif not licence:
            reason = "no licence in its metadata"
        elif not is_permissive(licence):
            reason = "not permissive"
        report.append(Package(name, version, licence, not reason, reason))
        if reason:
            continue
        for entry in dist.files or []:
            rel = Path(entry).as_posix()
            parts = rel.split("/")
            if not rel.endswith(".py") or rel.startswith("..") or _VENDORED & set(parts[:-1]):
                continue
            if not include_tests and is_test_path(rel):
                continue
            path = site / rel
            text, skipped = read_source(path, max_bytes) if path.is_file() else ("", "absent")
            if not skipped:
                files.append(SourceFile(f"site-packages/{rel}", text))
    files.sort(key=lambda f: f.path)
    report.sort(key=lambda p: p.name.lower())
    return files, report


def licence_table(report: list[Package]) -> str:
    """The packages and their licences as a markdown table (for the model card)."""
    rows = [
        "| package | version | licence | in the corpus |",
        "|---|---|---|---|",
        *(
            f"| {p.name} | {p.version} | {p.licence or '(none)'} | "
            f"{'yes' if p.kept else 'no: ' + p.reason} |"
            for p in report
        ),
    ]
    return "\n".join(rows) + "\n"
