"""`OrtEngine`: the Engine protocol (dlm/engine.py) on ONNX Runtime, CPU.

One `step()` is one run of the exported denoiser graph (export/onnx_export.py) for a batch of
passes: the inputs are packed by `dlm.engine.pack_batch` exactly as for the PyTorch engine, the
past keys/values come from a per-sequence `dlm.engine.KVStore` holding NumPy arrays (torch's
multi-threaded copies were measured 10x slower than NumPy's, 72 vs 7 ms to gather 8 x 256 cached
positions of the default model, when other processes share the two cores), and a pass with
`write` appends its new keys/values (`dlm.engine.CachedEngine.step`). Only token ids and
confidences leave the engine. `release(seq_id)` frees a sequence's cache.

Threads: `threads` sets the intra-op pool (0 = ONNX Runtime's default, one per core); the graph
runs sequentially, so the inter-op pool stays at 1. A pool that may not spin puts its threads to
sleep as soon as an operator is done, and each of the graph's ~500 operators wakes them again:
on the 2-core VM that is a third of a small pass. A pool that spins within a run takes the cores
from the server's other processes while it waits, which costs more than it saves once many
requests are in flight (their responses need those cores: 0.87-0.93x served at 16 requests,
1.02-1.14x at one; benchmarks/results/ort_spinning_cpu). So the engine holds two sessions of the
graph: steps of at most `spin_rows` rows (a lone request, or two) run on one whose pool spins
between operators and stops when the run returns (`session.force_spinning_stop`: an idle engine
takes no CPU), larger ones on one that never spins. The price is the weights held twice (the
default model: about 48 MB more); `spin_rows=0` holds one session, and a pool of one thread has
no worker to spin, so it holds one too.
IO binding was measured (export/bench.py) and did not help on CPU, so plain `run()` is used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from dlm.config import ModelConfig
from dlm.engine import CachedEngine, KVStore

SPIN_ROWS = 2  # steps of at most this many rows run on the spinning session (module doc)


def ort_session(model: onnx.ModelProto | str | os.PathLike, threads: int = 0, spin: bool = False):
    """An ONNX Runtime CPU session with all graph optimisations whose intra-op threads never
    spin, or, with `spin`, spin between the operators of a run and stop when it returns."""
    import onnxruntime as ort

    if threads < 0:
        raise ValueError(f"threads={threads}: must be >= 0 (0 = one per core)")
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if spin:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def check_session_io(session, cfg: ModelConfig) -> None:
    """Fail fast when the graph and the config disagree (names, KV layout L/Hkv/D)."""
    from export.contract import INPUTS, OUTPUTS, static_axes

    ins = {i.name: i.shape for i in session.get_inputs()}
    outs = [o.name for o in session.get_outputs()]
    if list(ins) != list(INPUTS) or outs != list(OUTPUTS):
        raise ValueError(
            f"onnx graph: inputs {list(ins)}, outputs {outs}; expected "
            f"{list(INPUTS)} -> {list(OUTPUTS)} (export it with export.onnx_export)"
        )
    fixed = static_axes(cfg)
    want = [fixed.get(a, a) for a in INPUTS["past_k"][1]]
    got = ins["past_k"]
    if len(got) != len(want):
        raise ValueError(f"onnx graph past_k shape {got}: expected rank {len(want)} {want}")
    for axis, w, g in zip(INPUTS["past_k"][1], want, got, strict=True):
        if axis in fixed and g != w:
            raise ValueError(
                f"onnx graph past_k shape {got}: axis {axis} is {g}, the config "
                f"says {w} (graph and config.json come from different models)"
            )


class OrtEngine(CachedEngine):
    """The denoiser on ONNX Runtime (CPU) with a per-sequence KV cache."""

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        config: ModelConfig,
        threads: int = 0,
        spin_rows: int = SPIN_ROWS,
    ):
        path = Path(onnx_path)
        if not path.exists():
            raise FileNotFoundError(f"onnx_path={str(path)!r}: no such file (run `make engine`)")
        if spin_rows < 0:
            raise ValueError(f"spin_rows={spin_rows}: must be >= 0 (0 = never spin)")
        if (threads or os.cpu_count() or 1) == 1:
            spin_rows = 0  # no worker thread to spin
        self.config, self.threads, self.spin_rows = config, threads, spin_rows
        self.session = ort_session(path, threads)
        check_session_io(self.session, config)
        self.spinning = ort_session(path, threads, spin=True) if spin_rows else None
        self.kv = KVStore(config, lambda shape: np.zeros(shape, np.float32))
        self._outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One raw graph run: INPUTS -> OUTPUTS (see export/onnx_export.py), on the spinning
        session when the batch has at most `spin_rows` rows."""
        rows = len(feed["input_ids"])
        session = self.spinning if rows <= self.spin_rows else self.session
        return dict(zip(self._outputs, session.run(self._outputs, feed), strict=True))

    def forward(self, feed, past_k, past_v):
        out = self.run({**feed, "past_k": past_k, "past_v": past_v})
        return out["token"], out["confidence"], out["new_k"], out["new_v"]
