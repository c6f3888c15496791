"""`TrtEngine`, the Engine protocol on a TensorRT plan (TensorRT 10.x), and the optimization
profiles a plan is built with and a call runs in.

NOT RUN HERE. TensorRT cannot be installed on these machines nor on the lent GPU (see
shared/ENVIRONMENT.md), so `TrtEngine` and `require_tensorrt` past the import are written against
the documented TensorRT 10.9 Python API and have never executed; they run in the NGC image of
docker/engine.Dockerfile. The profiles (`optimization_profiles`, `select_profile`) are plain code
and tested here. The build is export/tensorrt_build.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dlm.config import ModelConfig
from dlm.engine import CachedEngine, KVStore
from dlm.sampling import Limits

TENSORRT_MIN = (10, 9)  # tensorrt.plugin.aot_impl
TENSORRT_BELOW = (11, 0)
TENSORRT_PIN = "10.9.0.34"  # what docker/engine.Dockerfile installs
ABSENT = "TensorRT is absent here (not installable on these machines; see docker/engine.Dockerfile)"
DEFAULT_MAX_BATCH = 16
DEFAULT_OPT_PAST = 256  # a realistic cached prefix for the step profile's tuning shape
PREFILL_OPT_TOKENS = 128


def tensorrt_available() -> bool:
    """True if `import tensorrt` works (it does not here)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def require_tensorrt():
    """The tensorrt module, or ImportError saying it is absent or of an unsupported version."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(f"{ABSENT}: {e}") from e
    version = tuple(int(x) for x in trt.__version__.split(".")[:2])
    if not TENSORRT_MIN <= version < TENSORRT_BELOW:
        raise ImportError(
            f"tensorrt {trt.__version__}: need >= {TENSORRT_MIN[0]}.{TENSORRT_MIN[1]}"
            f" and < {TENSORRT_BELOW[0]} (Python AOT plugins)"
        )
    return trt


@dataclass(frozen=True)
class Profile:
    """One optimization profile: (min, opt, max) of each dynamic axis of export/onnx_export."""

    name: str
    dims: dict[str, tuple[int, int, int]]  # batch, block, past, k, history

    def shapes(self, cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Per graph input: (min shape, opt shape, max shape)."""
        from export.contract import INPUTS, static_axes

        fixed = static_axes(cfg)
        return {
            name: tuple(
                tuple(fixed[a] if a in fixed else self.dims[a][i] for a in axes) for i in range(3)
            )
            for name, (_, axes) in INPUTS.items()
        }

    def covers(self, dims: dict[str, int]) -> bool:
        return all(lo <= dims[a] <= hi for a, (lo, _, hi) in self.dims.items())


def optimization_profiles(
    cfg: ModelConfig,
    limits: Limits | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int | None = None,
    opt_past: int = DEFAULT_OPT_PAST,
) -> list[Profile]:
    """The profiles a plan needs to run every pass the samplers make within `limits`.

    context = min(max_position, max_prompt + max_output) bounds every sequence; a pass starts
    at most at context - 1 cached positions. Block-sized passes (denoise, draft, verify, commit,
    AR) have T <= max_block_length; prompts (prefill) and passes that recompute the context
    (diffusion without cache, fully bidirectional families) have T <= context. A batch mixes
    them, padded to the largest T and P, so the prefill profile spans the whole P range too.
    TensorRT tunes kernels for `opt`: the step profile at opt_batch rows of one model block over
    opt_past cached tokens, the hot path of diffusion decoding. The penalties' history spans
    1..max_output tokens, tuned for 1 (penalties off).
    """
    lim = limits or Limits()
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch}: must be >= 1")
    ob = min(opt_batch or 4, max_batch)
    if ob < 1:
        raise ValueError(f"opt_batch={opt_batch}: must be in [1, max_batch={max_batch}]")
    context = min(cfg.max_position, lim.max_prompt_tokens + lim.max_output_tokens)
    block_max = min(lim.max_block_length, context)
    history_max = min(lim.max_output_tokens, context)  # the penalties count generated tokens
    block_opt = min(cfg.block_length, block_max)
    if not cfg.uses_kv_cache:  # every pass recomputes prompt + committed + block; no cache
        full = min(context, max(PREFILL_OPT_TOKENS, block_opt))
        return [
            Profile(
                "full",
                {
                    "batch": (1, ob, max_batch),
                    "block": (1, full, context),
                    "past": (0, 0, 0),
                    "k": (1, block_opt, block_max),
                    "history": (1, 1, history_max),
                },
            )
        ]
    past_max = context - 1
    past_opt = min(opt_past, past_max)
    return [
        Profile(
            "step",
            {
                "batch": (1, ob, max_batch),
                "block": (1, block_opt, block_max),
                "past": (0, past_opt, past_max),
                "k": (1, block_opt, block_max),
                "history": (1, 1, history_max),
            },
        ),
        Profile(
            "prefill",
            {
                "batch": (1, 1, max_batch),
                "block": (1, min(PREFILL_OPT_TOKENS, context), context),
                "past": (0, 0, past_max),
                "k": (1, 1, context),
                "history": (1, 1, history_max),
            },
        ),
    ]


