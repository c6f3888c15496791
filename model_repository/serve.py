"""Run the real tritonserver in the foreground, under the stub supervisor.

    python -m model_repository.serve --repository build/model_repository [-- SERVER FLAGS]

The tritonserver is the nvidia-pytriton wheel's (`make serve`, the CPU image), or the one in
$DLM_TRITON_HOME (the GPU image: NGC's /opt/tritonserver; a `scripts/pack_triton.py` archive).

Makes the Python backend folder (backend library, utils, the stub for this Python), sets
LD_LIBRARY_PATH (this Python's libpython, the wheel's libraries) and PATH (this environment's
bin first, so the stubs import its packages), listens on 127.0.0.1, loads every model with
explicit model control (the model-repository API needs the DLM_ADMIN_KEY header), forwards
SIGINT/SIGTERM as SIGTERM (a killed server leaves shared memory behind in /dev/shm) and prints
a ready line with example commands once the ensemble is ready. Then a supervisor
(`model_repository.supervisor`) reloads any model whose Python backend stub died, which Triton
2.51 does not do (DLM_SUPERVISE=0 turns it off).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from dlm.schema import MODES
from model_repository.processes import (
    poll_until,
    remove_left_by_exited,
    remove_orphans,
    shm_regions,
    stub_pids,
)
from model_repository.supervisor import RepositoryApi, Supervisor, enabled
from serving import cancel

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_TIMEOUT_S = 15  # tritonserver --exit-timeout-secs: how long it waits for requests in flight
DRAIN_S = EXIT_TIMEOUT_S - 5  # requests still running then end with an error, before the cut


def pytriton_server_dir() -> Path:
    """The tritonserver folder: $DLM_TRITON_HOME if set (an unpacked `scripts/pack_triton.py`
    archive: the same layout plus its libraries in `lib/`), else the nvidia-pytriton wheel's."""
    home = os.environ.get("DLM_TRITON_HOME")
    if home:
        path = Path(home).resolve()
        if not (path / "bin" / "tritonserver").exists():
            raise FileNotFoundError(f"DLM_TRITON_HOME={home}: no bin/tritonserver")
        return path
    import pytriton

    path = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (path / "bin" / "tritonserver").exists():
        raise FileNotFoundError(f"{path}/bin/tritonserver: missing (pip install nvidia-pytriton)")
    return path


def server_lib_dir() -> Path:
    """The folder of tritonserver's shared libraries (the wheel's `nvidia_pytriton.libs`)."""
    home = pytriton_server_dir()
    if (home / "lib").is_dir():
        return home / "lib"
    return home.parent.parent / "nvidia_pytriton.libs"


def make_backend_dir(dst: str | Path) -> Path:
    """`dst/python/` with the Python backend and the stub for this interpreter's version: the
    wheel's (and a `pack_triton.py` archive's) `python_backend_stubs/<version>/`, else the one
    in `backends/python/` (an NGC image's /opt/tritonserver, built for the image's Python)."""
    src = pytriton_server_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = src / f"python_backend_stubs/{version}/triton_python_backend_stub"
    if not stub.exists():
        stub = src / "backends/python/triton_python_backend_stub"
    files = [
        src / "backends/python/libtriton_python.so",
        src / "backends/python/triton_python_backend_utils.py",
        stub,
    ]
    out = Path(dst) / "python"
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"{f}: missing from the tritonserver folder {src}")
        target = out / f.name
        if not target.exists() or target.stat().st_size != f.stat().st_size:
            shutil.copy2(f, target)
    return Path(dst)


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver: libraries and this Python environment's bin first."""
    env = dict(os.environ if base is None else base)
    # this Python's own libpython (pyenv's), never a system /usr/lib ahead of the image's paths
    own = Path(sys.base_prefix) / "lib"
    libpython = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    libs = [str(own)] * (own / libpython).exists() + [str(server_lib_dir())]
    env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    env["PATH"] = ":".join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)  # ignored by the stubs anyway; models put REPO_ROOT on sys.path
    return env


def command(
    repository: str | Path,
    backend_dir: str | Path,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    address: str = "127.0.0.1",
    admin_key: str | None = None,
    extra: list[str] = (),
) -> list[str]:
    key = admin_key or secrets.token_hex(16)
    return [
        str(pytriton_server_dir() / "bin" / "tritonserver"),
        f"--model-repository={Path(repository).resolve()}",
        f"--backend-directory={Path(backend_dir).resolve()}",
        "--backend-config=python,shm-default-byte-size=33554432",
        "--model-control-mode=explicit",
        "--load-model=*",
        f"--http-restricted-api=model-repository:dlm-admin-key={key}",
        f"--grpc-restricted-protocol=model-repository:dlm-admin-key={key}",
        f"--http-address={address}",
        f"--http-port={http_port}",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false",
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        *extra,
    ]


def terminate(server: subprocess.Popen) -> None:
    """Stop a tritonserver the clean way: tell its `dlm` instances first (requests in flight
    may finish for DRAIN_S, then get an error: `serving.cancel`), then SIGTERM (SIGKILL would
    leave shared memory behind). Triton stops taking new requests at once and waits up to its
    exit timeout for those in flight."""
    cancel.shutdown(sorted(stub_pids(server.pid).get("dlm", ())), DRAIN_S)
    server.send_signal(signal.SIGTERM)


