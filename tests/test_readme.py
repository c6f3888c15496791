"""The README's quickstart commands, run as written against a real tritonserver (tiny model) on
free ports with the front door beside it (named `default`, as the shipped model's is): the
clients over gRPC and HTTP, curl on the generate endpoint, the metrics port and the front door,
the `openai` example, and the in-process command. The genai-perf line runs in
tests/frontend/test_genai_perf.py (against the shipped model)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from frontend.process import FrontDoor
from model_repository.local_server import LocalServer, free_ports

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\n.*?```bash\n(.*?)```", text, re.S).group(1)
    return [c for c in block.replace("\\\n", " ").splitlines() if c.strip()]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    s = LocalServer(tiny_checkpoint, tmp_path_factory.mktemp("readme"), ["--backend", "torch"])
    front = FrontDoor(f"127.0.0.1:{s.grpc}", free_ports(1)[0], tiny_checkpoint, name="default")
    s.front = front.start()
    yield s
    front.stop()
    s.stop()


def test_quickstart_commands_run(server, tiny_checkpoint):
    commands = quickstart()
    assert len(commands) == 6, commands
    ports = {"8000": server.http, "8001": server.grpc, "8002": server.metrics}
    ports["9000"] = server.front.port
    ran = 0
    for command in commands:
        if command.startswith("make bench-genai-perf"):
            continue  # see the module doc
        command = re.sub(
            r"127\.0\.0\.1:(800[012]|9000)", lambda m: f"127.0.0.1:{ports[m[1]]}", command
        )
        if "-m client" in command:
            command = command.replace("-m client", f"-m client --url 127.0.0.1:{server.grpc}", 1)
            if "--http" in command:
                command = command.replace(f":{server.grpc}", f":{server.http}", 1)
        r = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0 and r.stdout.strip(), f"{command}\n{r.stdout}\n{r.stderr}"
        assert "error" not in r.stdout.lower(), f"{command}\n{r.stdout}"
        ran += 1
    assert ran == 5
    example = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    example = example.replace("127.0.0.1:9000", f"127.0.0.1:{server.front.port}")
    r = subprocess.run([sys.executable, "-c", example], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout, r.stderr
    text = (ROOT / "README.md").read_text()
    in_process = re.search(r"`(\.venv/bin/python -m dlm generate [^`]*)`", text.replace("\n", " "))
    command = in_process.group(1).split(" ", 1)[1] + f" --model {tiny_checkpoint} --max-tokens 8"
    r = subprocess.run(["bash", "-c", f"{sys.executable} {command}"], cwd=ROOT, capture_output=True)
    assert r.returncode == 0 and b'"num_output_tokens": 8' in r.stdout, r.stderr
