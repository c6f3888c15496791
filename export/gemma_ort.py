"""DiffusionGemma on ONNX Runtime: `OrtRunner` runs the two graphs of export/gemma_onnx.py for
`dlm.gemma.engine.GemmaEngine` (which keeps the caches and the self-conditioning signal, as
for the PyTorch runner), and `export_checked`, the build's steps for this family: export both
graphs, then parity against PyTorch (graph outputs on ragged random inputs; whole generations).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dlm.gemma.config import GemmaConfig
from dlm.gemma.engine import GemmaEngine
from dlm.gemma.model import DiffusionGemma
from export import GEMMA_FILES, ParityError
from export.gemma_onnx import (
    CANVAS_INPUTS,
    CANVAS_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    CanvasGraph,
    EncoderGraph,
    example_inputs,
    export_graph,
)
from export.ort_engine import ort_session

GRAPHS = {
    "encoder": (ENCODER_INPUTS, ENCODER_OUTPUTS, EncoderGraph),
    "canvas": (CANVAS_INPUTS, CANVAS_OUTPUTS, CanvasGraph),
}
PARITY_TOLERANCE = 1e-4  # x max |reference| for float outputs; token outputs must be equal


class OrtRunner:
    """The two graphs on ONNX Runtime (CPU, float32); torch tensors in and out, shared memory."""

    def __init__(self, build_dir: str | Path, config: GemmaConfig, threads: int = 0) -> None:
        self.config, self.device, self.dtype = config, torch.device("cpu"), torch.float32
        self.sessions = {}
        for graph, name in GEMMA_FILES.items():
            path = Path(build_dir) / name
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such file (run `make engine`)")
            self.sessions[graph] = ort_session(path, threads)

    def _run(self, graph: str, inputs) -> tuple[torch.Tensor, ...]:
        names, outputs, _ = GRAPHS[graph]
        feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
        return tuple(torch.from_numpy(o) for o in self.sessions[graph].run(list(outputs), feed))

    def encode(self, *inputs):
        return self._run("encoder", inputs)

    def canvas(self, *inputs):
        return self._run("canvas", inputs)


def export_checked(
    model: DiffusionGemma, out: Path, threads: int, log: Callable[[str], None]
) -> dict:
    """Export both graphs into `out`, check them against PyTorch; the manifest's parity figures.
    Raises ParityError naming the output that differs."""
    figures: dict = {}
    for graph, (names, outputs, module) in GRAPHS.items():
        path = out / GEMMA_FILES[graph]
        proto = export_graph(model, graph, path)
        log(f"[export] {path}: {len(proto.graph.node)} nodes")
        x = example_inputs(model.cfg, graph, seed=1)
        got = ort_session(path, threads).run(
            list(outputs), {n: t.numpy() for n, t in zip(names, x, strict=False)}
        )
        with torch.no_grad():
            want = module(model.eval())(*x)
        for name, g, w in zip(outputs, got, want, strict=True):
            w = w.numpy()
            diff = float(np.max(np.abs(g.astype(np.float64) - w)))
            exact = w.dtype == np.int64
            if (diff != 0) if exact else diff > PARITY_TOLERANCE * float(np.abs(w).max()):
                raise ParityError(f"{graph}.{name}: ONNX Runtime vs PyTorch max |diff| {diff:.3g}")
            figures[f"{graph}.{name}_max_abs_diff"] = diff
    figures["generations"] = _generations(model, out, threads)
    log(
        f"[parity] PyTorch vs ONNX Runtime: graph outputs within {PARITY_TOLERANCE} x max, "
        f"tokens and steps identical in {figures['generations']} generations"
    )
    return figures


def _generations(model: DiffusionGemma, out: Path, threads: int) -> int:
    """Whole canvas generations, a ragged batch, both engines: identical tokens and passes."""
    from dlm.sampling import GenerationRequest, generate

    g = torch.Generator().manual_seed(0)
    cfg = model.cfg
    requests = [
        GenerationRequest(
            torch.randint(0, cfg.vocab_size, (3 + 4 * i,), generator=g).tolist(),
            max_tokens=cfg.canvas_length + 2,
            max_denoising_steps=4,
            seed=i,
        )
        for i in range(3)
    ]
    ours = generate(GemmaEngine.torch(model), requests)
    theirs = generate(GemmaEngine(OrtRunner(out, cfg, threads)), requests)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if (a.token_ids, a.num_forward_passes) != (b.token_ids, b.num_forward_passes):
            raise ParityError(
                f"generation {i}: PyTorch {a.token_ids} ({a.num_forward_passes} passes) vs "
                f"ONNX Runtime {b.token_ids} ({b.num_forward_passes})"
            )
    return len(requests)
