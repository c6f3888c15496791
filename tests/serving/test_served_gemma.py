"""DiffusionGemma served like the other families: a tiny random checkpoint in transformers'
layout (vision tower included) with a real BPE tokenizer, built by `make engine` (its ONNX
Runtime graphs, checked against PyTorch), through the real tritonserver's ensemble
(tritonclient gRPC, streaming with each step's canvas) and the front door (the `openai`
client). Served tokens equal the same engine in process and transformers' generate given the
same draws (benchmarks/gemma_reference.py); bad canvas knobs get errors naming the field."""

from __future__ import annotations

import json

import pytest

from client.api import ClientError, GrpcClient
from dlm.pipeline import Pipeline
from export.build import build
from model_repository.local_server import LocalServer, free_ports
from tests.conftest import train_tiny_tokenizer

pytest.importorskip("transformers")
from benchmarks.gemma_reference import CANVAS, build_reference, reference_generate  # noqa: E402

pytestmark = pytest.mark.slow
PROMPTS = ["def f(x):\n    return", "import os\n", "class A:\n    def"]
KNOBS = dict(max_denoising_steps=5, entropy_bound=1.0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(the checkpoint folder, transformers' model saved there)"""
    folder = tmp_path_factory.mktemp("gemma_ckpt")
    ref = build_reference(
        folder, seed=3, self_conditioning=0.1,
        vocab_size=300, eos_token_id=2, bos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    train_tiny_tokenizer(folder)  # the same special ids: pad 0, bos 1, eos 2
    return folder, ref


@pytest.fixture(scope="module")
def gemma_checkpoint(reference):
    return reference[0]


@pytest.fixture(scope="module")
def served(gemma_checkpoint, tmp_path_factory):
    build(gemma_checkpoint, gemma_checkpoint / "engine", log=print)  # `make engine`
    args = ["--engine", str(gemma_checkpoint / "engine"), "--threads", "1"]
    with LocalServer(gemma_checkpoint, tmp_path_factory.mktemp("gemma_triton"), args) as s:
        yield s


def test_make_engine_builds_the_onnx_runtime_graphs(gemma_checkpoint, served):
    manifest = json.loads((gemma_checkpoint / "engine" / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime"
    assert manifest["files"] == {"encoder": "encoder.onnx", "canvas": "canvas.onnx"}
    assert manifest["config"]["canvas_length"] == CANVAS
    assert manifest["parity"]["generations"] == 3  # identical tokens, else no manifest
    assert "GemmaEngine from" in served.tail(400)
    with pytest.raises(ValueError, match="--backend=tensorrt --precision=auto: DiffusionGemma"):
        build(gemma_checkpoint, gemma_checkpoint / "trt", backend="tensorrt", log=print)


def test_served_equals_in_process_and_transformers(gemma_checkpoint, reference, served):
    pipe = Pipeline.load(gemma_checkpoint, engine_dir=gemma_checkpoint / "engine")
    c = GrpcClient(f"127.0.0.1:{served.grpc}", timeout=120)
    for i, p in enumerate(PROMPTS):
        request = pipe.request(p, max_tokens=2 * CANVAS, seed=i, **KNOBS)
        want = pipe.generate([request])[0]
        assert want.token_ids == reference_generate(reference[1], request)[0], p
        views = []
        got = c.generate(
            p, 2 * CANVAS, random_seed=i, stream=True, return_block_text=True,
            on_update=views.append, **KNOBS,
        )  # fmt: skip
        assert got.text == pipe.tokenizer.decode(want.token_ids), p
        assert got.num_forward_passes == want.num_forward_passes
        assert got.num_output_tokens == len(want.token_ids)
        steps = sum(b.passes for b in want.blocks)
        shown = [u.block_text for u in views if u.block_text]
        assert len(shown) >= steps - len(want.blocks), "each step's canvas streamed"
    steps = served.metric("dlm_canvas_denoising_steps_count")
    assert steps >= len(PROMPTS), "canvases counted"
    assert served.metric("dlm_canvas_tokens_per_step_sum") > 0
    c.close()


@pytest.mark.parametrize(
    "knob, value, message",
    [
        ("mode", "self_spec", "mode='self_spec': must be diffusion for this diffusion_gemma"),
        ("t_max", 0.1, r"t_max=0.1: must be a number in \(t_min=0.4, 100\]"),
        ("max_denoising_steps", 0, r"max_denoising_steps=0: must be an integer in \[1, 1024\]"),
        ("frequency_penalty", 0.5, "frequency_penalty=0.5: must be 0 for this diffusion_gemma"),
    ],
)
def test_bad_knob_named_and_server_keeps_serving(served, knob, value, message):
    c = GrpcClient(f"127.0.0.1:{served.grpc}", timeout=120)
    with pytest.raises(ClientError, match=message):
        c.generate("import os\n", 4, **{knob: value})
    assert c.generate("import os\n", 4, **KNOBS).num_output_tokens > 0
    c.close()


def test_front_door_openai_client(gemma_checkpoint, served, tmp_path):
    import openai

    from frontend.process import FrontDoor

    pipe = Pipeline.load(gemma_checkpoint, engine_dir=gemma_checkpoint / "engine")
    want = pipe.generate([pipe.request(PROMPTS[0], max_tokens=CANVAS, seed=4, **KNOBS)])[0]
    log = open(tmp_path / "frontend.log", "wb")
    port = free_ports(1)[0]
    door = FrontDoor(f"127.0.0.1:{served.grpc}", port, gemma_checkpoint, [], log).start()
    try:
        with openai.OpenAI(base_url=f"{door.url}/v1", api_key="-", max_retries=0) as oai:
            out = oai.completions.create(
                model=oai.models.list().data[0].id,
                prompt=PROMPTS[0],
                max_tokens=CANVAS,
                seed=4,
                extra_body=KNOBS,
            )
            assert out.choices[0].text == pipe.tokenizer.decode(want.token_ids)
            with pytest.raises(openai.BadRequestError, match="entropy_bound"):
                oai.completions.create(
                    model=out.model, prompt="x", max_tokens=4, extra_body={"entropy_bound": -1.0}
                )
    finally:
        door.stop()
