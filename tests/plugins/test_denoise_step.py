"""DenoiseStep: every implementation against the NumPy spec, on named edge cases.

- hash and noise: NumPy and PyTorch bit-identical to plain Python integer arithmetic;
- PyTorch implementation vs the spec (fp32/fp16/bf16, temperature 0, > 0, mixed);
- the standard-op ONNX export in ONNX Runtime vs the spec (tokens exact, confidence 1e-6);
- the plugin node and its TensorRT graph surgery;
- the OpenAI Triton kernel in Triton's interpreter (TRITON_INTERPRET=1, on CPU) vs the spec;
- the decision functions (output shapes/dtypes, launch tile/warps, AOT signature and ABI);
- the real TensorRT plugin registration: skipped, TensorRT cannot be installed here.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton_kernel decorates its kernel

import numpy as np
import pytest
import torch

from plugins.denoise_step import contract
from plugins.denoise_step.reference import (
    _mul32_,
    denoise_step_numpy,
    denoise_step_torch,
    gumbel_noise_numpy,
    gumbel_noise_torch,
    hash32_torch,
)

REPO = Path(__file__).resolve().parents[2]
# Library noise: Triton's interpreter converts 1-element arrays to ints the way NumPy 1.25+
# deprecates; torch.export uses a deprecated pytree check.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
]
CONF_ATOL = 1e-6

try:
    import triton  # noqa: F401

    from plugins.denoise_step import triton_kernel

    if type(triton_kernel.denoise_step_kernel).__name__ != "InterpretedFunction":
        # Imported earlier without TRITON_INTERPRET (by another test module): decorate again.
        triton_kernel = importlib.reload(triton_kernel)
    TRITON_SKIP = ""
except ImportError as exc:
    triton_kernel = None
    TRITON_SKIP = f"triton cannot be imported here: {exc}"

needs_triton = pytest.mark.skipif(triton_kernel is None, reason=TRITON_SKIP or "triton present")


def _py_hash32(x: int) -> int:
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    x ^= x >> 16
    return x


def _case(b: int, t: int, v: int, temps, seed: int = 0, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((b, t, v)) * scale).astype(np.float32)
    temperature = np.asarray(temps, dtype=np.float32)
    assert temperature.shape == (b,)
    return logits, temperature, rng.integers(0, 2**32, b, dtype=np.int64)


def _assert_same(got, want, what: str, atol: float = CONF_ATOL) -> None:
    tok, conf = (np.asarray(g.cpu() if torch.is_tensor(g) else g) for g in got)
    bad = np.argwhere(tok != want[0])
    diff = np.abs(conf.astype(np.float64) - want[1])
    assert tok.dtype == np.int64, f"{what}: token dtype {tok.dtype}"
    assert conf.dtype == np.float32, f"{what}: confidence dtype {conf.dtype}"
    assert len(bad) == 0, f"{what}: {len(bad)}/{tok.size} tokens differ, first {bad[:3].tolist()}"
    assert diff.max() <= atol, f"{what}: max |conf diff| {diff.max():.2e}, mean {diff.mean():.2e}"


# Named edge cases: (logits [B, T, V] float32, temperature [B]); the spec decides the answer.
def _ties():
    x = np.zeros((2, 3, 1000), np.float32)
    x[:, :, [17, 400, 999]] = 2.5  # equal maxima: index 17 must win at temperature 0
    return x, np.array([0.0, 0.0], np.float32)


def _huge():
    x = _case(2, 2, 700, [0, 1])[0]
    x[:, :, 321] = 1e30  # exp of everything else underflows to 0: confidence exactly 1
    return x, np.array([0.0, 0.9], np.float32)


def _all_equal():
    return np.full((2, 2, 513), -3.0, np.float32), np.array([0.0, 1.0], np.float32)


EDGE_CASES = {
    "ties": _ties,
    "single huge logit": _huge,
    "all equal": _all_equal,
    "V=1": lambda: (np.ones((2, 3, 1), np.float32), np.array([0.0, 2.0], np.float32)),
}


# ----------------------------------------------------------------------------- hash and noise


def test_hash32_matches_python_integers():
    rng = np.random.default_rng(1)
    xs = np.concatenate([[0, 1, 2**31 - 1, 2**31, 2**32 - 1], rng.integers(0, 2**32, 500)])
    want = np.array([_py_hash32(int(x)) for x in xs], dtype=np.uint64)
    assert np.array_equal(contract.hash32_np(xs), want)
    assert np.array_equal(hash32_torch(torch.from_numpy(xs)).numpy().astype(np.uint64), want)


def test_mul32_split_equals_uint32_product():
    xs = np.array([0, 1, 0xFFFF, 0x10000, 2**31, 2**32 - 1, 0xDEADBEEF], dtype=np.int64)
    for c in (contract.HASH_MUL1, contract.HASH_MUL2):
        want = [(int(x) * c) % 2**32 for x in xs]
        got = _mul32_(torch.from_numpy(xs.copy()), c).tolist()
        assert got == want, f"c={c:#x}"


def test_noise_is_identical_and_inside_open_interval():
    seed = np.array([0, 2**32 - 1, 987654321], dtype=np.int64)
    g_np = gumbel_noise_numpy(seed, 5, 3000)
    g_t = gumbel_noise_torch(torch.from_numpy(seed), 5, 3000).numpy()
    assert g_np.dtype == g_t.dtype == np.float64
    # Same hash bits; float64 log differs by up to an ulp between libm and torch's vectorised
    # log (seen: 2% of values, 1.8e-15 at most), so scores agree to ~1e-15 and tokens agree
    # unless two scores of a row tie to that precision.
    np.testing.assert_allclose(g_t, g_np, rtol=0, atol=1e-14)
    assert np.isfinite(g_np).all()
    # u in (0, 1) strictly: g is bounded by -log(-log(0.5 / 2**32)) and its mirror.
    assert g_np.min() > -3.2 and g_np.max() < 23.0


def test_noise_differs_by_seed_and_position():
    g = gumbel_noise_numpy(np.array([1, 2], dtype=np.int64), 2, 256)
    assert not np.allclose(g[0], g[1]) and not np.allclose(g[0, 0], g[0, 1])


# ----------------------------------------------------------------------------- spec checks


@pytest.mark.parametrize(
    ("field", "args", "message"),
    [
        (
            "logits",
            (np.zeros((2, 3), np.float32), np.zeros(2, np.float32), np.zeros(2, np.int64)),
            "logits: rank must be 3",
        ),
        (
            "temperature",
            (np.zeros((2, 1, 4), np.float32), np.zeros(3, np.float32), np.zeros(2, np.int64)),
            "temperature: shape must be [B]",
        ),
        (
            "seed dtype",
            (np.zeros((2, 1, 4), np.float32), np.zeros(2, np.float32), np.zeros(2, np.int32)),
            "seed: dtype must be int64",
        ),
        (
            "negative temperature",
            (np.zeros((1, 1, 4), np.float32), np.array([-1.0], np.float32), np.zeros(1, np.int64)),
            "temperature: must be finite and >= 0",
        ),
        (
            "seed range",
            (np.zeros((1, 1, 4), np.float32), np.zeros(1, np.float32), np.array([2**32], np.int64)),
            "seed: must lie in [0, 2**32)",
        ),
        (
            "empty vocab",
            (np.zeros((1, 1, 0), np.float32), np.zeros(1, np.float32), np.zeros(1, np.int64)),
            "logits: vocabulary size V must be >= 1",
        ),
    ],
)
def test_spec_rejects_bad_inputs_naming_the_field(field, args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        denoise_step_numpy(*args)


def test_output_specs_and_decisions():
    tok, conf = contract.output_specs(("B", "T", "V"), "bfloat16")
    assert (tok.shape, tok.dtype, conf.shape, conf.dtype) == (
        ("B", "T"),
        "int64",
        ("B", "T"),
        "float32",
    )
    with pytest.raises(ValueError, match="logits: dtype must be one of"):
        contract.output_specs((1, 2, 3), "float64")
    with pytest.raises(ValueError, match="torch.float64|float64"):
        denoise_step_torch(
            torch.zeros(1, 1, 4, dtype=torch.float64),
            torch.zeros(1),
            torch.zeros(1, dtype=torch.int64),
        )


# ----------------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("shape", "temps"),
    [
        ((3, 5, 1000), [0.0, 0.0, 0.0]),
        ((3, 5, 1000), [0.7, 1.0, 2.5]),
        ((4, 8, 4097), [0.0, 0.8, 0.0, 1.3]),  # mixed batch; V not a power of two
    ],
)
def test_torch_matches_spec(dtype, shape, temps):
    logits, temp, seed = _case(*shape, temps)
    x = torch.from_numpy(logits).to(dtype)
    want = denoise_step_numpy(x.float().numpy(), temp, seed)  # fp16/bf16 -> fp32 is exact
    got = denoise_step_torch(x, torch.from_numpy(temp), torch.from_numpy(seed))
    _assert_same(got, want, f"torch {dtype} {shape} {temps}")


@pytest.mark.parametrize(
    "temps", [[0.0, 0.0, 0.0, 0.0], [0.0, 0.8, 0.0, 1.3], [0.7, 1.0, 2.5, 0.9]]
)
def test_torch_told_whether_it_samples_matches_spec(temps):
    """`sample=` (a CUDA graph's form: told, not read from the device): True draws noise for
    every row and keeps the greedy rows' argmax, False none; both give the spec's tokens."""
    logits, temp, seed = _case(4, 8, 4097, temps)
    want = denoise_step_numpy(logits, temp, seed)
    args = tuple(map(torch.from_numpy, (logits, temp, seed)))
    _assert_same(denoise_step_torch(*args, sample=True), want, f"sample=True {temps}")
    if not any(temps):
        _assert_same(denoise_step_torch(*args, sample=False), want, "sample=False")


@pytest.mark.parametrize("case", EDGE_CASES)
def test_torch_edge_cases(case):
    logits, temp = EDGE_CASES[case]()
    seed = np.array([3, 2**32 - 1], dtype=np.int64)
    want = denoise_step_numpy(logits, temp, seed)
    _assert_same(denoise_step_torch(*map(torch.from_numpy, (logits, temp, seed))), want, case)
    if case == "ties":
        assert (want[0][0] == 17).all()
    if case == "single huge logit":
        assert (want[0] == 321).all() and (want[1] == 1.0).all()
    if case == "all equal":
        np.testing.assert_allclose(want[1], 1 / 513, rtol=1e-6)


def test_sampling_follows_temperature():
    """Statistical sanity: at temperature 1 the sampled token frequencies follow softmax."""
    logits = np.log(np.array([[[0.5, 0.3, 0.2]]], np.float32)).repeat(4000, axis=1)
    token, _ = denoise_step_numpy(logits, np.array([1.0], np.float32), np.array([7], np.int64))
    freq = np.bincount(token[0], minlength=3) / token.size
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.03)


# ----------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def ort_standard():
    from plugins.denoise_step import onnx_op

    model = onnx_op.export_standard_onnx()
    return model, onnx_op.ort_session(model)


def test_onnx_graph_is_standard_ops(ort_standard):
    import onnx

    from plugins.denoise_step.onnx_op import node_domains, nonstandard_ops

    model, _ = ort_standard
    onnx.checker.check_model(model, full_check=True)
    assert nonstandard_ops(model) == set()
    ops = {op for _, op in node_domains(model)}
    assert {"BitwiseXor", "Log", "ArgMax", "NonZero"} <= ops
    assert [i.name for i in model.graph.input] == ["logits", "temperature", "seed"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert all(isinstance(d, str) and d for d in dims), f"logits dims not all dynamic: {dims}"


@pytest.mark.parametrize(
    ("shape", "temps"),
    [
        ((3, 5, 1000), [0.0, 0.0, 0.0]),  # greedy: zero sampling rows
        ((3, 5, 1000), [0.0, 0.9, 2.0]),  # mixed
        ((1, 1, 1), [1.0]),
        ((2, 32, 4096), [0.6, 0.6]),  # all sampling, other shapes than the export example
    ],
)
def test_ort_matches_spec(ort_standard, shape, temps):
    from plugins.denoise_step.onnx_op import run_ort

    logits, temp, seed = _case(*shape, temps, seed=sum(shape))
    _assert_same(
        run_ort(ort_standard[1], logits, temp, seed),
        denoise_step_numpy(logits, temp, seed),
        f"ORT {shape} {temps}",
    )


@pytest.mark.parametrize("case", EDGE_CASES)
def test_ort_edge_cases(ort_standard, case):
    from plugins.denoise_step.onnx_op import run_ort

    logits, temp = EDGE_CASES[case]()
    seed = np.array([3, 2**32 - 1], dtype=np.int64)
    _assert_same(
        run_ort(ort_standard[1], logits, temp, seed),
        denoise_step_numpy(logits, temp, seed),
        f"ORT {case}",
    )


def test_plugin_node_and_tensorrt_surgery(ort_standard):
    import onnx

    from plugins.denoise_step import onnx_op

    model = onnx_op.export_onnx(plugin=True)
    nodes = list(model.graph.node)
    assert [(n.domain, n.op_type) for n in nodes] == [("dlm", "DenoiseStep")]
    assert list(nodes[0].input) == ["logits", "temperature", "seed"]
    outs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert outs["token"].elem_type == onnx.TensorProto.INT64
    assert outs["confidence"].elem_type == onnx.TensorProto.FLOAT
    assert len(outs["token"].shape.dim) == 2

    trt_form = onnx_op.to_tensorrt_plugin_form(model)
    onnx.checker.check_model(trt_form)
    (node,) = trt_form.graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "DenoiseStep"
    assert attrs == {"plugin_namespace": b"dlm", "plugin_version": b"1", "aot": 1}
    with pytest.raises(ValueError, match="model: no dlm::DenoiseStep node"):
        onnx_op.to_tensorrt_plugin_form(ort_standard[0])


def test_plugin_op_runs_torch_outside_export():
    from plugins.denoise_step.onnx_op import denoise_step_op

    logits, temp, seed = _case(2, 3, 50, [0.0, 1.0])
    _assert_same(
        denoise_step_op(*map(torch.from_numpy, (logits, temp, seed))),
        denoise_step_numpy(logits, temp, seed),
        "denoise_step_op eager",
    )


# ----------------------------------------------------------------------------- Triton


def _triton(
    logits: np.ndarray, temp: np.ndarray, seed: np.ndarray, dtype=torch.float32, config=None
):
    x = torch.from_numpy(logits).to(dtype)
    return triton_kernel.denoise_step_triton(
        x, torch.from_numpy(temp), torch.from_numpy(seed), config=config
    )


@needs_triton
@pytest.mark.parametrize("case", EDGE_CASES)
def test_triton_edge_cases(case):
    logits, temp = EDGE_CASES[case]()
    seed = np.array([3, 2**32 - 1], dtype=np.int64)
    _assert_same(_triton(logits, temp, seed), denoise_step_numpy(logits, temp, seed), case)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temps", [[0.0, 0.0], [0.0, 1.1]])
def test_triton_low_precision_inputs(dtype, temps):
    logits, temp, seed = _case(2, 3, 3001, temps, seed=5)
    x = torch.from_numpy(logits).to(dtype)
    _assert_same(
        _triton(logits, temp, seed, dtype),
        denoise_step_numpy(x.float().numpy(), temp, seed),
        f"{dtype} {temps}",
    )


@needs_triton
@pytest.mark.parametrize(
    ("shape", "temps"),
    [
        ((1, 1, 1), [0.0]),
        ((1, 1, 127), [0.5]),  # V below the smallest tile
        ((2, 3, 128), [0.0, 1.0]),  # V exactly one tile
        ((3, 2, 1000), [0.3, 0.0, 5.0]),  # mixed, V not a multiple of the tile
        ((2, 4, 9000), [1.0, 0.0]),  # several tiles plus a ragged one
    ],
)
def test_triton_shape_sweep(shape, temps):
    logits, temp, seed = _case(*shape, temps, seed=shape[2])
    _assert_same(
        _triton(logits, temp, seed), denoise_step_numpy(logits, temp, seed), f"{shape} {temps}"
    )


@needs_triton
def test_triton_small_tile_walks_many_tiles():
    """A forced 128-wide tile: 16 tiles with a ragged last one, ties across tiles."""
    logits, temp, seed = _case(2, 2, 2000, [0.0, 0.7], seed=9)
    logits[0, 0, [130, 1990]] = 50.0  # equal maxima in different tiles: 130 must win
    cfg = triton_kernel.LaunchConfig(grid=(4,), block_v=128, num_warps=1)
    want = denoise_step_numpy(logits, temp, seed)
    assert want[0][0, 0] == 130
    _assert_same(_triton(logits, temp, seed, config=cfg), want, "tile 128")


@needs_triton
@pytest.mark.parametrize("temps", [[0.0], [0.8]])
def test_triton_vocab_131072(temps):
    logits, temp, seed = _case(1, 2, 131072, temps, seed=2, scale=4.0)
    _assert_same(_triton(logits, temp, seed), denoise_step_numpy(logits, temp, seed), f"{temps}")


@needs_triton
def test_triton_rejects_bad_shapes_naming_the_field():
    with pytest.raises(ValueError, match=r"seed: shape must be \[B\]"):
        triton_kernel.denoise_step_triton(
            torch.zeros(2, 1, 8), torch.zeros(2), torch.zeros(3, dtype=torch.int64)
        )
    token, conf = triton_kernel.denoise_step_triton(
        torch.zeros(0, 4, 8), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    )
    assert token.shape == conf.shape == (0, 4)


@needs_triton
def test_launch_config_decisions():
    lc = triton_kernel.launch_config
    assert (lc(32, 131072, "float32").block_v, lc(32, 131072, "float32").num_warps) == (4096, 8)
    assert (lc(32, 131072, "bfloat16").block_v, lc(32, 131072, "bfloat16").num_warps) == (8192, 16)
    assert (lc(5, 1).block_v, lc(5, 1).num_warps, lc(5, 1).grid) == (128, 1, (5,))
    assert lc(1, 1000).block_v == 1024 and lc(1, 1000).num_warps == 2
    for bad, msg in (
        ((-1, 10), "rows: must be >= 0"),
        ((1, 0), "vocab: must be >= 1"),
        ((1, 10, "float64"), "logits_dtype: must be"),
    ):
        with pytest.raises(ValueError, match=msg):
            lc(*bad)


# ----------------------------------------------------------------------------- TensorRT


@needs_triton
def test_tensorrt_decisions():
    from plugins.denoise_step import tensorrt_plugin as tp

    assert tp.autotune_io_types() == (
        "FP32|FP16|BF16,FP32|FP32|FP32,INT64|INT64|INT64," "INT64|INT64|INT64,FP32|FP32|FP32"
    )
    sig = tp.kernel_signature("bfloat16")
    assert list(sig) == [*tp.KERNEL_PARAMS, "BLOCK_V"]
    assert list(sig.values())[:7] == ["*bf16", "*fp32", "*i64", "i32", "i32", "*i64", "*fp32"]
    assert tp.aot_plan(131072, "float32") == tp.AotPlan(block_v=4096, num_warps=8)
    assert tp.aot_plan(None, "float16").block_v == 8192  # V unknown at build: largest tile
    with pytest.raises(ValueError, match="logits_dtype: must be one of"):
        tp.kernel_signature("int8")


def test_strip_unused_trailing_params():
    from plugins.denoise_step.tensorrt_plugin import ptx_entry_params, strip_unused_trailing_params

    ptx = (
        ".visible .entry k(\n\t.param .u64 .ptr .global .align 1 k_param_0,\n"
        "\t.param .u32 k_param_1,\n\t.param .u64 .ptr .global .align 1 k_param_2\n)\n{\n"
        "\tld.param.b64 %rd1, [k_param_0];\n\tld.param.b32 %r1, [k_param_1];\n}\n"
    )
    assert ptx_entry_params(ptx, "k") == ["k_param_0", "k_param_1", "k_param_2"]
    stripped = strip_unused_trailing_params(ptx, "k", 2)
    assert ptx_entry_params(stripped, "k") == ["k_param_0", "k_param_1"]
    assert "[k_param_0]" in stripped
    with pytest.raises(ValueError, match="reads its extra parameter k_param_1"):
        strip_unused_trailing_params(ptx, "k", 1)


_AOT_SCRIPT = """
import sys
from triton.backends.compiler import GPUTarget
from plugins.denoise_step.tensorrt_plugin import KERNEL_PARAMS, aot_plan, aot_ptx, ptx_entry_params
for dtype in ("float32", "bfloat16"):  # float16 differs from bfloat16 only in the pointer type
    name, ptx, shared = aot_ptx(dtype, aot_plan(131072, dtype), target=GPUTarget("cuda", 90, 32))
    params = ptx_entry_params(ptx, name)
    assert len(params) == len(KERNEL_PARAMS), params
    assert "__nv_log" in ptx, "float64 log is not libdevice's"
    assert "div.rn.f64" in ptx, "float64 division is not IEEE"
    print(dtype, name, len(params), shared)
"""


@needs_triton
def test_aot_ptx_for_sm90_has_tensorrt_abi():
    """Compile the kernel to PTX for Hopper exactly as the plugin's aot_impl does (no GPU
    needed: Triton compiles for a named target), in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count(" 7 ") == 2, proc.stdout


