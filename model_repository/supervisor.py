"""Bring a dead Python backend stub, or a dead tritonserver, back: Triton 2.51 does not.

A stub process that dies (killed, crashed, out of memory) is not restarted by Triton 2.51: every
later request to its model fails with `Stub process '<model>_0_0' is not healthy.` while
readiness still answers 200 (docs: /work/shared/ENVIRONMENT.md). The `Supervisor` thread runs
from the server's start and polls the stubs (children of the tritonserver process, through
psutil: no request, no lock) every `interval` seconds against the instance counts written in the
repository's `config.pbtxt` files, so that no moment is blind: a stub killed during start-up,
right after ready or during a reload is seen as soon as its model is READY with fewer live stubs
than its count. All the models found dead in one poll are recovered together: it unloads at
once, through the restricted model-repository API, them and the models that depend on them
(DEPENDENTS: the `ensemble` cannot serve while one of its models is away; a dead `dlm` stub took
its engine, its KV caches and so its sequences with it), so that `/v2/models/<m>/ready` says not
ready; then loads them back in dependency order and waits until each is ready again. A model it
unloaded stays owed until it is READY again: a load that fails (its new stub killed too) is
retried at the next poll, as is any model of the repository that is not READY once the server's
initial load is over (a stub killed while loading). A model unloaded by someone else after it
was READY is left alone.

In-flight requests of a dead model fail with an error (Triton's: "... Stub process 'dlm_0_0' is
not healthy", or their connection closed).

Seen here: a stub killed while it exchanges a message with the server (e.g. `dlm` in the
middle of a generation) can take tritonserver itself down (`boost::interprocess::lock_exception`,
abort). Given `start_server`, the supervisor then removes the dead server's shared-memory
regions (made since the first start and mapped by no live process: a killed server leaves them
in /dev/shm) and starts a new one on the same ports; in-flight requests see their connection
closed. The same happens when the dead model's unload does not finish in `settle_s` (a request
stuck in the dead stub holds it: seen when `dlm` dies mid-generation). At most
`max_restarts` restarts per 10 minutes, then it gives up (the server's exit code stands).
"""

from __future__ import annotations

import graphlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import tritonclient.http as triton_http
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from model_repository.processes import (
    STUB,
    alive,
    killed_stubs,
    poll_until,
    remove_orphans,
    shm_regions,
    stop_process,
    stubs,
)

log = logging.getLogger(__name__)

# model -> the models to cycle with it (unloaded before it, loaded back after it).
DEPENDENTS: dict[str, tuple[str, ...]] = {
    "dlm": ("ensemble",),
    "preprocessing": ("ensemble",),
    "postprocessing": ("ensemble",),
}


def load_order(dependents: dict[str, tuple[str, ...]] = DEPENDENTS) -> list[str]:
    """Every model named in `dependents`, each before the models that depend on it."""
    graph: dict[str, set[str]] = {}
    for model, deps in dependents.items():
        graph.setdefault(model, set())
        for d in deps:
            graph.setdefault(d, set()).add(model)
    return list(graphlib.TopologicalSorter(graph).static_order())


def repository_instances(repository: str | Path) -> dict[str, int]:
    """Model -> how many Python backend stubs it runs (its instance count; 0 for a model
    without stubs, the ensemble), for every model of a filled repository."""
    found = {}
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        found[path.parent.name] = instance_count(config) if config.backend == "python" else 0
    return found


def instance_count(config: model_config_pb2.ModelConfig) -> int:
    """The instances a model config asks for: each group's count (1 if unset) on each GPU it
    names (one GPU if none is named)."""
    if not config.instance_group:
        return 1
    return sum((g.count or 1) * max(1, len(g.gpus)) for g in config.instance_group)


class RepositoryApi:
    """The restricted model-repository API (load, unload, index: header `dlm-admin-key`) and
    readiness, through tritonclient's HTTP client (one per thread: it is not thread-safe)."""

    def __init__(self, http: str, admin_key: str, timeout: float = 30.0) -> None:
        self.url, self.headers, self.timeout = http, {"dlm-admin-key": admin_key}, timeout
        self._local = threading.local()

    @property
    def client(self) -> triton_http.InferenceServerClient:
        if getattr(self._local, "client", None) is None:
            self._local.client = triton_http.InferenceServerClient(
                self.url, connection_timeout=self.timeout, network_timeout=self.timeout
            )
        return self._local.client

    def close(self) -> None:
        """Close the calling thread's connection: an idle keep-alive connection holds up
        Triton's shutdown for its whole exit timeout ("Found 1 HTTP service connections")."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None

    def load(self, model: str) -> None:
        """Blocks until loaded; InferenceServerException with Triton's error if it fails."""
        self.client.load_model(model, headers=self.headers)

    def unload(self, model: str) -> None:
        self.client.unload_model(model, headers=self.headers)

    def states(self) -> dict[str, str]:
        """Model -> state (READY, UNAVAILABLE, LOADING, UNLOADING) from the repository index."""
        index = self.client.get_model_repository_index(headers=self.headers)
        return {m["name"]: m.get("state", "") for m in index}

    def ready(self, model: str | None = None) -> bool:
        """`/v2/models/<model>/ready`, or `/v2/health/ready` if no model is named."""
        try:
            return self.client.is_model_ready(model) if model else self.client.is_server_ready()
        except (InferenceServerException, OSError):
            return False


