"""benchmarks.graph_ab end to end on the tiny checkpoint's graph against itself."""

from benchmarks import graph_ab
from dlm import checkpoint
from export.onnx_export import export_denoiser


def test_graph_ab_prints_every_pass_size(tiny_checkpoint, tmp_path, capsys):
    graph = tmp_path / "denoiser.onnx"
    export_denoiser(checkpoint.load(tiny_checkpoint), graph)
    args = ["--model", str(tiny_checkpoint), str(graph), str(graph), "--threads", "1"]
    assert graph_ab.main([*args, "--rounds", "1", "--passes", "1", "--cached", "8"]) == 0
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line[:3] in ("| 1", "| 4", "| 3")
    ]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "4", "32"]
    for row in rows:
        assert all(float(c.strip().rstrip("x")) > 0 for c in row.strip("|").split("|"))
