"""The serving images (docker/cpu.Dockerfile, docker/gpu.Dockerfile) without a Docker engine
(none on these machines): hadolint, what the files copy and run, and their entrypoint
(docker/entrypoint.sh) run here directly: `prepare` for real on a tiny checkpoint, the server
commands as a dry run."""

import os
import re
import subprocess
import sys
from pathlib import Path

from deploy import lint

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
IMAGES = {"cpu": ROOT / "docker" / "cpu.Dockerfile", "gpu": ROOT / "docker" / "gpu.Dockerfile"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_hadolint_clean_and_able_to_complain(tmp_path):
    assert lint.hadolint(list(IMAGES.values())) == []
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\n")
    found = lint.hadolint([bad])
    assert any("DL3006" in f for f in found), found  # untagged base image
    assert any("DL3008" in f for f in found), found  # unpinned apt package


def test_images_base_entrypoint_and_user():
    gpu, cpu = instructions(IMAGES["gpu"]), instructions(IMAGES["cpu"])
    assert ("ARG", "BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3") in gpu
    assert ("FROM", "${BASE_IMAGE}") in gpu
    assert ("FROM", "python:3.11-slim-bookworm") in cpu
    for name, steps in (("gpu", gpu), ("cpu", cpu)):
        env = " ".join(args for ins, args in steps if ins == "ENV")
        server = "tritonserver" if name == "gpu" else "pytriton"
        assert f"DLM_SERVER={server}" in env
        engine = "tensorrt" if name == "gpu" else "onnxruntime"
        assert f"DLM_ENGINE_BACKEND={engine}" in env
        assert ("ENTRYPOINT", '["bash", "docker/entrypoint.sh"]') in steps
        assert [a for i, a in steps if i == "USER"] == ["10001"], "must not run as root"
        assert ("EXPOSE", "8000 8001 8002") in steps


def test_everything_copied_exists_and_is_in_the_build_context():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = [ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")]
    for path in IMAGES.values():
        for ins, args in instructions(path):
            if ins != "COPY":
                continue
            *sources, _ = args.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{path.name}: COPY {src}: no such path"
                assert any(
                    src == a or src.startswith(a + "/") for a in allowed
                ), f"{path.name}: COPY {src}: excluded by .dockerignore"


def entrypoint(*args, **env) -> subprocess.CompletedProcess:
    """docker/entrypoint.sh with this environment's Python first on PATH."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DLM_")}
    base["PATH"] = f"{Path(sys.executable).parent}:{base['PATH']}"
    base["PYTHON"] = sys.executable
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_prepare_builds_the_engine_once_then_fills_the_repository(tiny_checkpoint, tmp_path):
    env = {
        "DLM_MODEL": str(tiny_checkpoint),
        "DLM_ENGINE_DIR": str(tmp_path / "engine"),
        "DLM_WORKDIR": str(tmp_path / "work"),
        "DLM_ENGINE_BACKEND": "torch",  # writes the manifest only: seconds, not an export
        "DLM_FILL_ARGS": "--threads 1 --max-queued 7",
    }
    first = entrypoint("prepare", **env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "building the torch engine" in first.stdout
    assert (tmp_path / "engine" / "manifest.json").exists()
    repo = tmp_path / "work" / "model_repository"
    dlm_config = (repo / "dlm" / "config.pbtxt").read_text()
    assert '"7"' in dlm_config, "DLM_FILL_ARGS did not reach the fill tool"
    assert str(tiny_checkpoint) in (repo / "dlm" / "config.pbtxt").read_text()

    again = entrypoint("prepare", **env)
    assert again.returncode == 0, again.stderr
    assert "building" not in again.stdout, "rebuilt although the manifest exists"


def test_serve_refuses_an_unprepared_repository(tmp_path):
    r = entrypoint("serve", DLM_WORKDIR=str(tmp_path))
    assert r.returncode == 2 and "run" in r.stderr and "prepare" in r.stderr
    r = entrypoint("serve", DLM_SERVER="kserve", DLM_DRY_RUN="1", DLM_WORKDIR=str(tmp_path))
    assert r.returncode == 2 and "DLM_SERVER=kserve" in r.stderr


def dry_serve(server: str, tmp_path, **env) -> str:
    r = entrypoint("serve", "--log-verbose=1", DLM_SERVER=server, DLM_DRY_RUN="1",
                   DLM_WORKDIR=str(tmp_path), **env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_both_images_run_make_serve(tmp_path):
    """The GPU image runs NGC's tritonserver through the same `python -m model_repository.serve`
    as the CPU image and `make serve`: the same stub supervisor, the same server flags."""
    ports = {"DLM_HTTP_PORT": "9000", "DLM_GRPC_PORT": "9001", "DLM_METRICS_PORT": "9002"}
    cpu, gpu = (dry_serve(server, tmp_path, **ports) for server in ("pytriton", "tritonserver"))
    assert gpu.startswith("exec env DLM_TRITON_HOME=/opt/tritonserver ")
    assert cpu.startswith("exec env DLM_TRITON_HOME= ")  # empty: the wheel's
    assert cpu.split(" ", 3)[3] == gpu.split(" ", 3)[3]
    assert f"{sys.executable} -m model_repository.serve" in cpu
    assert f"--repository {tmp_path}/model_repository" in cpu
    assert "--address 0.0.0.0 --http-port 9000 --grpc-port 9001 --metrics-port 9002" in cpu
    assert cpu.rstrip().endswith("--log-verbose=1"), "extra arguments must reach the server"
    home = dry_serve("tritonserver", tmp_path, DLM_TRITON_HOME="/srv/triton")
    assert home.startswith("exec env DLM_TRITON_HOME=/srv/triton ")


def test_the_server_command_keeps_model_control_restricted(tmp_path):
    from model_repository import serve

    cmd = serve.command(
        tmp_path / "repo", tmp_path / "backends", address="0.0.0.0", admin_key="k3y"
    )
    assert "--model-control-mode=explicit" in cmd
    assert "--http-restricted-api=model-repository:dlm-admin-key=k3y" in cmd
    assert "--grpc-restricted-protocol=model-repository:dlm-admin-key=k3y" in cmd
    # Without a key: a random one per start, so nobody can use the repository API.
    keys = {
        re.search(r"dlm-admin-key=([0-9a-f]+)", " ".join(serve.command("r", "b"))).group(1)
        for _ in range(2)
    }
    assert len(keys) == 2 and all(len(k) == 32 for k in keys)
