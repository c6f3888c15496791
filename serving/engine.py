"""The engine the `dlm` model serves, and the counts its metrics report.

`load_engine` picks it: the build's (export.engines: ONNX Runtime on CPU, TensorRT on GPU, by the
manifest) or the PyTorch engine. `MeteredEngine` wraps any engine with what the metrics port
shows: the sequences whose KV cache it holds, the steps and the passes run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from dlm.engine import Engine, HeldEngine, PassRequest, PassResult, TorchEngine

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch")


class MeteredEngine:
    """`engine`, counting its steps, passes and live sequences (engine-agnostic)."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.config = engine, engine.config
        self.live: set[int] = set()
        self.steps = 0
        self.passes = 0

    def step(self, passes: list[PassRequest]) -> list[PassResult]:
        self.live.update(p.seq_id for p in passes)
        results = self.engine.step(passes)
        self.steps += 1
        self.passes += len(passes)
        return results

    def release(self, seq_id: int) -> None:
        self.engine.release(seq_id)
        self.live.discard(seq_id)

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
        say(f"engine: every pass held {pass_delay_s * 1000:.0f} ms (fault injection)")
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
                "engine: no export.engines package (ONNX/TensorRT export not installed): "
                f"falling back to the PyTorch engine for {model_dir}"
            )
        else:
            engine = load_built(engine_dir, model_dir, device=device, threads=threads)
            say(f"engine: {type(engine).__name__} from {engine_dir} (model {model_dir})")
            return engine
    where = f"{torch.get_num_threads()} threads" if device == "cpu" else "fp32"
    say(f"engine: TorchEngine on {device} for {model_dir} ({where})")
    return TorchEngine(checkpoint.load(model_dir), device)
