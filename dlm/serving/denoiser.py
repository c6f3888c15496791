"""The engine behind the wire: the `denoiser` model's logic.

One call = one batched engine step over every pass in it, after releasing the sequences its
`control` input names. The engine keeps the KV cache per sequence; this class also counts the
sequences it holds (`live_sequences`), engine-agnostic, for the metrics port and the tests.

Cancellation: a CANCEL entry marks a live sequence; a later call carrying a pass of a marked
sequence reports it in `cancelled`, so the scheduler that owns it (whichever `dlm` instance)
drops it and releases its cache. The pass itself still runs: its cache must stay consistent
until then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dlm.engine import Engine, HeldEngine, TorchEngine
from dlm.serving.wire import pack_results, unpack_passes

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch")


class Denoiser:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.live: set[int] = set()
        self.cancelled: set[int] = set()
        self.calls = 0
        self.passes = 0

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Wire inputs -> wire outputs (see `dlm.serving.wire`)."""
        passes, release, cancel = unpack_passes(arrays)
        for seq_id in release:
            self.engine.release(seq_id)
            self.live.discard(seq_id)
            self.cancelled.discard(seq_id)
        self.cancelled.update(s for s in cancel if s in self.live)
        self.calls += 1
        if not passes:
            return pack_results([])
        self.live.update(p.seq_id for p in passes)
        results = self.engine.step(passes)
        self.passes += len(passes)
        return pack_results(results, [p.seq_id for p in passes if p.seq_id in self.cancelled])

    @property
    def live_sequences(self) -> int:
        return len(self.live)


def load_engine(
    model_dir: str | Path,
    engine_dir: str | Path | None = None,
    backend: str = "auto",
    threads: int = 0,
    say: Callable[[str], None] = log.info,
    device: str = "cpu",
    pass_delay_s: float = 0.0,
) -> Engine:
    """The serving engine of a model folder.

    backend `auto`: `export.engines.load_engine(engine_dir, model_dir)` (ONNX Runtime, TensorRT
    or PyTorch by the build's manifest; an error that says to run `make engine` if there is no
    build); where the `export` package is absent, a TorchEngine with a log line saying so.
    backend `torch`: always the TorchEngine. threads: the engine's intra-op threads (torch and
    ONNX Runtime; 0 = their default). device: where a PyTorch engine runs ("cpu", "cuda", "cuda:1";
    the build's ONNX Runtime and TensorRT engines pick their own). pass_delay_s > 0: fault
    injection for tests, every step held that long (`dlm.engine.HeldEngine`, logged).
    """
    engine = _load(model_dir, engine_dir, backend, threads, say, device)
    if pass_delay_s > 0:
        say(f"denoiser: every pass held {pass_delay_s * 1000:.0f} ms (fault injection)")
        return HeldEngine(engine, pass_delay_s)
    return engine


def _load(model_dir, engine_dir, backend, threads, say, device) -> Engine:
    import torch

    from dlm import checkpoint

    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: must be one of {', '.join(BACKENDS)}")
    if threads > 0:
        torch.set_num_threads(threads)
    if backend == "auto":
        try:
            from export.engines import load_engine as load_built
        except ModuleNotFoundError as e:
            if e.name not in ("export", "export.engines"):
                raise
            say(
                "denoiser: no export.engines package (ONNX/TensorRT export not installed): "
                f"falling back to the PyTorch engine for {model_dir}"
            )
        else:
            engine = load_built(engine_dir, model_dir, device=device, threads=threads)
            say(f"denoiser: {type(engine).__name__} from {engine_dir} (model {model_dir})")
            return engine
    where = f"{torch.get_num_threads()} threads" if device == "cpu" else "fp32"
    say(f"denoiser: TorchEngine on {device} for {model_dir} ({where})")
    return TorchEngine(checkpoint.load(model_dir), device)
