"""What a machine without the wheels (the GPU one) sets: DLM_TRITON_HOME (an unpacked
scripts/pack_triton.py archive), PERF_ANALYZER, and the denoiser's device."""

import pytest

from benchmarks import perf_analyzer as pa
from dlm.serving import denoiser
from model_repository import serve


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


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_denoiser_engine_device(tiny_checkpoint, monkeypatch, device):
    seen = {}

    def engine(model, where="cpu"):
        seen["device"] = where
        return "engine"

    monkeypatch.setattr(denoiser, "TorchEngine", engine)
    said = []
    assert denoiser.load_engine(tiny_checkpoint, None, "torch", device=device, say=said.append)
    assert seen["device"] == device and f"TorchEngine on {device}" in said[0]
