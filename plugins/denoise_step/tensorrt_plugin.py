"""The TensorRT plugin `dlm::DenoiseStep` (TensorRT 10.9+ Python plugins, ahead-of-time).

Contract: `contract.py`. `register()` defines, with `tensorrt.plugin` (trtp):
- `@trtp.register`: outputs token [B, T] int64 and confidence [B, T] float32 (`output_specs`);
- `@trtp.autotune`: logits FP32, FP16 or BF16; temperature FP32; seed INT64; linear layouts;
- `@trtp.aot_impl`: compiles the OpenAI Triton kernel of `triton_kernel.py` to PTX at engine
  build time and returns (kernel name, PTX, launch parameters, extra int32 scalars). TensorRT
  embeds the PTX in the engine, which then runs without Python.
The ONNX parser maps a node to this plugin by op type "DenoiseStep" with attributes
plugin_namespace="dlm", plugin_version="1", aot=1 (`onnx_op.to_tensorrt_plugin_form`).

Launch ABI: TensorRT passes the kernel (input pointers, extra scalars, output pointers), the
order of `denoise_step_kernel`'s parameters: (logits, temperature, seed, T, V, token,
confidence). Triton >= 3.3 appends scratch-pointer parameters (global_scratch, profile_scratch)
that TensorRT does not pass; `aot_ptx` checks the kernel needs no scratch and removes those
declarations from the PTX entry when the body never reads them, so the entry has exactly the
parameters TensorRT passes (and raises if it does read them).

TensorRT cannot be installed on these machines (see ENVIRONMENT.md), so `tensorrt` is imported
only inside `register()`; the decisions (signature, tile, grid, scalars, ABI) are plain functions
that the tests check, and the kernel's PTX is compiled for sm_90 on a CPU-only machine too.
(No `from __future__ import annotations` here: trtp reads the decorated functions' annotations
as classes, typing.Tuple as in TensorRT's samples.)
"""

import re
from dataclasses import dataclass

from plugins.denoise_step.contract import OP_ID, output_specs
from plugins.denoise_step.triton_kernel import MAX_BLOCK_V, LaunchConfig, launch_config

# Triton signature types of the kernel's runtime parameters, in launch order.
_TRITON_PTR = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
KERNEL_PARAMS = ("logits_ptr", "temperature_ptr", "seed_ptr", "T", "V", "token_ptr", "conf_ptr")
N_INPUTS, N_SCALARS, N_OUTPUTS = 3, 2, 2

# trt.DataType names as AutoTuneCombination spells them, per I/O position; '|' = dependent
# alternatives, repeated so every position lists one type per alternative.
_LOGITS_TYPES = ("FP32", "FP16", "BF16")
_FIXED_TYPES = ("FP32", "INT64", "INT64", "FP32")  # temperature, seed, token, confidence


def autotune_io_types() -> str:
    """The AutoTuneCombination type string: logits FP32|FP16|BF16, the rest fixed."""
    k = len(_LOGITS_TYPES)
    cols = ["|".join(_LOGITS_TYPES)] + ["|".join([t] * k) for t in _FIXED_TYPES]
    return ",".join(cols)


def kernel_signature(logits_dtype: str) -> dict[str, str]:
    """Triton ASTSource signature for the kernel with `logits_dtype` logits."""
    if logits_dtype not in _TRITON_PTR:
        raise ValueError(f"logits_dtype: must be one of {tuple(_TRITON_PTR)}, got {logits_dtype}")
    types = (_TRITON_PTR[logits_dtype], "*fp32", "*i64", "i32", "i32", "*i64", "*fp32")
    sig = dict(zip(KERNEL_PARAMS, types, strict=True))
    sig["BLOCK_V"] = "constexpr"
    return sig


@dataclass(frozen=True)
class AotPlan:
    """What the AOT implementation launches: one program per row; scalars (T, V) as int32."""

    block_v: int
    num_warps: int
    grid: str = "B*T"
    scalars: tuple[str, ...] = ("T", "V")


def aot_plan(vocab: int | None, logits_dtype: str) -> AotPlan:
    """Tile and warps for the engine: from `launch_config` when V is a build-time constant,
    else the largest tile (V unknown until run time; the kernel loops over any V)."""
    if vocab is None:
        cfg: LaunchConfig = launch_config(1, MAX_BLOCK_V * 64, logits_dtype)
    else:
        cfg = launch_config(1, vocab, logits_dtype)
    return AotPlan(block_v=cfg.block_v, num_warps=cfg.num_warps)


def ptx_entry_params(ptx: str, name: str) -> list[str]:
    """Parameter names of the `.entry name(...)` in `ptx`, in order."""
    match = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise ValueError(f"ptx: no .entry named {name}")
    return re.findall(r"\.param\s+[^,)]*?\s(\w+)\s*(?:,|$)", match.group(1).strip() + ",")


