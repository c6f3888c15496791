"""nginx in front of tritonserver replicas on this machine (loopback only).

    make deploy-deps                        # Debian's nginx 1.22, unpacked into build/nginx
    python -m deploy.nginx --replicas 2     # replicas + nginx in the foreground; Ctrl-C stops

Each replica is a `LocalServer` (the real tritonserver from the nvidia-pytriton wheel, free
ports, the stub supervisor); nginx (deploy/nginx/nginx.conf.template) balances HTTP and gRPC over
them round robin and retries a failed attempt on the next one. nginx runs unprivileged in the
foreground with every file under its own folder: nothing is installed or started as a service.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from export import engine_dir
from model_repository.fill import FillError, fill_text
from model_repository.local_server import free_ports
from model_repository.processes import poll_until, stop_process

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx" / "nginx.conf.template"
UNPACKED = ROOT / "build" / "nginx" / "usr" / "sbin" / "nginx"  # make deploy-deps


def find_nginx() -> str | None:
    """$DLM_NGINX, else `make deploy-deps`'s copy, else an installed nginx; None if none."""
    for candidate in (os.environ.get("DLM_NGINX"), str(UNPACKED), shutil.which("nginx")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Upstream:
    """One replica: host and its HTTP and gRPC ports."""

    host: str
    http: int
    grpc: int


def config(
    prefix: str | Path,
    upstreams: list[Upstream],
    http_port: int,
    grpc_port: int,
    address: str = "127.0.0.1",
    fail_timeout_s: int = 10,
) -> str:
    """nginx.conf from the template; every ${KEY} filled, every value used."""
    if not upstreams:
        raise ValueError("upstreams: at least one replica is needed")

    def servers(port) -> str:
        return "\n".join(
            f"        server {u.host}:{port(u)} max_fails=1 fail_timeout={fail_timeout_s}s;"
            for u in upstreams
        )

    values = {
        "PREFIX": str(Path(prefix).resolve()),
        # Workers of a root master switch to `nobody` and could not write the temp folders.
        "USER_LINE": "user root;" if os.geteuid() == 0 else "# workers run as this user",
        "ADDRESS": address,
        "HTTP_PORT": str(http_port),
        "GRPC_PORT": str(grpc_port),
        "HTTP_SERVERS": servers(lambda u: u.http),
        "GRPC_SERVERS": servers(lambda u: u.grpc),
    }
    text, used = fill_text(TEMPLATE.read_text(), values, TEMPLATE.name)
    if set(values) - used:
        raise FillError(f"{TEMPLATE.name}: values not used: {sorted(set(values) - used)}")
    return text


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class Nginx:
    """nginx over `upstreams`, listening on `address` at `http_port` / `grpc_port` (0: free
    ports); its config, logs and temp files in `workdir`."""

    def __init__(
        self,
        upstreams: list[Upstream],
        workdir: str | Path,
        http_port: int = 0,
        grpc_port: int = 0,
        address: str = "127.0.0.1",
        binary: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        binary = binary or find_nginx()
        if binary is None:
            raise FileNotFoundError("nginx: not found (make deploy-deps, or set DLM_NGINX)")
        self.prefix = Path(workdir).resolve()
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        free = free_ports(2)
        self.address = address
        self.http, self.grpc = http_port or free[0], grpc_port or free[1]
        conf = self.prefix / "nginx.conf"
        conf.write_text(config(self.prefix, upstreams, self.http, self.grpc, address))
        argv = [binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.error_log)]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}{self.tail()}")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        listening = poll_until(
            lambda: port_open(address, self.http) and port_open(address, self.grpc),
            timeout,
            give_up=lambda: self.proc.poll() is not None,
        )
        if not listening:
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self.tail()}")

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def tail(self, n: int = 30) -> str:
        if not self.error_log.exists():
            return ""
        return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-n:])

    def access_log(self) -> list[str]:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def stop(self, timeout: float = 10.0) -> None:
        """SIGQUIT: finish open requests, then exit; SIGKILL past `timeout`."""
        if self.proc.poll() is None:
            stop_process(self.proc, timeout, ask=lambda: self.proc.send_signal(signal.SIGQUIT))

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy.nginx",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--model", default="models/default")
    p.add_argument("--engine", default=None, help="export's engine folder (default: the model's)")
    p.add_argument("--fill-args", default="", help="more model_repository.fill flags")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--grpc-port", type=int, default=8081)
    p.add_argument("--workdir", default="build/lb")
    return p


def main(argv: list[str] | None = None) -> int:
    from model_repository.local_server import LocalServer

    args = parser().parse_args(argv)
    args.engine = str(args.engine or engine_dir(args.model))
    if args.replicas < 1:
        print(f"error: --replicas {args.replicas}: must be at least 1", file=sys.stderr)
        return 2
    if find_nginx() is None:
        print("error: nginx not found: run `make deploy-deps` (or set DLM_NGINX)", file=sys.stderr)
        return 2
    work = Path(args.workdir)
    fill_args = ["--engine", args.engine, *args.fill_args.split()]
    replicas: list[LocalServer] = []
    lb = None
    try:
        for i in range(args.replicas):
            replicas.append(LocalServer(args.model, work / f"replica{i}", fill_args))
            r = replicas[-1]
            print(f"replica {i}: HTTP {r.http} gRPC {r.grpc} metrics {r.metrics}", flush=True)
        ups = [Upstream("127.0.0.1", r.http, r.grpc) for r in replicas]
        lb = Nginx(ups, work / "nginx", args.http_port, args.grpc_port)
        print(f"nginx: HTTP 127.0.0.1:{lb.http}  gRPC 127.0.0.1:{lb.grpc}. Ctrl-C stops.")
        lb.proc.wait()
        print(f"nginx exited:\n{lb.tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if lb is not None:
            lb.stop()
        for r in replicas:
            r.stop()


if __name__ == "__main__":
    sys.exit(main())