@pytest.mark.tensorrt
def test_tensorrt_plugin_registers():
    pytest.importorskip(
        "tensorrt.plugin",
        reason="TensorRT is absent here: not installable on these machines (ENVIRONMENT.md); "
        "run in an NGC TensorRT/Triton container with TensorRT >= 10.9",
    )
    from plugins.denoise_step.tensorrt_plugin import register

    register()
    register()  # idempotent


class _Expr:
    """A stand-in for trtp.ShapeExpr: a symbol or constant with * arithmetic."""

    def __init__(self, text: str, const: int | None = None) -> None:
        self.text, self.const, self.is_fake = text, const, False

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    def constant_value(self) -> int:
        assert self.const is not None
        return self.const

    def __mul__(self, other: _Expr) -> _Expr:
        return _Expr(f"{self.text}*{other.text}")


def _fake_tensorrt(monkeypatch) -> dict:
    """Install fake `tensorrt` / `tensorrt.plugin` modules that record the registrations and
    check annotations are classes (as trtp does); returns the registry."""
    import types
    import typing

    registry: dict = {}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9-fake"
    for name in ("float32", "float16", "bfloat16", "int64"):
        setattr(trt, name, f"trt.{name}")
    trtp = types.ModuleType("tensorrt.plugin")

    class TensorDesc:
        def __init__(self, shape_expr=(), dtype=None) -> None:
            self.shape_expr, self.dtype = shape_expr, dtype

    class KernelLaunchParams:
        grid_x = block_x = shared_mem = None

    def decorator(kind):
        def wrap(plugin_id):
            def store(fn):
                hints = typing.get_type_hints(fn)  # fails on string annotations it cannot resolve
                assert all(not isinstance(h, str) for h in hints.values())
                registry[(kind, plugin_id)] = fn
                return fn

            return store

        return wrap

    trtp.TensorDesc, trtp.KernelLaunchParams = TensorDesc, KernelLaunchParams
    trtp.register, trtp.autotune, trtp.aot_impl = (decorator(k) for k in ("reg", "tune", "aot"))
    trtp.from_shape_expr = lambda shape, dtype: TensorDesc(tuple(shape), dtype)
    trtp.AutoTuneCombination = lambda types, layouts: (types, layouts)
    trtp.SymInt32 = lambda e: ("i32", e.text)
    trtp.SymExprs = tuple
    trtp.SymIntExprs = types.SimpleNamespace(from_tuple=tuple)
    trt.plugin = trtp
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    return registry