def pass_dims(feed: dict) -> dict[str, int]:
    """The dynamic axis sizes of one packed engine call (`dlm.engine.pack_batch` + past)."""
    b, t = feed["input_ids"].shape
    return {
        "batch": int(b),
        "block": int(t),
        "past": int(feed["past_len"].max()),
        "k": int(feed["out_index"].shape[1]),
        "history": int(feed["penalty_ids"].shape[1]),
    }


def select_profile(profiles: list[Profile], dims: dict[str, int]) -> int:
    """Index of the first profile covering `dims`; ValueError naming the axes otherwise."""
    for i, p in enumerate(profiles):
        if p.covers(dims):
            return i
    ranges = {p.name: {a: (lo, hi) for a, (lo, _, hi) in p.dims.items()} for p in profiles}
    raise ValueError(
        f"engine call with {dims}: outside every optimization profile {ranges} "
        "(rebuild the engine with larger serving limits)"
    )


_TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT64": "int64",
    "INT32": "int32",
}


class TrtEngine(CachedEngine):
    """The denoiser on a TensorRT plan, KV cache per sequence on the GPU (torch tensors).

    Same packing and cache as the ONNX Runtime engine (`dlm.engine.KVStore`); one
    `execute_async_v3` per step on a private CUDA stream, in the first optimization profile
    that covers the call's shapes.
    """

    def __init__(
        self,
        plan_path: str | Path,
        config: ModelConfig,
        device: str = "cuda",
        profiles: list[Profile] | None = None,
    ) -> None:
        import torch

        from plugins.denoise_step.tensorrt_plugin import register

        trt = require_tensorrt()
        register()  # harmless if the plan embeds the AOT kernel; needed if it does not
        self.config, self.device = config, torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan_path}: TensorRT could not deserialize the plan")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        self.profiles = profiles or optimization_profiles(config)
        if len(self.profiles) != self.engine.num_optimization_profiles:
            raise ValueError(
                f"{plan_path}: {self.engine.num_optimization_profiles} profiles, "
                f"expected {len(self.profiles)} ({[p.name for p in self.profiles]})"
            )
        self._profile = -1
        self._dtypes = {
            n: getattr(torch, _TORCH_DTYPES[self.engine.get_tensor_dtype(n).name])
            for n in (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors))
        }
        self._dummy = torch.zeros(16, dtype=torch.uint8, device=self.device)  # for empty tensors
        self.kv = KVStore(
            config, lambda shape: torch.zeros(shape, device=self.device, dtype=torch.float32)
        )

    def _address(self, t) -> int:
        return t.data_ptr() if t.numel() else self._dummy.data_ptr()

    def forward(self, feed, past_k, past_v):
        import torch

        from export.contract import OUTPUTS

        profile = select_profile(self.profiles, pass_dims(feed))
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the gathered past
        with torch.cuda.stream(self.stream):
            x = {k: torch.from_numpy(v).to(self.device) for k, v in feed.items()}
            x = {**x, "past_k": past_k.contiguous(), "past_v": past_v.contiguous()}
            if profile != self._profile:
                self.context.set_optimization_profile_async(profile, self.stream.cuda_stream)
                self._profile = profile
            for name, t in x.items():
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, self._address(t))
            out = {}
            for name in OUTPUTS:
                shape = tuple(self.context.get_tensor_shape(name))
                out[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
                self.context.set_tensor_address(name, self._address(out[name]))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execute failed for dims {pass_dims(feed)}")
        self.stream.synchronize()
        return (
            out["token"].cpu().numpy(),
            out["confidence"].float().cpu().numpy(),
            out["new_k"],
            out["new_v"],
        )
