"""The installed packages as training data: licences from their metadata, permissive ones only,
vendored copies and duplicates left out (dlm.train.packages, corpus --packages)."""

from __future__ import annotations

import email.message
import json
from pathlib import Path

import pytest

from dlm.train import corpus, packages


def meta(**fields) -> email.message.Message:
    m = email.message.Message()
    for key, values in fields.items():
        for v in values if isinstance(values, list) else [values]:
            m[key.replace("_", "-")] = v
    return m


@pytest.mark.parametrize(
    "fields, licence, permissive",
    [
        ({"License_Expression": "BSD-3-Clause"}, "BSD-3-Clause", True),
        ({"License_Expression": "Apache-2.0 WITH LLVM-exception AND MIT"}, None, True),
        ({"License_Expression": "MIT OR GPL-3.0-only"}, None, True),  # MIT may be chosen
        ({"License_Expression": "MIT AND MPL-2.0"}, None, False),  # both apply
        ({"License_Expression": "GPL-3.0-or-later"}, None, False),
        ({"Classifier": ["License :: OSI Approved :: BSD License"]}, "BSD-3-Clause", True),
        (
            {"Classifier": ["License :: OSI Approved :: MIT License", "License :: MPL 2.0"]},
            "MIT AND MPL-2.0",
            False,
        ),
        ({"License": "Apache 2.0"}, "Apache-2.0", True),
        ({"License": "GNU Lesser General Public License v3"}, "LGPL", False),
        ({"License": "Copyright (c) the authors, all rights reserved"}, "", False),
        ({}, "", False),
    ],
)
def test_licence_from_metadata(fields, licence, permissive):
    got = packages.licence_of(meta(**fields))
    assert got == (fields.get("License_Expression") if licence is None else licence)
    assert packages.is_permissive(got) is permissive


def fake_dist(site: Path, name: str, licence: str, files: dict[str, str]) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.4\nName: {name}\nVersion: 1.0\nLicense-Expression: {licence}\n"
    )
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in [*files, f"{info.name}/RECORD"]))


@pytest.fixture()
def site(tmp_path):
    site = tmp_path / "site"
    fake_dist(
        site,
        "good",
        "MIT",
        {
            "good/__init__.py": "def good():\n    return 1\n",
            "good/_vendor/other.py": "x = 'vendored'\n",
            "good/tests/test_good.py": "def test_good():\n    assert True\n",
            "good/data.txt": "not code\n",
            "good/copy.py": "def shared():\n    return 2\n",
        },
    )
    fake_dist(site, "bad", "GPL-3.0-only", {"bad/__init__.py": "def bad():\n    return 0\n"})
    return site


def test_scan_keeps_permissive_code_only(site):
    files, report = packages.scan_packages(site)
    assert [f.path for f in files] == [
        "site-packages/good/__init__.py",
        "site-packages/good/copy.py",
        "site-packages/good/tests/test_good.py",
    ]
    assert [(p.name, p.kept, p.reason) for p in report] == [
        ("bad", False, "not permissive"),
        ("good", True, ""),
    ]
    no_tests, _ = packages.scan_packages(site, include_tests=False)
    assert "site-packages/good/tests/test_good.py" not in [f.path for f in no_tests]


def test_corpus_with_packages_lists_licences_and_drops_duplicates(site, tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for i in range(12):
        (root / f"mod_{i}.py").write_text(f"def func_{i}(a):\n    '''Doc.'''\n    return a + {i}\n")
    (root / "copy.py").write_text("def shared():\n    return 2\n")  # the package has it too
    out = tmp_path / "out"
    args = ["--out", str(out), "--root", str(root), "--vocab-size", "300", "--num-prompts", "2"]
    assert corpus.main([*args, "--heldout-fraction", "0.5", "--packages", "--site", str(site)]) == 0
    stats = json.loads((out / "corpus.json").read_text())
    assert stats["train"]["files"] + stats["heldout"]["files"] == 13 + 2  # one copy dropped
    assert stats["duplicates_dropped"] == 1
    assert [(p["name"], p["licence"], p["kept"]) for p in stats["packages"]] == [
        ("bad", "GPL-3.0-only", False),
        ("good", "MIT", True),
    ]
    table = (out / "packages.md").read_text()
    assert "| good | 1.0 | MIT | yes |" in table
    assert "| bad | 1.0 | GPL-3.0-only | no: not permissive |" in table


def test_this_environment(tmp_path):
    """What `make corpus` reads here (requirements.txt pins it): the big permissive code bases in,
    copyleft and licence-less ones out."""
    files, report = packages.scan_packages()
    by_name = {p.name.lower(): p for p in report}
    for name in ("torch", "numpy", "sympy", "networkx", "onnx"):
        assert by_name[name].kept, by_name[name]
    assert not by_name["yamllint"].kept and not by_name["hypothesis"].kept  # GPL, MPL
    assert any(f.path.startswith("site-packages/numpy/") for f in files)
    assert not any("/_vendor/" in f.path for f in files)
