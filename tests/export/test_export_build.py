"""`python -m export`: the manifest, skipping an unchanged build, loading it through the one
engine factory (`dlm.engines.load_engine`), and `python -m dlm generate --engine` running it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import export
from dlm import cost
from dlm.engine import TorchEngine
from dlm.engines import TORCH_LOADER, EngineError, load_engine
from dlm.pipeline import Pipeline
from dlm.sampling import blocks
from dlm.sampling.self_spec import engine_forks
from export import build as build_mod
from export.ort_engine import OrtEngine


def test_manifest(nld_build):
    m = nld_build.manifest
    assert m["backend"] == "onnxruntime" and m["precision"] == "fp32" and m["opset"] == 18
    assert m["source"]["sha256"] == build_mod.checkpoint_hash(nld_build.model_dir)
    assert m["source"]["files"] == ["config.json", "model.safetensors"]
    assert m["versions"]["exporter"] == export.EXPORTER_VERSION
    assert m["files"] == {"onnx": "denoiser.onnx"}
    assert m["loader"] == "export.engines:onnxruntime"
    assert m["io"]["inputs"]["past_k"]["shape"][1] == "batch"
    assert m["io"]["outputs"].keys() == {"token", "confidence", "new_k", "new_v"}
    assert {"load", "export", "parity"} <= m["timings"].keys()
    assert json.loads((nld_build.out / "manifest.json").read_text()) == m
    assert any(line.startswith("[parity]") for line in nld_build.log)
    # the blocks chosen from the build's own measured pass times (dlm.sampling.blocks)
    measured = cost.CostModel(**json.loads((nld_build.out / cost.FILE).read_text()))
    trained = nld_build.model.cfg.block_length
    chosen = blocks.block_lengths(measured, trained)
    forks = blocks.self_spec_forks(measured, chosen["self_spec"])
    assert m["defaults"] == {"block_length": chosen, "self_spec_fork": forks}
    assert all(2 <= b <= trained for b in m["defaults"]["block_length"].values())
    assert any(line.startswith("[defaults] block_length self_spec") for line in nld_build.log)


def test_rerun_with_nothing_changed_skips(nld_build, monkeypatch):
    from dlm import checkpoint

    def no_load(*args, **kwargs):
        raise AssertionError("an up-to-date build loaded the checkpoint")

    monkeypatch.setattr(checkpoint, "load", no_load)
    log: list[str] = []
    m = build_mod.build(nld_build.model_dir, nld_build.out, backend="onnxruntime", log=log.append)
    assert m == nld_build.manifest and log[0].startswith("[skip]")
    # The CLI too, in a fresh process: this path imports neither torch nor onnx.
    code = (
        "import sys; from export.build import main; rc = main(sys.argv[1:]); "
        "heavy = sorted({'torch', 'onnx', 'onnxruntime'} & set(sys.modules)); "
        "print('imported:', heavy); sys.exit(rc or bool(heavy))"
    )
    args = ["--model", str(nld_build.model_dir), "--backend", "onnxruntime"]
    r = subprocess.run(
        [sys.executable, "-c", code, *args, "--out", str(nld_build.out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "[skip]" in r.stdout, r.stdout + r.stderr


def test_what_invalidates_a_build(nld_build, monkeypatch):
    out, h = nld_build.out, nld_build.manifest["source"]["sha256"]
    assert build_mod.up_to_date(out, h, "onnxruntime", "fp32", {}) is not None
    assert build_mod.up_to_date(out, "0" * 64, "onnxruntime", "fp32", {}) is None
    assert build_mod.up_to_date(out, h, "torch", "fp32", {}) is None
    monkeypatch.setattr(export, "EXPORTER_VERSION", "999")
    assert build_mod.up_to_date(out, h, "onnxruntime", "fp32", {}) is None


def test_hash_follows_the_weights(nld_build, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(nld_build.model_dir, copy)
    h = build_mod.checkpoint_hash(copy)
    assert h == nld_build.manifest["source"]["sha256"]
    (copy / "tokenizer.json").write_text("{}")  # not an engine input
    assert build_mod.checkpoint_hash(copy) == h
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert build_mod.checkpoint_hash(copy) != h


def test_load_engine_by_manifest(nld_build, tmp_path):
    e = load_engine(nld_build.model_dir, nld_build.out, threads=1)
    assert isinstance(e, OrtEngine) and e.config == nld_build.model.cfg
    assert isinstance(load_engine(nld_build.model_dir), TorchEngine)  # no build: PyTorch
    torch_dir = tmp_path / "torch"
    torch_dir.mkdir()
    m = dict(nld_build.manifest, backend="torch", loader=TORCH_LOADER, files={})
    (torch_dir / "manifest.json").write_text(json.dumps(m))
    assert isinstance(load_engine(nld_build.model_dir, torch_dir), TorchEngine)
    with pytest.raises(EngineError, match="no manifest"):
        load_engine(nld_build.model_dir, tmp_path / "nothing")
    for loader, why in ((None, "older exporter"), ("export.nowhere:load", "cannot be imported")):
        (torch_dir / "manifest.json").write_text(json.dumps(dict(m, loader=loader)))
        with pytest.raises(EngineError, match=why):
            load_engine(nld_build.model_dir, torch_dir)


def test_the_pytorch_engine_in_a_dtype(nld_build, tmp_path):
    """dtype is the PyTorch engine's (auto: fp32 on the CPU); a build has its own precision."""
    import torch

    for dtype, want in (("auto", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        e = load_engine(nld_build.model_dir, dtype=dtype)
        assert next(e.model.parameters()).dtype == want
    assert load_engine(nld_build.model_dir, nld_build.out, dtype="fp32").config  # its own
    with pytest.raises(EngineError, match=r"dtype=bf16: the build in .* \(onnxruntime\) runs fp32"):
        load_engine(nld_build.model_dir, nld_build.out, dtype="bf16")
    with pytest.raises(ValueError, match="dtype='int4': must be one of auto, fp32, bf16, fp16"):
        load_engine(nld_build.model_dir, dtype="int4")


def test_bf16_self_speculation_equals_bf16_ar():
    """Lossless within bf16 as in fp32 (the shipped model, a ragged batch of held-out prompts)."""
    from dlm.pipeline import DEFAULT_MODEL, Pipeline
    from dlm.train.prompts import held_out_prompts

    pipe = Pipeline.load(DEFAULT_MODEL, dtype="bf16")
    prompts = [p.prompt for p in held_out_prompts(6)]

    def run(mode):
        out = pipe.generate([pipe.request(p, mode=mode, max_tokens=32) for p in prompts])
        return [r.token_ids for r in out], sum(r.num_forward_passes for r in out)

    (ar, _), (spec, passes) = run("ar"), run("self_spec")
    assert spec == ar and passes < sum(map(len, ar))


def test_load_engine_refuses_another_model(nld_build, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(nld_build.model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["dlm"]["num_layers"] = 3
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineError, match="num_layers"):
        load_engine(other, nld_build.out)


def test_torch_backend_writes_only_a_manifest(nld_build, tmp_path):
    m = build_mod.build(nld_build.model_dir, tmp_path / "t", backend="torch", log=lambda s: None)
    assert m["backend"] == "torch" and m["files"] == {} and "parity" not in m
    assert isinstance(load_engine(nld_build.model_dir, tmp_path / "t"), TorchEngine)


def test_a_rebuild_measures_its_pass_times_anew(nld_build, tmp_path):
    """The cached cost model belongs to the engine it measured: a rebuild drops it."""
    out = tmp_path / "t"
    build_mod.build(nld_build.model_dir, out, backend="torch", log=lambda s: None)
    stale = json.loads((out / cost.FILE).read_text())
    stale["seconds"] = [[1.0] * len(line) for line in stale["seconds"]]
    (out / cost.FILE).write_text(json.dumps(stale))
    build_mod.build(nld_build.model_dir, out, backend="torch", force=True, log=lambda s: None)
    fresh = json.loads((out / cost.FILE).read_text())
    assert fresh["machine"] == stale["machine"] and all(s < 1.0 for s in fresh["seconds"][0])


def dlm_generate(*args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "dlm", "generate", "--json", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_dlm_generate_runs_the_built_engine(nld_build):
    """`python -m dlm generate --engine DIR`: the build `make serve` serves, in process, gives
    the torch backend's text under greedy ar (same tokens, same forward passes)."""
    args = ["--model", str(nld_build.model_dir), "--prompt", "def f(x):", "--mode", "ar"]
    args += ["--max-tokens", "24", "--temperature", "0"]
    built = dlm_generate(*args, "--engine", str(nld_build.out))
    reference = dlm_generate(*args)
    assert (built["engine"], reference["engine"]) == ("OrtEngine", "TorchEngine")
    assert built["token_ids"] == reference["token_ids"], (built, reference)
    assert built["text"] == reference["text"] and built["num_output_tokens"] == 24
    assert built["num_forward_passes"] == reference["num_forward_passes"]


def test_bad_backend_and_precision(nld_build, tmp_path):
    with pytest.raises(ValueError, match="--backend"):
        build_mod.build(nld_build.model_dir, tmp_path, backend="tvm")
    with pytest.raises(ValueError, match="--precision=bf16"):
        build_mod.build(nld_build.model_dir, tmp_path, backend="onnxruntime", precision="bf16")


def test_a_request_that_names_no_block_gets_the_builds(nld_build):
    """In process from the build, a self_spec or diffusion request without block_length or steps
    gets the block the manifest chose for its mode; one that names them keeps them."""
    chosen = nld_build.manifest["defaults"]["block_length"]
    pipe = Pipeline.load(nld_build.model_dir, engine_dir=nld_build.out)
    trained = pipe.engine.config.block_length
    for mode in ("self_spec", "diffusion"):
        assert pipe.request("def f(x):", mode=mode).block_length == chosen[mode]
        assert pipe.request("def f(x):", mode=mode, block_length=8).block_length == 8
    assert pipe.request("def f(x):", mode="diffusion", steps=2).block_length == trained
    assert pipe.request("def f(x):", mode="auto").block_length == trained  # auto's bound
    assert Pipeline.load(nld_build.model_dir).request("x", mode="diffusion").block_length == trained
    # and its self_spec rounds fork as the build decided (the PyTorch engine: every round)
    assert engine_forks(pipe.engine) == nld_build.manifest["defaults"]["self_spec_fork"]
    assert engine_forks(Pipeline.load(nld_build.model_dir).engine)