def strip_unused_trailing_params(ptx: str, name: str, keep: int) -> str:
    """Drop the entry's parameters after the first `keep` (Triton's scratch pointers) if the
    body never loads them; raise ValueError otherwise (the kernel would need them passed)."""
    params = ptx_entry_params(ptx, name)
    if len(params) < keep:
        raise ValueError(f"ptx: entry {name} has {len(params)} parameters, expected >= {keep}")
    for p in params[keep:]:
        if re.search(r"\[" + re.escape(p) + r"(\+\d+)?\]", ptx):
            raise ValueError(f"ptx: entry {name} reads its extra parameter {p}; cannot drop it")
    match = re.search(r"(\.entry\s+" + re.escape(name) + r"\s*\()(.*?)(\))", ptx, re.S)
    assert match is not None  # found by ptx_entry_params
    decls = [d for d in match.group(2).split(",")][:keep]
    return ptx[: match.start(2)] + ",".join(decls).rstrip() + "\n" + ptx[match.end(2) :]


def aot_ptx(logits_dtype: str, plan: AotPlan, target=None) -> tuple[str, str, int]:
    """Compile the kernel to PTX: (kernel name, PTX with TensorRT's parameter list, shared
    memory bytes). `target`: a triton GPUTarget; None = the current GPU."""
    import triton

    from plugins.denoise_step.triton_kernel import denoise_step_kernel

    if not hasattr(denoise_step_kernel, "fn") and not hasattr(denoise_step_kernel, "src"):
        raise RuntimeError("triton: kernel is interpreted (TRITON_INTERPRET=1); cannot compile")
    src = triton.compiler.ASTSource(
        fn=denoise_step_kernel,
        signature=kernel_signature(logits_dtype),
        constexprs={"BLOCK_V": plan.block_v},
    )
    compiled = triton.compile(src, target=target, options={"num_warps": plan.num_warps})
    meta = compiled.metadata
    for field in ("global_scratch_size", "profile_scratch_size"):
        if getattr(meta, field, 0):
            raise ValueError(
                f"triton: kernel needs {field}={getattr(meta, field)}; "
                "TensorRT's AOT launch passes no scratch buffer"
            )
    ptx = strip_unused_trailing_params(compiled.asm["ptx"], meta.name, len(KERNEL_PARAMS))
    return meta.name, ptx, meta.shared


_REGISTERED = False


def register() -> None:
    """Register `dlm::DenoiseStep` with TensorRT's plugin registry (idempotent).

    Raises ImportError if TensorRT (>= 10.9, for `trtp.aot_impl`) is not installed.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from typing import List, Tuple, Union  # noqa: UP035 - trtp validates these annotations

    import tensorrt as trt
    import tensorrt.plugin as trtp

    if not hasattr(trtp, "aot_impl"):
        raise ImportError(
            f"tensorrt: {trt.__version__} has no tensorrt.plugin.aot_impl; need TensorRT >= 10.9"
        )
    dtype_names = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}

    @trtp.register(OP_ID)
    def _desc(
        logits: trtp.TensorDesc, temperature: trtp.TensorDesc, seed: trtp.TensorDesc
    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:  # noqa: UP006
        b, t = logits.shape_expr[0], logits.shape_expr[1]
        token, conf = output_specs(("B", "T", "V"), "float32")  # both [B, T]; fixed dtypes
        trt_types = {"int64": trt.int64, "float32": trt.float32}
        return (
            trtp.from_shape_expr((b, t), dtype=trt_types[token.dtype]),
            trtp.from_shape_expr((b, t), dtype=trt_types[conf.dtype]),
        )

    @trtp.autotune(OP_ID)
    def _autotune(
        logits: trtp.TensorDesc,
        temperature: trtp.TensorDesc,
        seed: trtp.TensorDesc,
        outputs: Tuple[trtp.TensorDesc],  # noqa: UP006
    ) -> List[trtp.AutoTuneCombination]:  # noqa: UP006
        return [trtp.AutoTuneCombination(autotune_io_types(), "LINEAR")]

    @trtp.aot_impl(OP_ID)
    def _aot(
        logits: trtp.TensorDesc,
        temperature: trtp.TensorDesc,
        seed: trtp.TensorDesc,
        outputs: Tuple[trtp.TensorDesc],  # noqa: UP006
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:  # noqa: UP006, UP007
        dims = logits.shape_expr
        known = not dims[2].is_fake and dims[2].is_constant  # V fixed by the build profile
        vocab = dims[2].constant_value() if known else None
        plan = aot_plan(vocab, dtype_names[logits.dtype])
        name, ptx, shared = aot_ptx(dtype_names[logits.dtype], plan)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = dims[0] * dims[1]  # one program per row
        launch.block_x = plan.num_warps * 32
        launch.shared_mem = shared
        scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(dims[1]), trtp.SymInt32(dims[2])])
        return name.encode(), ptx.encode(), launch, scalars

    _REGISTERED = True
