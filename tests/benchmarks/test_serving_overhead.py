"""benchmarks.serving_overhead end to end on the tiny checkpoint (PyTorch engine, the real
tritonserver): both tables, every request answered on both sides."""

import pytest

from benchmarks import serving_overhead

pytestmark = pytest.mark.slow


def test_serving_overhead_prints_both_tables(tiny_checkpoint, capsys):
    args = ["--model", str(tiny_checkpoint), "--backend", "torch", "--threads", "1"]
    args += ["--max-tokens", "8", "--concurrency", "1,2", "--requests", "2", "--repeats", "2"]
    assert serving_overhead.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    modes = {c[1].strip(): c for c in (line.split("|") for line in lines) if len(c) == 8}
    for mode in ("ar", "diffusion", "self_spec"):
        done, sent = modes[mode][2].split("/")
        assert int(done) == int(sent) > 0  # every request answered, as many tokens both sides
        assert float(modes[mode][5]) > 0 and float(modes[mode][6]) > 0
    levels = [line for line in lines if line.startswith(("| 1 |", "| 2 |"))]
    assert len(levels) == 2
