"""The engine the `dlm` model serves, and the counts its metrics report.

`load_engine` picks it by the `dlm` model's BACKEND and ENGINE_DIR, through the one engine factory
`dlm.engines.load_engine`: the build's (ONNX Runtime on CPU, TensorRT on GPU, by its manifest)
or the PyTorch engine. `MeteredEngine` wraps any engine with what the metrics port shows: the
sequences whose KV cache it holds, the steps and the passes run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from dlm import cost, engines
from dlm.engine import Engine, HeldEngine, PassRequest, PassResult

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


def served_build(model_dir: str | Path, engine_dir: str | Path | None, backend: str) -> Path | None:
    """The build folder an engine is served from (backend auto: `engine_dir`, by default where
    `make engine` builds it), None for the PyTorch engine of the checkpoint (backend torch)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: must be one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return None
    if engine_dir is None:
        from export import engine_dir as default_engine_dir

        engine_dir = default_engine_dir(model_dir)
    return Path(engine_dir)


def load_engine(
    model_dir: str | Path,
    engine_dir: str | Path | None = None,
    backend: str = "auto",
    threads: int = 0,
    say: Callable[[str], None] = log.info,
    device: str = "cpu",
    pass_delay_s: float = 0.0,
    dtype: str = "auto",
    kv_hold: tuple[int, int] | None = None,
) -> Engine:
    """The serving engine of a model folder.

    backend `auto`: the build in `engine_dir` (default: where `make engine` builds it,
    `export.engine_dir`), by its manifest: ONNX Runtime, TensorRT or PyTorch (an error that says
    to run `make engine` if there is no build). backend `torch`: always the TorchEngine.
    threads: the engine's intra-op threads (torch and ONNX Runtime; 0 = their default). device:
    where a PyTorch engine runs ("cpu", "cuda", "cuda:1"; the build's ONNX Runtime and TensorRT
    engines pick their own). dtype: the PyTorch engine's (`dlm.engines.DTYPES`; a build has its
    own precision). pass_delay_s > 0: fault injection for tests, every step held that
    long (`dlm.engine.HeldEngine`, logged). kv_hold: (sequences, positions) whose KV memory a
    PyTorch engine on a GPU takes at load (`TorchEngine.hold`: the server's most passes per step
    and its longest request); on the CPU its cache grows as sequences come (host memory).
    """
    build = served_build(model_dir, engine_dir, backend)
    engine = engines.load_engine(model_dir, build, device=device, threads=threads, dtype=dtype)
    if build is None:
        name = engines.torch_dtype(dtype, device)
        kind = type(engine).__name__
        say(f"engine: {kind} on {device} for {model_dir}, {name}{cpu_threads(device)}")
        if kv_hold is not None and device != "cpu" and hasattr(engine, "hold"):
            engine.hold(*kv_hold)
            held, gb = f"{kv_hold[0]} sequences x {engine.kv.capacity}", engine.kv.nbytes / 1e9
            say(f"engine: KV cache for {held} positions, {gb:.2f} GB")
    else:
        say(f"engine: {type(engine).__name__} from {build} (model {model_dir})")
    # mode=auto's cost model: the build's cached one if measured on this machine, else now
    if "auto" in engine.config.modes:
        engine.cost_model = cost.load_or_measure(engine, build, say)
    if pass_delay_s > 0:
        say(f"engine: every pass held {pass_delay_s * 1000:.0f} ms (fault injection)")
        return HeldEngine(engine, pass_delay_s)
    return engine


def cpu_threads(device: str) -> str:
    import torch

    return f", {torch.get_num_threads()} threads" if device == "cpu" else ""
