"""`python -m frontend` as a child process: what `make serve`, the tests and the benchmark start."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from frontend.protocol import model_name
from model_repository.processes import poll_until, stop_process

ROOT = Path(__file__).resolve().parent.parent


class FrontDoor:
    """The front door on `port` against Triton's gRPC address; `start()` returns once it
    answers HTTP (Triton itself may still be loading: /health says when it is ready)."""

    def __init__(
        self,
        triton: str,
        port: int,
        model: str | Path,
        args: list[str] = (),
        log=None,
        name: str | None = None,
    ) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.cmd = [
            sys.executable,
            *("-m", "frontend", "--triton", triton, "--port", str(port)),
            *("--model", str(model), *args),
            *(("--model-name", name) if name else ()),
        ]
        self.model_name = model_name(model, name)
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> FrontDoor:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self.log, stderr=self.log)
        if not poll_until(self._answers, timeout, give_up=lambda: self.proc.poll() is not None):
            code = self.proc.poll()
            self.stop()
            raise RuntimeError(f"front door did not start (exit code {code}): {self.cmd}")
        return self

    def _answers(self) -> bool:
        return self._health() is not None

    def ready(self) -> bool:
        """True once the front door reaches Triton's ensemble over gRPC (its /health says 200)."""
        return self._health() == 200

    def _health(self) -> int | None:
        """/health's status code (503: up, Triton not reachable or not ready yet); None if the
        front door does not answer HTTP."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout)
