"""The front door as users run it: `python -m frontend` against the real tritonserver serving the
shipped model with the engine `make engine` builds. Every pass is held HOLD_MS (fill
--pass-delay-ms), so a long request is in flight long enough to be cancelled on any machine."""

import signal
from pathlib import Path

import pytest

from export import engine_dir
from frontend.process import FrontDoor
from model_repository.local_server import LocalServer, free_ports

MODEL = Path(__file__).resolve().parents[2] / "models" / "default"
HOLD_MS = 5
KEY = "sk-test-key"


@pytest.fixture(scope="session")
def triton(tmp_path_factory):
    from export.build import build

    build(MODEL, engine_dir(MODEL), log=print)  # `make engine`: skipped if up to date
    s = LocalServer(
        MODEL,
        tmp_path_factory.mktemp("triton_frontend"),
        ["--threads", "2", "--pass-delay-ms", str(HOLD_MS)],
    )
    yield s
    s.stop()


def front_door(triton, tmp_path, *args) -> FrontDoor:
    log = open(tmp_path / "frontend.log", "wb")
    return FrontDoor(f"127.0.0.1:{triton.grpc}", free_ports(1)[0], MODEL, list(args), log).start()


@pytest.fixture(scope="session")
def front(triton, tmp_path_factory):
    f = front_door(triton, tmp_path_factory.mktemp("frontend"))
    yield f
    assert f.stop() in (0, -signal.SIGTERM)  # ends on SIGTERM by itself, not SIGKILLed


@pytest.fixture(scope="session")
def keyed(triton, tmp_path_factory):
    f = front_door(triton, tmp_path_factory.mktemp("frontend_key"), "--api-key", KEY)
    yield f
    f.stop()


@pytest.fixture()
def oai(front):
    import openai

    with openai.OpenAI(base_url=f"{front.url}/v1", api_key="unused", max_retries=0) as c:
        yield c