class Supervisor:
    """Watches the tritonserver `server` and recovers a model whose stub died (module doc)."""

    def __init__(
        self,
        server: subprocess.Popen,
        http: str,
        admin_key: str,
        repository: str | Path,
        start_server: Callable[[], subprocess.Popen] | None = None,
        interval: float = 2.0,
        settle_s: float = 5.0,
        load_timeout: float = 120.0,
        max_restarts: int = 3,
        dependents: dict[str, tuple[str, ...]] = DEPENDENTS,
        say: Callable[[str], None] = log.warning,
        shm_baseline: set[str] | None = None,
    ) -> None:
        """repository: the filled model repository the server serves (its instance counts);
        shm_baseline: the regions in /dev/shm before the first server started (default: those
        now); only regions made since are ever removed."""
        self.server, self.start_server = server, start_server
        self.baseline = shm_regions() if shm_baseline is None else set(shm_baseline)
        self.api = RepositoryApi(http, admin_key, timeout=load_timeout)
        self.interval, self.settle_s, self.load_timeout = interval, settle_s, load_timeout
        self.max_restarts, self.restarts = max_restarts, []  # monotonic times of restarts
        self.dependents, self.say = dependents, say
        self.expected = repository_instances(repository)  # model -> stubs it runs
        order = load_order(dependents)
        self.order = order + sorted(set(self.expected) - set(order))
        self.owed: set[str] = set(self.expected)  # not yet seen READY since start or unload
        self.failed_loads: dict[str, int] = {}  # model -> loads failed in a row
        self.last_stubs: list[int] = []  # pids of the stubs seen in the last poll
        self.regions: set[str] = set()  # shared-memory regions of every stub it has seen
        self.recoveries: list[tuple[str, float]] = []  # (dead models, seconds to recover)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def alive(self) -> bool:
        """The thread still watches (False once stopped, or given up on a dead server)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Supervisor:
        """Watch from now on: call it right after starting the server, before it is ready."""
        self._thread = threading.Thread(target=self._run, name="dlm-supervisor", daemon=True)
        self._thread.start()
        return self

    def halt(self) -> None:
        """No further check or reload (safe from a signal handler: does not wait)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.load_timeout)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    if self.server.poll() is not None:
                        if not self.restart():
                            return
                        continue
                    self.check_once()
                except Exception:  # the supervisor must outlive a failed check: log, go on
                    log.exception("supervisor check failed")
        finally:
            self.api.close()  # this thread's connection

    def dead(self) -> list[str]:
        """Models to recover: READY with fewer live stubs than their instance count, and the
        models owed a load (see module doc) that are not READY; [] while the server does not
        answer yet (still loading its models at start-up)."""
        found = stubs(self.pid)
        self.last_stubs = [pid for _, pid, _ in found]
        self.regions.update(region for _, _, region in found)
        live: dict[str, int] = {}
        for model, _, _ in found:
            live[model] = live.get(model, 0) + 1
        try:
            states = self.api.states()
        except OSError:  # refused, reset or timed out
            # Not listening yet: the server is loading its models. A stub killed meanwhile
            # holds its model's load for ever (seen here): only a new server gets past it.
            if killed_stubs(self.pid) and self.server.poll() is None:
                self.say("supervisor: a stub died while the server loads its models: restarting")
                self.terminate()
                self.restart()
            return []
        short = {m for m, n in self.expected.items() if live.get(m, 0) < n}
        dead = {m for m in short if states.get(m) == "READY"}
        self.owed -= {m for m in self.owed if states.get(m) == "READY" and m not in short}
        dead |= {m for m in self.owed if states.get(m) not in ("READY", "LOADING", "UNLOADING")}
        return [m for m in self.order if m in dead]

    def check_once(self) -> list[str]:
        """One poll; recovers and returns the models whose stub died."""
        dead = self.dead()
        if dead and not self._stop.is_set():
            self.recover(dead)
        return dead

    def recover(self, dead: list[str]) -> None:
        """Unload the `dead` models and their dependents, load them back in dependency order.
        An unload that does not settle in `settle_s` (a request stuck in a dead stub holds it)
        restarts the server."""
        t0 = time.monotonic()
        cycle = set(dead)
        for m in dead:
            cycle.update(self.dependents.get(m, ()))
        loads = [m for m in self.order if m in cycle]
        self.owed |= cycle
        self.say(f"supervisor: the stubs of {dead} died; unloading {loads[::-1]} to reload them")
        for m in reversed(loads):
            self.api.unload(m)
        try:
            self._wait(
                lambda: all(self.api.states().get(m) == "UNAVAILABLE" for m in loads),
                loads,
                self.settle_s,
            )
        except TimeoutError:
            self.say(
                f"supervisor: {loads} not unloaded in {self.settle_s} s: restarting the server"
            )
            self.terminate()
            self.restart()
            return
        for m in loads:
            try:
                self.api.load(m)  # blocks until loaded, or raises with Triton's error
            except TimeoutError:  # its new stub died while loading: the load never ends
                self.say(f"supervisor: {m} not loaded in {self.api.timeout} s: restarting")
                self.terminate()
                self.restart()
                return
            except InferenceServerException as e:
                self.failed_loads[m] = self.failed_loads.get(m, 0) + 1
                if self.failed_loads[m] >= self.max_restarts:
                    self.owed -= set(loads)
                    self.say(
                        f"supervisor: {m} failed to load {self.failed_loads[m]} times: "
                        f"giving up on {loads} ({e.message()})"
                    )
                else:
                    self.say(f"supervisor: {m} failed to load ({e}); retrying at the next poll")
                return
            self.failed_loads.pop(m, None)
            self._wait(lambda m=m: self.api.ready(m), [m])
        remove_orphans(self.baseline)  # the dead stubs' regions, if the server left them
        took = time.monotonic() - t0
        self.recoveries.append((",".join(dead), took))
        self.say(f"supervisor: {loads} reloaded and ready after {took:.1f} s")

    def terminate(self, timeout: float = 5.0) -> None:
        """SIGTERM the server, SIGKILL past `timeout` (a stuck model would hold it for its
        whole exit timeout; the regions it leaves are removed on restart)."""
        stop_process(self.server, timeout)

    def restart(self) -> bool:
        """The server exited: start a new one if allowed (see module doc); False if not."""
        rc = self.server.poll()
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 600]
        if self._stop.is_set() or self.start_server is None:
            return False
        if len(self.restarts) >= self.max_restarts:
            self.say(
                f"supervisor: tritonserver exited ({rc}); {self.max_restarts} restarts in "
                "10 minutes already: giving up"
            )
            return False
        self._end_stubs()
        removed = remove_orphans(self.baseline)
        self.say(
            f"supervisor: tritonserver exited ({rc}); removed {len(removed)} shared-memory "
            "regions it left; starting a new one"
        )
        self.restarts.append(now)
        self.owed = set(self.expected)
        self.server = self.start_server()
        try:
            self._wait(
                lambda: self.server.poll() is not None or self.api.ready("ensemble"), ["ensemble"]
            )
        except TimeoutError:
            if self._stop.is_set():  # stopped meanwhile: the new server goes too
                self.terminate(timeout=30.0)
                return False
            raise
        if self.server.poll() is not None:
            return self.restart()
        # Again: a region the old server wrote to in its last 2 s was left alone above.
        removed += remove_orphans(self.baseline)
        self.recoveries.append(("tritonserver", time.monotonic() - now))
        self.say(
            f"supervisor: new tritonserver ready after {time.monotonic() - now:.1f} s "
            f"({len(removed)} regions of the old one removed)"
        )
        return True

    def _end_stubs(self, timeout: float = 5.0) -> None:
        """End the dead server's stubs: they notice its death only after minutes, mapping
        their regions meanwhile (pids checked to still be stubs: no stranger is signalled)."""
        for pid in self.last_stubs:
            try:
                p = psutil.Process(pid)
                if STUB in " ".join(p.cmdline()):
                    p.kill()
            except psutil.Error:
                continue
        # gone or a zombie (what an orphan is until its new parent reaps it): unmapped either way
        poll_until(lambda: not any(alive(p) for p in self.last_stubs), timeout)

    def _wait(
        self, condition: Callable[[], bool], models: list[str], timeout: float | None = None
    ) -> None:
        timeout = self.load_timeout if timeout is None else timeout
        if not poll_until(condition, timeout, 0.2, give_up=self._stop.is_set):
            raise TimeoutError(f"supervisor: {models} not settled in {timeout} s")


def enabled(environ: dict[str, str] = os.environ) -> bool:
    """DLM_SUPERVISE=0 turns the supervisor off (on by default)."""
    return environ.get("DLM_SUPERVISE", "1") not in ("0", "false", "no")
