"""What `make serve` serves: the shipped `models/default` with the engine `make engine` builds
(ONNX Runtime here, named by the manifest in build/engines/), through the real tritonserver
started with fill's defaults (no --backend, no --engine)."""

from pathlib import Path

import pytest

from client.api import GrpcClient, HttpClient
from export import engine_dir
from model_repository.local_server import LocalServer

pytestmark = pytest.mark.slow
MODEL = Path(__file__).resolve().parents[2] / "models" / "default"
PROMPTS = ["def read_config(path):\n", "import os\n\n\nclass Cache:\n"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from export.build import build

    manifest = build(MODEL, engine_dir(MODEL), log=print)  # `make engine`: skipped if up to date
    s = LocalServer(MODEL, tmp_path_factory.mktemp("triton_default"), ["--threads", "2"])
    s.backend = manifest["backend"]
    yield s
    s.stop()


@pytest.fixture()
def grpc(server):
    c = GrpcClient(f"127.0.0.1:{server.grpc}", timeout=300)
    yield c
    c.close()


def test_the_manifest_engine_serves(server):
    engine = {"onnxruntime": "OrtEngine", "tensorrt": "TrtEngine", "torch": "TorchEngine"}
    assert f"engine: {engine[server.backend]} from {engine_dir(MODEL)}" in server.tail(400)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_self_spec_equals_ar_in_fewer_passes(grpc, prompt):
    ar = grpc.generate(prompt, 48, mode="ar")
    spec = grpc.generate(prompt, 48, mode="self_spec")
    assert spec.text == ar.text and spec.num_output_tokens == ar.num_output_tokens
    assert spec.num_forward_passes < ar.num_forward_passes  # the shipped model drafts
    print(f"{prompt!r}: ar {ar.num_forward_passes} passes, self_spec {spec.num_forward_passes}")


@pytest.mark.parametrize("mode", ["ar", "diffusion", "self_spec"])
def test_stream_equals_non_stream(server, grpc, mode):
    one = grpc.generate(PROMPTS[0], 40, mode=mode, stream=False)
    streamed = grpc.generate(PROMPTS[0], 40, mode=mode, stream=True)
    assert one.responses == 1 and streamed.responses > 1
    assert streamed.text == one.text
    assert streamed.num_forward_passes == one.num_forward_passes
    http = HttpClient(f"127.0.0.1:{server.http}", timeout=300)
    assert http.generate(PROMPTS[0], 40, mode=mode, stream=True).text == one.text


@pytest.mark.parametrize("mode", ["diffusion", "self_spec"])
def test_a_request_without_a_block_gets_the_builds_as_in_process(grpc, mode):
    """preprocessing gives a request that names no block_length the block the build chose for
    its mode (the manifest's defaults, dlm.sampling.blocks), as `python -m dlm generate --engine`
    does in process: same tokens, same passes."""
    from dlm.pipeline import Pipeline

    pipe = Pipeline.load(MODEL, engine_dir=engine_dir(MODEL))
    request = pipe.request(PROMPTS[1], mode=mode, max_tokens=40)
    assert request.block_length == pipe.defaults["block_lengths"][mode]
    want = pipe.generate([request])[0]
    got = grpc.generate(PROMPTS[1], 40, mode=mode)
    assert got.text == pipe.tokenizer.decode(want.token_ids)
    assert got.num_forward_passes == want.num_forward_passes
