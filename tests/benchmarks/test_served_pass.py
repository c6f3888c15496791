"""benchmarks.served_pass end to end on the tiny checkpoint (PyTorch engine on the CPU, the real
tritonserver): an AR pass timed on both sides and set against the floor."""

import pytest

from benchmarks import served_pass

pytestmark = pytest.mark.slow


def test_served_pass_times_both_sides_against_the_floor(tiny_checkpoint, capsys):
    args = ["--model", str(tiny_checkpoint), "--device", "cpu", "--threads", "1"]
    assert served_pass.main([*args, "--context", "40", "--tokens", "6", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = {c[1].strip(): c for c in (line.split("|") for line in out.splitlines()) if len(c) == 6}
    sides = ("in process", "through Triton, streamed", "through Triton, one response")
    for side in (*sides, "through Triton, gap between streamed responses"):
        assert float(rows[side][2]) > 0 and float(rows[side][4]) > 0, out
    assert "floor" in out and "through Triton, one response / in process:" in out