@needs_triton
def test_tensorrt_registration_wiring_with_fake_trt(monkeypatch):
    """The plugin's register/autotune/aot_impl bodies against a fake trtp: output descs, type
    combinations, grid = B*T, block = warps*32, scalars (T, V). The PTX itself is checked by
    test_aot_ptx_for_sm90_has_tensorrt_abi; TensorRT's own validation cannot run here."""
    from plugins.denoise_step import tensorrt_plugin as tp

    registry = _fake_tensorrt(monkeypatch)
    monkeypatch.setattr(tp, "_REGISTERED", False)
    monkeypatch.setattr(tp, "aot_ptx", lambda dtype, plan: ("k", f"ptx-{dtype}", 64))
    tp.register()
    trtp = sys.modules["tensorrt.plugin"]
    dims = (_Expr("B"), _Expr("T"), _Expr("V", 131072))
    logits = trtp.TensorDesc(dims, "trt.bfloat16")
    small = trtp.TensorDesc((), "trt.float32")

    token, conf = registry[("reg", "dlm::DenoiseStep")](logits, small, small)
    assert [e.text for e in token.shape_expr] == ["B", "T"] and token.dtype == "trt.int64"
    assert [e.text for e in conf.shape_expr] == ["B", "T"] and conf.dtype == "trt.float32"
    ((types_, layout),) = registry[("tune", "dlm::DenoiseStep")](logits, small, small, ())
    assert types_ == tp.autotune_io_types() and layout == "LINEAR"
    name, ptx, launch, scalars = registry[("aot", "dlm::DenoiseStep")](
        logits, small, small, (token, conf), 0
    )
    assert (name, ptx) == (b"k", b"ptx-bfloat16")
    assert (launch.grid_x.text, launch.block_x, launch.shared_mem) == ("B*T", 16 * 32, 64)
    assert scalars == (("i32", "T"), ("i32", "V"))