def wait_ready(http: str, gone: Callable[[], bool] = lambda: False, timeout: float = 180.0) -> bool:
    """True once the ensemble answers ready on `http` (host:port); False once `gone()` (the
    server died and will not come back) or past `timeout`."""
    api = RepositoryApi(http, "", timeout=2.0)
    try:
        return poll_until(lambda: not gone() and api.ready("ensemble"), timeout, 0.5, gone)
    finally:
        api.close()


def example_modes(modes: tuple[str, ...]) -> tuple[str, str, str]:
    """The modes the banner's three examples show: diffusion, self_spec, ar where served."""
    return tuple(m if m in modes else modes[0] for m in ("diffusion", "self_spec", "ar"))


def ready_text(
    address: str, http: int, grpc: int, metrics: int, front: str = "", modes=MODES
) -> str:
    first, second, third = example_modes(tuple(modes))
    return f"""
dlm-triton ready: HTTP {address}:{http}  gRPC {address}:{grpc}  metrics {address}:{metrics}
  python -m client --url {address}:{grpc} --prompt 'def fib(n):' --mode {first}
  python -m client --http --url {address}:{http} --prompt 'import os' --mode {second}
  curl -s -X POST {address}:{http}/v2/models/ensemble/generate \\
       -d '{{"text_input": "def fib(n):", "max_tokens": 64, "mode": "{third}"}}'
  curl -s {address}:{metrics}/metrics | grep ^dlm_
{front}Stop with Ctrl-C.
"""


def frontend_text(url: str, model: str, modes=MODES) -> str:
    mode = example_modes(tuple(modes))[1]
    return f"""front door: {url}/ (the playground)  {url}/v1 (OpenAI API)
  curl -s {url}/v1/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "{model}", "prompt": "def fib(n):", "max_tokens": 64, "mode": "{mode}"}}'
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model_repository.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repository", default="build/model_repository")
    p.add_argument("--backend-dir", default="build/backends")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument(
        "--frontend-port",
        type=int,
        help="also run the OpenAI-compatible front door (python -m frontend) on 127.0.0.1:PORT "
        "against this server, stopped with it",
    )
    p.add_argument(
        "--model",
        default="models/default",
        help="checkpoint folder the front door reads (tokenizer, chat template, defaults): the "
        "one the repository serves",
    )
    p.add_argument("server_flags", nargs="*", help="more tritonserver flags, after --")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not (Path(args.repository) / "ensemble" / "config.pbtxt").exists():
        print(
            f"error: {args.repository}: no ensemble/config.pbtxt (run model_repository.fill)",
            file=sys.stderr,
        )
        return 2
    key = os.environ.get("DLM_ADMIN_KEY") or secrets.token_hex(16)
    cmd = command(
        args.repository,
        make_backend_dir(args.backend_dir),
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        args.address,
        key,
        [f"--log-verbose={args.log_verbose}", *args.server_flags],
    )

    def start() -> subprocess.Popen:
        # Its own session: a terminal's Ctrl-C reaches only us, and we send exactly one SIGTERM.
        return subprocess.Popen(cmd, env=server_env(), start_new_session=True)

    http = f"{args.address}:{args.http_port}"
    shm_baseline = shm_regions()
    proc = start()
    supervisor = Supervisor(
        proc,
        http,
        key,
        args.repository,
        start,
        say=lambda x: print(x, flush=True),
        shm_baseline=shm_baseline,
    )
    stopping = threading.Event()

    def forward(signum, frame):
        stopping.set()
        supervisor.halt()  # no reload or restart while stopping
        if supervisor.server.poll() is None:
            terminate(supervisor.server)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)

    def gone() -> bool:
        return stopping.is_set() or (not supervisor.alive and supervisor.server.poll() is not None)

    front = None
    if args.frontend_port:
        from frontend.process import FrontDoor

        front = FrontDoor(f"127.0.0.1:{args.grpc_port}", args.frontend_port, args.model).start()

    def announce():  # once Triton is ready, and so is the front door's channel to it
        if not wait_ready(http, gone):
            return
        from dlm.engines import model_config

        modes = model_config(args.model).modes  # what the examples may show
        more = ""
        if front is not None:
            more = frontend_text(front.url, front.model_name, modes)
            if not poll_until(front.ready, 60, 0.1, gone):
                more += f"  (not reaching Triton yet: see {front.url}/health)\n"
        if not gone():
            ports = (args.http_port, args.grpc_port, args.metrics_port)
            print(ready_text(args.address, *ports, more, modes), flush=True)

    if enabled():  # from the start: a stub may die before the server is ready
        supervisor.start()
    threading.Thread(target=announce, daemon=True).start()
    while True:
        try:
            server = supervisor.server
            rc = server.wait()
            # The supervisor restarts a server that died (not one we stopped): wait for it.
            poll_until(
                lambda server=server: stopping.is_set()
                or not supervisor.alive
                or supervisor.server is not server,
                float("inf"),
                0.5,
            )
            if stopping.is_set() or supervisor.server is server:
                remove_orphans(supervisor.baseline)  # left by a server it restarted, if any
                remove_left_by_exited(supervisor.baseline, supervisor.regions)  # and this one
                if front is not None:
                    front.stop()
                return rc
        except KeyboardInterrupt:  # a second Ctrl-C while waiting: keep waiting for the exit
            continue


if __name__ == "__main__":
    sys.exit(main())
