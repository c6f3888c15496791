"""benchmarks.split_step end to end on the tiny checkpoint (PyTorch engine): it prints one row per
shape, with the split the cost model picks."""

from benchmarks import split_step


def test_split_step_prints_both_sides(tiny_checkpoint, capsys):
    args = ["--model", str(tiny_checkpoint), "--backend", "torch", "--threads", "1"]
    assert split_step.main([*args, "--rows", "4", "--prompt", "8", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 4 | 8 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[3] in ("one call", "3 + 1") and float(cells[2]) > 0 and float(cells[4]) > 0
