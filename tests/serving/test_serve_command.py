"""What `make serve` runs, as it runs it: `python -m model_repository.serve` with the front door
beside the server, in the foreground; answered through the front door as soon as it prints its
banner; Ctrl-C (SIGINT) stops both cleanly, within Triton's exit timeout."""

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from model_repository import fill
from model_repository.local_server import free_ports
from model_repository.processes import poll_until, stop_process

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_make_serve_answers_at_its_banner_and_stops_cleanly_on_ctrl_c(tiny_checkpoint, tmp_path):
    values = fill.values_from_args(
        fill.parser().parse_args(["--model", str(tiny_checkpoint), "--backend", "torch"])
    )
    repo = fill.fill(tmp_path / "model_repository", values)
    http, grpc, metrics, front = free_ports(4)
    log = tmp_path / "serve.log"
    cmd = [
        sys.executable,
        *("-m", "model_repository.serve", "--repository", str(repo)),
        *("--backend-dir", str(tmp_path / "backends"), "--http-port", str(http)),
        *("--grpc-port", str(grpc), "--metrics-port", str(metrics)),
        *("--frontend-port", str(front), "--model", str(tiny_checkpoint)),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        banner = poll_until(lambda: "Stop with Ctrl-C" in log.read_text(), 240, 0.1)
        assert banner, log.read_text()[-3000:]
        assert f"front door: http://127.0.0.1:{front}/" in log.read_text()
        body = {"model": tiny_checkpoint.name, "prompt": "def f(x):", "max_tokens": 4}
        request = urllib.request.Request(
            f"http://127.0.0.1:{front}/v1/completions", json.dumps(body).encode()
        )
        with urllib.request.urlopen(request, timeout=60) as r:  # at once, no retry
            assert json.loads(r.read())["usage"]["completion_tokens"] == 4
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()[-3000:]  # (a hang guard: it takes seconds)
    finally:
        stop_process(proc, 5)
    text = log.read_text()
    assert "Exit timeout expired" not in text, text[-3000:]  # no connection held it up
    with pytest.raises(OSError):  # the front door went with it
        urllib.request.urlopen(f"http://127.0.0.1:{front}/health", timeout=5)
