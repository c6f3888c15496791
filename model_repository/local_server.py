"""`LocalServer`: a real tritonserver on free local ports, filled for one checkpoint and
supervised as `make serve` supervises it, for the tests and the benchmarks."""

from __future__ import annotations

import secrets
import socket
import subprocess
import urllib.request
from pathlib import Path

from model_repository.processes import (
    remove_left_by_exited,
    remove_orphans,
    shm_regions,
    stop_process,
)
from model_repository.serve import command, make_backend_dir, server_env, terminate, wait_ready
from model_repository.supervisor import RepositoryApi, Supervisor


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LocalServer:
    """A tritonserver on free local ports for tests and benchmarks: fills the repository for
    `model_dir` (extra `fill_args` as on the fill command line), starts, waits until ready."""

    def __init__(
        self,
        model_dir: str | Path,
        workdir: str | Path,
        fill_args: list[str] = (),
        timeout: float = 240.0,
        supervise: bool = True,
        supervise_interval: float = 1.0,
    ) -> None:
        from model_repository import fill

        workdir = Path(workdir)
        self.http, self.grpc, self.metrics = free_ports(3)
        values = fill.values_from_args(
            fill.parser().parse_args(["--model", str(model_dir), *fill_args])
        )
        repo = fill.fill(workdir / "model_repository", values)
        self.admin_key = secrets.token_hex(16)
        self.api = RepositoryApi(f"127.0.0.1:{self.http}", self.admin_key, timeout=5.0)
        cmd = command(
            repo,
            make_backend_dir(workdir / "backends"),
            self.http,
            self.grpc,
            self.metrics,
            admin_key=self.admin_key,
        )
        self.supervisor: Supervisor | None = None
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "wb")
        self._cmd = cmd
        shm_baseline = shm_regions()
        self._proc = self._start()
        if supervise:  # from the start: a stub may die before the server is ready
            self.supervisor = Supervisor(
                self._proc,
                f"127.0.0.1:{self.http}",
                self.admin_key,
                repo,
                start_server=self._start,
                interval=supervise_interval,
                say=self._say,
                shm_baseline=shm_baseline,
            ).start()
        if not wait_ready(f"127.0.0.1:{self.http}", self.gone, timeout):
            self.stop()
            raise RuntimeError(f"tritonserver did not get ready:\n{self.tail()}")

    def gone(self) -> bool:
        """The server exited and nothing brings it back (no supervisor, or it gave up)."""
        if self.supervisor is not None:
            return not self.supervisor.alive
        return self._proc.poll() is not None

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            self._cmd, env=server_env(), stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def proc(self) -> subprocess.Popen:
        """The tritonserver process now (the supervisor may have started a new one)."""
        return self.supervisor.server if self.supervisor is not None else self._proc

    def _say(self, line: str) -> None:
        self._log.write(f"{line}\n".encode())
        self._log.flush()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def ready(self, model: str | None = None) -> bool:
        """`/v2/health/ready`, or `/v2/models/<model>/ready` if a model is named."""
        return self.api.ready(model)

    def metric(self, name: str, **labels) -> float:
        """The sum of a metric's samples whose labels include `labels`. KeyError when the server
        exports no such sample: a missing metric is an error, never a 0. (A plain GET of the
        Prometheus text: tritonclient has no call for the metrics port.)"""
        url = f"http://127.0.0.1:{self.metrics}/metrics"
        total, found = 0.0, False
        for line in urllib.request.urlopen(url, timeout=30).read().decode().splitlines():
            sample, _, value = line.rpartition(" ")
            if sample != name and not sample.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                total, found = total + float(value), True
        if not found:
            raise KeyError(f"metric {name} {labels or ''}: not exported on port {self.metrics}")
        return total

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (SIGKILL would leave shared memory in /dev/shm), SIGKILL only past timeout."""
        if self.supervisor is not None:
            self.supervisor.stop()
        self.api.close()  # (the calling thread's: each thread has its own)
        if self.proc.poll() is None:
            stop_process(self.proc, timeout, ask=lambda: terminate(self.proc))
        if self.supervisor is not None:  # what this server or one it restarted left
            remove_orphans(self.supervisor.baseline)
            remove_left_by_exited(self.supervisor.baseline, self.supervisor.regions)
        self._log.close()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
