"""Faults: a Python backend stub killed (SIGKILL) under a real tritonserver, and the supervisor
(`model_repository.supervisor`) bringing the service back. Its own server: these tests kill it.

Two paths, both seen here: the `dlm` stub (engine, KV cache, scheduler) killed while idle is
unloaded and loaded back with the ensemble (the server stays up); killed in the middle of a
generation, its in-flight request holds the unload, so the supervisor restarts the server. Stubs
killed during start-up or several at once come back too. The module's server holds every engine
pass HOLD_MS (fill --pass-delay-ms), so that a request is in flight when a test kills under it,
on any machine."""

import os
import signal
import threading
import time

import psutil
import pytest

from client.api import ClientError, GrpcClient
from model_repository.local_server import LocalServer
from model_repository.processes import STUB, poll_until, shm_regions, stub_pids, stubs

pytestmark = pytest.mark.slow
PROMPT = "def f(x):\n    return"
HOLD_MS = 10  # a 400-token request lasts at least 4 s


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    s = LocalServer(
        tiny_checkpoint,
        tmp_path_factory.mktemp("triton_faults"),
        ["--backend", "torch", "--threads", "1", "--heartbeat-ms", "20"]
        + ["--pass-delay-ms", str(HOLD_MS)],
    )
    yield s
    s.stop()
    assert not left_behind(s), "shared memory left behind after stop"


def kill_stubs(server, *models) -> list[int]:
    """SIGKILL the Python backend stubs of `models` together."""
    live = stub_pids(server.proc.pid)
    pids = [pid for m in models for pid in live[m]]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def watch_readiness(server, until, timeout=180.0):
    """[(seconds, health ready, ensemble ready)] on every change, until `until()` holds with
    both ready again (after having been not ready) or `timeout` (a hang guard, not a bound on
    how fast)."""
    t0, seen = time.monotonic(), []

    def back() -> bool:
        state = (server.ready(), server.ready("ensemble"))
        if not seen or seen[-1][1:] != state:
            seen.append((round(time.monotonic() - t0, 2), *state))
        return len(seen) > 1 and all(state) and until()

    poll_until(back, timeout)
    return seen


def assert_recovered(server, t0, seen):
    assert any(not h and not e for _, h, e in seen), f"never reported not ready: {seen}"
    c = GrpcClient(f"127.0.0.1:{server.grpc}", timeout=60)
    try:
        assert c.generate(PROMPT, 6, mode="ar").num_output_tokens == 6
    finally:
        c.close()
    took = time.monotonic() - t0
    print(f"readiness (s, health, ensemble): {seen}; a new request succeeded {took:.1f} s after")


def left_behind(server) -> set[str]:
    """This server's shared-memory regions (other servers may run beside it) that still exist
    but no stub of it maps any more: what a killed stub or server leaves in /dev/shm."""
    live = {region for _, _, region in stubs(server.proc.pid)}
    return (shm_regions() & server.supervisor.regions) - live


def shm_settles(server, timeout=20.0) -> set[str]:
    """`left_behind`, once Triton has finished the unloads it runs in the background."""
    poll_until(lambda: not left_behind(server), timeout, 0.5)
    return left_behind(server)


def test_idle_dlm_stub_killed_is_reloaded(server):
    grpc = GrpcClient(f"127.0.0.1:{server.grpc}", timeout=60)
    assert grpc.generate(PROMPT, 4, mode="ar").num_output_tokens == 4
    grpc.close()
    t0 = time.monotonic()
    kill_stubs(server, "dlm")
    seen = watch_readiness(server, lambda: bool(server.supervisor.recoveries))
    assert server.supervisor.recoveries[-1][0] == "dlm", server.tail()
    assert_recovered(server, t0, seen)
    assert not shm_settles(server)


def test_dlm_killed_mid_request(server):
    pid_before = server.proc.pid
    recoveries = len(server.supervisor.recoveries)
    result: dict = {}
    grpc = GrpcClient(f"127.0.0.1:{server.grpc}", timeout=120)
    streaming = threading.Event()

    def run():
        try:
            result["ok"] = grpc.generate(
                PROMPT, 400, lambda u: streaming.set(), mode="ar", stream=True
            )
        except ClientError as e:
            result["error"] = str(e)
        streaming.set()

    thread = threading.Thread(target=run)
    thread.start()
    # Its first tokens are back: at least 390 passes of HOLD_MS each are still to run.
    assert streaming.wait(120) and thread.is_alive(), result
    t0 = time.monotonic()
    kill_stubs(server, "dlm")
    thread.join(30)
    grpc.close()
    assert "error" in result, result  # its engine and cache died with the stub
    seen = watch_readiness(server, lambda: len(server.supervisor.recoveries) > recoveries)
    assert_recovered(server, t0, seen)
    print(f"in-flight error: {result['error']}; recovered by {server.supervisor.recoveries[-1]}")
    print("server restarted" if server.proc.pid != pid_before else "server kept")
    assert not shm_settles(server)


