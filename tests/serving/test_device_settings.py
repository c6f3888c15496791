"""What a machine without the wheels (the GPU one) sets: DLM_TRITON_HOME (an unpacked
scripts/pack_triton.py archive), PERF_ANALYZER, and the device of dlm's engine."""

import time

import pytest
import torch

from benchmarks import perf_analyzer as pa
from dlm.engine import HeldEngine, PassRequest, TorchEngine
from dlm.kv import FIRST_SLOTS
from model_repository import serve
from serving import engine as serving_engine


def test_triton_home_replaces_the_wheel(tmp_path, monkeypatch):
    home = tmp_path / "triton"
    (home / "bin").mkdir(parents=True)
    (home / "lib").mkdir()
    (home / "bin" / "tritonserver").write_text("")
    monkeypatch.setenv("DLM_TRITON_HOME", str(home))
    assert serve.pytriton_server_dir() == home
    assert serve.server_lib_dir() == home / "lib"
    assert serve.command("r", "b")[0] == str(home / "bin" / "tritonserver")
    assert str(home / "lib") in serve.server_env({}).get("LD_LIBRARY_PATH").split(":")
    (home / "bin" / "tritonserver").unlink()
    with pytest.raises(FileNotFoundError, match="no bin/tritonserver"):
        serve.pytriton_server_dir()


def test_without_triton_home_the_wheel_serves(monkeypatch):
    monkeypatch.delenv("DLM_TRITON_HOME", raising=False)
    assert serve.server_lib_dir().name == "nvidia_pytriton.libs"


def test_perf_analyzer_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PERF_ANALYZER", str(tmp_path / "pa"))
    assert pa.binary() == tmp_path / "pa"
    monkeypatch.delenv("PERF_ANALYZER")
    assert pa.binary() != tmp_path / "pa"


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"
            ),
        ),
    ],
)
def test_engine_device(tiny_checkpoint, device):
    said = []
    engine = serving_engine.load_engine(
        tiny_checkpoint, None, "torch", device=device, say=said.append, kv_hold=(20, 300)
    )
    assert isinstance(engine, TorchEngine) and f"TorchEngine on {device}" in said[0]
    assert {p.device.type for p in engine.model.parameters()} == {device}
    want = torch.float32 if device == "cpu" else torch.bfloat16  # dtype auto
    assert {p.dtype for p in engine.model.parameters()} == {want}
    assert engine.kv.k.device.type == device  # the KV slots too
    if device == "cpu":  # host memory: the cache grows as sequences come
        assert FIRST_SLOTS <= engine.kv.slots < 20 and not any("KV cache for" in x for x in said)
    else:  # taken at load (and a scratch slot for the CUDA graphs' padding)
        assert engine.kv.slots == 20 + 1 and engine.kv.capacity >= 300
        assert any("KV cache for 20 sequences" in x for x in said)


def test_pass_delay_holds_every_step(tiny_checkpoint, monkeypatch):
    said, slept = [], []
    engine = serving_engine.load_engine(
        tiny_checkpoint, None, "torch", say=said.append, pass_delay_s=0.02
    )
    assert isinstance(engine, HeldEngine) and "held 20 ms" in said[-1]
    monkeypatch.setattr(time, "sleep", slept.append)
    out = engine.step([PassRequest(1, 0, [5, 6, 7], 0, True, 1)])
    assert slept == [0.02] and len(out) == 1 and engine.engine.kv.cached(1) == 3
    engine.release(1)
    assert engine.engine.kv.cached(1) == 0


def test_an_ngc_tritonserver_folder_serves(tmp_path, monkeypatch):
    """The GPU image's DLM_TRITON_HOME=/opt/tritonserver: NGC keeps the stub in backends/python/
    (no python_backend_stubs/<version>/), built for the image's Python: the backend folder
    `serve` makes takes it from there."""
    home = tmp_path / "opt" / "tritonserver"
    (home / "bin").mkdir(parents=True)
    (home / "lib").mkdir()
    (home / "bin" / "tritonserver").write_text("")
    python = home / "backends" / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python / name).write_text(name)
    (python / "triton_python_backend_stub").write_text("ngc stub")
    monkeypatch.setenv("DLM_TRITON_HOME", str(home))
    made = serve.make_backend_dir(tmp_path / "backends") / "python"
    assert (made / "triton_python_backend_stub").read_text() == "ngc stub"
    assert sorted(p.name for p in made.iterdir()) == sorted(p.name for p in python.iterdir())
