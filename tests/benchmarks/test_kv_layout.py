"""benchmarks.kv_layout end to end on the tiny checkpoint: one row per shape, both layouts timed."""

from benchmarks import kv_layout


def test_kv_layout_prints_both_layouts(tiny_checkpoint, capsys):
    args = ["--model", str(tiny_checkpoint), "--threads", "1", "--repeats", "1"]
    assert kv_layout.main([*args, "--context", "16", "--rows", "1", "2", "--tokens", "1", "4"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 16 |")]
    assert len(rows) == 4
    for row in rows:
        cells = [float(c) for c in row.strip("|").split("|")]
        assert all(c > 0 for c in cells)
