"""An export past protobuf's 2 GB (the 8B preset's shape, one layer, a 48k vocabulary: 2.5 GB of
float32 weights) writes its weights beside the graph, loads in ONNX Runtime and matches PyTorch.
About a minute and 7 GB of memory here; the shipped models are far smaller."""

from __future__ import annotations

import torch

from dlm.config import preset
from dlm.model import DiffusionLM
from export import onnx_export, parity
from export.ort_engine import ort_session

PROTOBUF_LIMIT = 2**31


def test_an_export_past_2_gb_loads_and_matches(tmp_path):
    torch.manual_seed(0)
    cfg = preset("nemotron-labs-diffusion-8b", num_layers=1, vocab_size=48_000)
    model = DiffusionLM(cfg).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weights > PROTOBUF_LIMIT
    onnx_export.export_denoiser(model, tmp_path / "d.onnx", parity_path=tmp_path / "p.onnx")
    assert (tmp_path / "d.onnx.data").stat().st_size >= weights
    session = ort_session(tmp_path / "p.onnx")
    names = [o.name for o in session.get_outputs()]
    report = parity.pass_parity(
        model, lambda f: dict(zip(names, session.run(names, f), strict=True))
    )
    assert report["ok"], "\n".join(parity.format_pass_parity(report))
