"""Two real tritonserver replicas (tiny random model) on loopback behind a real nginx (Debian's
1.22, `make deploy-deps`), configured from deploy/nginx/nginx.conf.template: requests spread
over both replicas (each replica's own nv_inference_request_success says so), only the
ensemble is reachable through the balancer, and stopping one replica while requests keep coming
fails none of them. Bounded: a few short requests, loopback only."""

import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from client.api import GrpcClient, HttpClient
from deploy.nginx import Nginx, Upstream, find_nginx
from model_repository.local_server import LocalServer
from model_repository.processes import poll_until

pytestmark = pytest.mark.slow
PROMPT = "def f(x):\n    return"
TOKENS = 4


@pytest.fixture(scope="module")
def replicas(tiny_checkpoint, tmp_path_factory):
    if find_nginx() is None:
        pytest.skip(
            "nginx not found: `make deploy-deps` unpacks Debian's nginx into build/nginx "
            "(apt-get download nginx), or set DLM_NGINX to an nginx binary"
        )
    args = ["--backend", "torch", "--threads", "1", "--heartbeat-ms", "20"]
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(LocalServer, tiny_checkpoint, tmp_path_factory.mktemp(f"replica{i}"), args)
            for i in range(2)
        ]
        servers = [f.result() for f in futures]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def lb(replicas, tmp_path_factory):
    ups = [Upstream("127.0.0.1", r.http, r.grpc) for r in replicas]
    n = Nginx(ups, tmp_path_factory.mktemp("nginx"))
    yield n
    n.stop()
    assert n.proc.returncode == 0, n.tail()


def served(replica: LocalServer) -> int:
    """Successful `ensemble` requests, from the replica's own metrics port."""
    return int(replica.metric("nv_inference_request_success", model="ensemble"))


def status(url: str, body: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_requests_spread_over_both_replicas(replicas, lb):
    before = [served(r) for r in replicas]
    http = HttpClient(f"127.0.0.1:{lb.http}", timeout=120)
    for _ in range(6):
        assert http.generate(PROMPT, TOKENS, mode="ar").num_output_tokens == TOKENS
    grpc = GrpcClient(f"127.0.0.1:{lb.grpc}", timeout=120)
    try:
        for _ in range(2):
            assert grpc.generate(PROMPT, TOKENS, mode="ar").num_output_tokens == TOKENS
    finally:
        grpc.close()

    def counts() -> list[int]:
        return [served(r) - b for r, b in zip(replicas, before, strict=True)]

    # Triton counts a success once the response is sent: the last one may lag the client a little
    poll_until(lambda: sum(counts()) >= 8, 30)
    per_replica = counts()
    print(f"requests per replica (6 HTTP + 2 gRPC through nginx): {per_replica}")
    assert sum(per_replica) == 8, per_replica
    assert min(per_replica) >= 2, f"not spread: {per_replica}\n{lb.access_log()}"


def test_only_the_ensemble_is_reachable_through_nginx(replicas, lb):
    via, direct = f"http://127.0.0.1:{lb.http}", f"http://127.0.0.1:{replicas[0].http}"
    assert status(f"{via}/v2/health/ready") == 200
    assert status(f"{via}/v2/models/ensemble/ready") == 200
    assert status(f"{direct}/v2/models/dlm/ready") == 200  # served, but not through nginx
    assert status(f"{via}/v2/models/dlm/ready") == 403
    assert status(f"{via}/v2/models/dlm/infer", b"{}") == 403
    assert status(f"{via}/v2/repository/index", b"{}") == 403
    assert status(f"{via}/v2/repository/models/ensemble/unload", b"{}") == 403


def test_autoscaling_series_exist_on_a_replica(replicas, lb):
    """The series the chart's prometheus-adapter rule reads are what tritonserver exports."""
    from deploy import lint

    pytest.importorskip("helm_python", reason="helm-python-sdk not installed (requirements.txt)")
    config = next(o for o in lint.manifests() if o["kind"] == "ConfigMap")["data"]["config.yaml"]
    query = yaml.safe_load(config)["rules"][0]["metricsQuery"]
    names = set(re.findall(r"(nv_[a-z_]+)\{", query))
    assert names == {"nv_inference_queue_duration_us", "nv_inference_request_success"}, query
    r = replicas[0]
    queued = r.metric("nv_inference_queue_duration_us")  # every model of the replica
    served_ok = r.metric("nv_inference_request_success", model="ensemble")
    assert served_ok > 0 and queued > 0, r.tail()
    print(f"replica 0: {queued / served_ok:.0f} us queued per ensemble request so far")


def test_stopping_a_replica_fails_no_request(replicas, lb):
    victim, survivor = replicas
    http = HttpClient(f"127.0.0.1:{lb.http}", timeout=120)
    results: list[tuple[float, float, str | None]] = []  # (sent, done, error)
    done = threading.Event()

    deadline = time.monotonic() + 300  # bounded in time and count

    def send():
        while not done.is_set() and time.monotonic() < deadline and len(results) < 50_000:
            sent, error = time.monotonic(), None
            try:
                n = http.generate(PROMPT, TOKENS, mode="ar").num_output_tokens
                error = None if n == TOKENS else f"{n} tokens"
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                error = repr(e)
            results.append((sent, time.monotonic(), error))

    workers = [threading.Thread(target=send) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        poll_until(lambda: len(results) >= 4, 120, 0.05)
        survivor_before = served(survivor)
        t_stop = time.monotonic()
        victim.stop()  # SIGTERM: its listeners close at once, open connections are reset
        t_gone = time.monotonic()
        poll_until(lambda: sum(sent >= t_gone for sent, _, _ in results) >= 8, 120, 0.05)
    finally:
        done.set()
        for w in workers:
            w.join(180)
    failures = [r for r in results if r[2] is not None]
    during = [r for r in results if r[1] >= t_stop and r[0] < t_gone]
    after = [r for r in results if r[0] >= t_gone]
    retried = [ln for ln in lb.access_log() if "upstream_status=" in ln and ", " in ln]
    survivor_gained = served(survivor) - survivor_before
    print(
        f"{len(results)} requests: {len(during)} in flight or sent while the replica stopped "
        f"({t_gone - t_stop:.1f} s), {len(after)} after; failures {len(failures)}; "
        f"retried on the other replica by nginx: {len(retried)}; "
        f"survivor served {survivor_gained} since the stop"
    )
    assert not failures, f"{failures}\n{lb.tail()}"
    assert len(after) >= 8, f"too few requests after the stop: {len(after)}"
    assert survivor_gained >= len(after), "requests after the stop must all reach the survivor"