def stubs_of(workdir, model: str, name: str) -> list[int]:
    """Pids of the Python backend stubs named `name` of `model` in the repository in `workdir`
    (the model's own name: the stub that checks its config while it loads; `<model>_0_0`: its
    instance)."""
    prefix = f"{workdir}/model_repository/{model}/"
    found = []
    for p in psutil.process_iter(["cmdline"]):
        argv = p.info["cmdline"] or []
        if len(argv) > 8 and argv[0].endswith(STUB):
            if argv[1].startswith(prefix) and argv[8] == name:
                found.append(p.pid)
    return found


@pytest.mark.parametrize("stub", ["preprocessing", "preprocessing_0_0"])
def test_stubs_killed_during_start_up_and_right_after_ready(tiny_checkpoint, tmp_path, stub):
    """A stub of preprocessing killed as soon as it exists: the one that checks its config (its
    load then waits for it for ever), or its instance. The ensemble, which loads only after
    every model it composes, cannot be ready yet. The server still gets ready and serves. Then,
    the moment it is ready, preprocessing and dlm killed together (once a blind spot: the
    supervisor learnt the stubs only after ready): back again."""
    workdir = tmp_path.resolve()
    made: dict = {}
    thread = threading.Thread(
        target=lambda: made.setdefault(
            "server", LocalServer(tiny_checkpoint, workdir, ["--backend", "torch"])
        )
    )
    thread.start()
    killed = []

    def kill_it() -> list[int]:
        for pid in stubs_of(workdir, "preprocessing", stub):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return killed

    poll_until(kill_it, float("inf"), 0.005, give_up=lambda: not thread.is_alive())
    thread.join(300)
    assert killed, "the server got ready before its preprocessing stub was seen"
    s = made["server"]
    try:
        if stub.endswith("_0_0"):  # an instance killed: recovered, before or after ready
            # (the config-checking stub may have been done already: nothing to recover then)
            back = poll_until(lambda: s.supervisor.recoveries and s.ready("ensemble"), 180)
            assert back, s.tail()  # 180 s: a hang guard
        print(f"killed {stub} while loading; supervisor: {s.supervisor.recoveries}")
        c = GrpcClient(f"127.0.0.1:{s.grpc}", timeout=60)
        assert c.generate(PROMPT, 6, mode="ar").num_output_tokens == 6
        c.close()
        recoveries = len(s.supervisor.recoveries)
        t0 = time.monotonic()
        kill_stubs(s, "preprocessing", "dlm")

        def both_reloaded() -> bool:  # (a restart owed from start-up may be recorded first)
            later = s.supervisor.recoveries[recoveries:]
            return any(set(r[0].split(",")) == {"preprocessing", "dlm"} for r in later)

        seen = watch_readiness(s, both_reloaded)
        assert both_reloaded(), (s.supervisor.recoveries, s.tail())
        assert_recovered(s, t0, seen)
    finally:
        s.stop()


def test_shutdown_with_streams_in_flight_ends_them(tiny_checkpoint, tmp_path):
    """SIGTERM (Ctrl-C of `make serve`) while streams are in flight: every client gets its final
    answer or an error, none hangs, the server exits within its exit timeout, no shm is left."""
    s = LocalServer(
        tiny_checkpoint,
        tmp_path,
        ["--backend", "torch", "--threads", "1", "--pass-delay-ms", str(HOLD_MS)],
    )
    outcomes, streaming = {}, [threading.Event() for _ in range(4)]

    def run(i):
        c = GrpcClient(f"127.0.0.1:{s.grpc}", timeout=120)
        try:
            r = c.generate(
                PROMPT, 480, lambda u: streaming[i].set(), mode="diffusion", steps=8, stream=True
            )
            outcomes[i] = ("done", r.num_output_tokens)
        except ClientError as e:
            outcomes[i] = ("error", str(e)[:200])
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for i, e in enumerate(streaming):  # every stream has answered at least once
            assert e.wait(120), f"stream {i}: {outcomes.get(i)}\n{s.tail()}"
        assert not outcomes, f"finished before the shutdown: {outcomes}"
    except AssertionError:
        s.stop()
        raise
    t0 = time.monotonic()
    s.stop()
    stopped = time.monotonic() - t0
    for t in threads:
        t.join(60)
    print(f"server exited {stopped:.1f} s after SIGTERM; clients: {outcomes}")
    assert not any(t.is_alive() for t in threads), "a client still waits after the server exited"
    assert len(outcomes) == 4 and all(kind in ("done", "error") for kind, _ in outcomes.values())
    # It exited by itself (not SIGKILLed by LocalServer.stop), and before its exit timeout cut it
    # off: Triton logs that cut ("Exit timeout expired").
    assert s.proc.returncode is not None and s.proc.returncode != -signal.SIGKILL, s.tail()
    assert "Exit timeout expired" not in s.tail(200), s.tail()
    assert not left_behind(s), "shared memory left behind after shutdown"
