"""The reference samplers served (`fill --diffusion-cache prefix|none`, for benchmarks): the real
tritonserver gives our sampler's tokens and pass counts with each, as in process."""

import pytest

from client.api import GrpcClient
from dlm.pipeline import Pipeline
from model_repository.local_server import LocalServer

pytestmark = pytest.mark.slow

PROMPTS = ["def f(x):\n    return", "class A:\n"]


@pytest.mark.parametrize("cache", ["prefix", "none"])
def test_served_reference_equals_ours(tiny_checkpoint, tmp_path, cache):
    pipe = Pipeline.load(tiny_checkpoint)
    knobs = {"mode": "diffusion", "block_length": 8, "steps": 4, "max_tokens": 24}
    ours = pipe.generate([pipe.request(p, **knobs) for p in PROMPTS])
    fill = ["--backend", "torch", "--threads", "1", "--diffusion-cache", cache]
    with LocalServer(tiny_checkpoint, tmp_path, fill) as server:
        assert (
            f'"DIFFUSION_CACHE" value: {{ string_value: "{cache}" }}'
            in (tmp_path / "model_repository" / "dlm" / "config.pbtxt").read_text()
        )
        client = GrpcClient(f"127.0.0.1:{server.grpc}", timeout=120)
        for prompt, mine in zip(PROMPTS, ours, strict=True):
            r = client.generate(prompt, stream=False, **knobs)
            assert r.text == pipe.tokenizer.decode(mine.token_ids)
            assert r.num_forward_passes == mine.num_forward_passes
        client.close()
