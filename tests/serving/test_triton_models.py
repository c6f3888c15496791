"""The three Python models' `model.py` adapters, run in process with a fake
`triton_python_backend_utils`: the ensemble's chain by hand, errors, cancellation, metrics."""

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from dlm.pipeline import Pipeline
from dlm.schema import Limits
from model_repository.processes import poll_until
from tests.serving import fake_pb_utils as pb
from tests.serving.test_preprocessing import inputs

TEMPLATES = Path(__file__).resolve().parents[2] / "model_repository" / "templates"
ROOT = str(Path(__file__).resolve().parents[2])


def load_model(name: str, params: dict):
    spec = importlib.util.spec_from_file_location(
        f"triton_{name}_model", TEMPLATES / name / "1" / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = {"parameters": {k: {"string_value": str(v)} for k, v in params.items()}}
    model.initialize({"model_config": json.dumps(config)})
    return model


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = pb
    limits = Limits()  # what fill writes by default
    common = {
        "MODEL_DIR": tiny_checkpoint,
        "REPO_ROOT": ROOT,
        "MAX_PROMPT_TOKENS": limits.max_prompt_tokens,
        "MAX_OUTPUT_TOKENS": limits.max_output_tokens,
    }
    engine = {"ENGINE_DIR": "/nonexistent", "BACKEND": "torch"}  # the checkpoint's PyTorch engine
    loaded = {
        "preprocessing": load_model(
            "preprocessing", {**common, **engine, "APPLY_CHAT_TEMPLATE": "false"}
        ),
        "dlm": load_model(
            "dlm",
            {
                **common,
                **engine,
                "THREADS": 0,
                "DEVICE": "cpu",
                "DTYPE": "auto",
                "PASS_DELAY_MS": 0,
                "MAX_PASSES_PER_STEP": 64,
                "HEARTBEAT_MS": 0,
                "STREAM_INTERVAL_MS": 0,
                "CANCEL_CHECK_MS": 0,
                "KV_BUDGET_TOKENS": 65536,
                "MAX_QUEUED": 256,
                "DIFFUSION_CACHE": "full",
            },
        ),
        "postprocessing": load_model("postprocessing", common),
    }
    yield loaded
    loaded["dlm"].finalize()
    if saved is None:
        del sys.modules["triton_python_backend_utils"]
    else:
        sys.modules["triton_python_backend_utils"] = saved


def outputs(response):
    assert not response.has_error(), response.error().message()
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def ensemble(models, cancel_after: int | None = None, **knobs):
    """What the ensemble does for one request: the client's responses (dicts), or the error."""
    pre = models["preprocessing"].execute([pb.Request(inputs(**knobs))])[0]
    if pre.has_error():
        return pre.error().message()
    request = pb.Request(outputs(pre))
    models["dlm"].execute([request])
    answers, seen = [], 0
    while True:
        while seen < len(request.sender.sent):
            response, flags = request.sender.sent[seen]
            seen += 1
            if response is not None:
                if response.has_error():
                    return response.error().message()
                cancelled = cancel_after is not None and len(answers) >= cancel_after
                post = pb.Request(outputs(response), cancelled=cancelled)
                models["postprocessing"].execute([post])
                for r, _ in post.sender.sent:
                    if r is not None:
                        answers.append(outputs(r))
        if request.sender.closed.is_set() and seen == len(request.sender.sent):
            return answers
        time.sleep(0.001)


def released(models, timeout: float = 60.0) -> bool:
    """Whether every cache is freed (the dlm thread releases after the final response);
    `timeout` only keeps a broken release from hanging the suite."""
    engine = models["dlm"].orchestrator.engine
    return poll_until(lambda: engine.live_sequences == 0, timeout, 0.01)


def text(answers):
    return "".join(a["text_output"].reshape(-1)[0].decode() for a in answers)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.load(tiny_checkpoint)


@pytest.mark.parametrize(
    "mode,knobs",
    [("ar", {}), ("diffusion", {"threshold": 0.5}), ("diffusion", {"steps": 4}), ("self_spec", {})],
)
def test_chain_equals_in_process(models, pipe, mode, knobs):
    req = pipe.request("def f(x):", max_tokens=24, mode=mode, **knobs)
    ref = pipe.generate([req])[0]
    answers = ensemble(models, mode=mode, max_tokens=24, **knobs)
    assert len(answers) == 1  # not streaming: one response
    assert text(answers) == pipe.tokenizer.decode(ref.token_ids)
    assert int(answers[0]["num_output_tokens"][0, 0]) == ref.num_output_tokens
    assert int(answers[0]["num_forward_passes"][0, 0]) == ref.num_forward_passes
    streamed = ensemble(models, mode=mode, max_tokens=24, stream=True, **knobs)
    assert text(streamed) == text(answers) and len(streamed) > 1


def test_block_text(models):
    answers = ensemble(
        models, mode="diffusion", max_tokens=16, stream=True, return_block_text=True, threshold=0.99
    )
    blocks = [a["block_text"].reshape(-1)[0].decode() for a in answers]
    assert any(b.startswith("\u2591") for b in blocks)
    assert blocks[-1] == ""


def test_bad_request_in_a_batch(models):
    good, bad = pb.Request(inputs(mode="ar")), pb.Request(inputs(mode="fast"))
    responses = models["preprocessing"].execute([good, bad, good])
    assert [r.has_error() for r in responses] == [False, True, False]
    assert responses[1].error().message().startswith("mode='fast'")


def test_cancellation_through_postprocessing(models):
    engine = models["dlm"].orchestrator.engine
    passes = engine.passes
    answers = ensemble(models, cancel_after=2, mode="ar", max_tokens=300, stream=True)
    assert len(answers) == 2
    assert engine.passes - passes < 10  # stopped within a few passes, not 300
    assert released(models)


def test_metrics(models):
    ensemble(models, mode="self_spec", max_tokens=20)
    assert released(models)
    m = pb.METRICS
    key = ("dlm_engine_passes", (("model", "dlm"),))
    accepted = ("dlm_self_spec_accepted_tokens", (("mode", "self_spec"), ("model", "dlm")))
    # reported from the outbox thread, the last of it when the scheduler goes idle
    poll_until(lambda: m.get(key, 0) >= 20 and m.get(accepted, 0) >= 1, 60, 0.01)
    assert m[("dlm_requests", (("mode", "self_spec"), ("model", "dlm")))] >= 1
    assert m[("dlm_output_tokens", (("mode", "self_spec"), ("model", "dlm")))] >= 20
    assert ("dlm_self_spec_draft_tokens", (("mode", "self_spec"), ("model", "dlm"))) in m
    ensemble(models, mode="auto", max_tokens=20)
    assert released(models)
    auto = ("dlm_self_spec_block_size", (("mode", "auto"), ("model", "dlm")))  # every round
    poll_until(lambda: m.get(auto, 0) >= 1, 60, 0.01)
    pass_time = ("dlm_engine_pass_seconds", (("model", "dlm"), ("rows", "1"), ("tokens", "1")))
    assert m[pass_time] > 0
    assert m[("dlm_engine_live_sequences", (("model", "dlm"),))] == 0
    assert m[("dlm_engine_passes", (("model", "dlm"),))] >= 20
    assert any("falling back" in line or "TorchEngine" in line for line in pb.Logger.lines)
