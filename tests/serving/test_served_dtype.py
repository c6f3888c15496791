"""`fill --dtype bf16` serves the PyTorch engine in bf16: the real tritonserver answers what the
same engine does in process, and self_spec still equals ar there."""

import pytest

from client.api import GrpcClient
from dlm.pipeline import Pipeline
from model_repository.local_server import LocalServer

pytestmark = pytest.mark.slow
PROMPTS = ["def f(x):\n    return", "import os\n", "class A:\n    def"]


def test_bf16_served_equals_in_process(tiny_checkpoint, tmp_path):
    pipe = Pipeline.load(tiny_checkpoint, dtype="bf16")
    args = ["--backend", "torch", "--dtype", "bf16", "--threads", "1"]
    with LocalServer(tiny_checkpoint, tmp_path, args) as server:
        assert "bf16" in server.tail(400)  # the engine line names its dtype
        c = GrpcClient(f"127.0.0.1:{server.grpc}", timeout=120)
        for mode in ("ar", "self_spec"):
            for p in PROMPTS:
                want = pipe.generate([pipe.request(p, mode=mode, max_tokens=16)])[0]
                got = c.generate(p, 16, mode=mode, stream=False)
                assert got.text == pipe.tokenizer.decode(want.token_ids), (mode, p)
                assert got.num_forward_passes == want.num_forward_passes
        texts = {m: [c.generate(p, 16, mode=m).text for p in PROMPTS] for m in ("ar", "self_spec")}
        assert texts["self_spec"] == texts["ar"]
        c.close()
