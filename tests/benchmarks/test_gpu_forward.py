"""The GPU forward benchmark: its CPU smoke path end to end, and the arithmetic it reports."""

import pytest

from benchmarks import gpu_forward as gf
from benchmarks import gpu_harness as gh


def test_cpu_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "forward.md"
    assert gf.main(["--device", "cpu", "--iters", "3", "--warmup", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert gf.SMOKE in text
    assert "**failed**" not in text, text
    assert "skipped: CUDA graphs need a GPU" in text
    assert f"python -m benchmarks.gpu_forward --device cpu --iters 3 --warmup 1 --out {out}" in text
    for t in gf.QUERY_TOKENS:
        assert f"\n| {t} | " in text
    for mode in ("ar", "diffusion", "self_spec"):
        assert f"\n| {mode} | " in text


@pytest.mark.parametrize(
    "name,bandwidth",
    [
        ("NVIDIA H100 80GB HBM3", 3.35e12),
        ("NVIDIA H100 PCIe", 2.0e12),
        ("NVIDIA H100 NVL", 3.9e12),
        ("NVIDIA H200", 4.8e12),
        ("NVIDIA A10G", None),
    ],
)
def test_peak_bandwidth_by_device_name(name, bandwidth):
    assert gh.peak_bandwidth(name)[0] == bandwidth


def test_mode_arithmetic():
    # Diffusion, 8 steps: 32 tokens per 9 passes of T=32; self-spec: a tokens per 2 passes.
    assert gf.tokens_per_second({32: 9}, 32, {32: 10.0}) == pytest.approx(32 / 0.090)
    assert gf.tokens_per_second({32: 2}, 8, {1: 5.0}) is None
    rows = {(m, s): (p, n) for m, s, p, n in gf.mode_rows()}
    assert rows[("ar", "1 causal pass per token")] == ({1: 1}, 1)
    assert ({32: 5}, 32) in rows.values() and ({32: 2}, 16) in rows.values()


def test_failing_section_is_reported_and_the_run_goes_on(tmp_path, capsys):
    report = gh.Report(tmp_path / "r.md")
    budget = gh.Budget(60)

    def broken() -> str:
        raise RuntimeError("out of memory\n  on purpose")

    report.section("Broken", broken, budget, need_s=0)
    report.section("Fine", lambda: "ok", budget, need_s=0)
    report.section("Too long", lambda: "never", budget, need_s=1e6)
    text = (tmp_path / "r.md").read_text()
    assert "**failed**" in text and "RuntimeError: out of memory on purpose" in text
    assert "## Fine\n\nok" in text
    assert "## Too long\n\nskipped" in text and "never" not in text
