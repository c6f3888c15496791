"""The template filler is strict: every key filled, every value used."""

import pytest

from model_repository import fill as fill_module
from model_repository.fill import FillError, fill, fill_text, main

MODELS = {"ensemble", "preprocessing", "dlm", "postprocessing"}


def test_fill_text():
    assert fill_text("a ${X} b ${X}", {"X": "1"}, "t") == ("a 1 b 1", {"X"})
    with pytest.raises(FillError, match=r"t: \$\{Y\} has no value"):
        fill_text("${Y}", {"X": "1"}, "t")


def test_unused_value_is_an_error(tmp_path):
    (tmp_path / "t" / "m").mkdir(parents=True)
    (tmp_path / "t" / "m" / "config.pbtxt").write_text('name: "${NAME}"\n')
    with pytest.raises(FillError, match=r"values no template uses: \['TYPO'\]"):
        fill(tmp_path / "out", {"NAME": "m", "TYPO": "1"}, tmp_path / "t")
    assert not (tmp_path / "out").exists()
    fill(tmp_path / "out", {"NAME": "m"}, tmp_path / "t")
    assert (tmp_path / "out" / "m" / "config.pbtxt").read_text() == 'name: "m"\n'
    assert (tmp_path / "out" / "m" / "1").is_dir()


def test_the_repository(tiny_checkpoint, tmp_path):
    out = tmp_path / "repo"
    assert main(["--model", str(tiny_checkpoint), "--out", str(out), "--backend", "torch"]) == 0
    assert {p.name for p in out.iterdir()} == MODELS
    for model in MODELS:
        config = (out / model / "config.pbtxt").read_text()
        assert "${" not in config and f'name: "{model}"' in config
        assert (out / model / "1").is_dir()
    assert str(tiny_checkpoint) in (out / "dlm" / "config.pbtxt").read_text()
    assert '"DEVICE" value: { string_value: "cpu" }' in (out / "dlm/config.pbtxt").read_text()


def model_config(path):
    """A filled config.pbtxt parsed as Triton's ModelConfig protobuf (a typo fails here)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize(
    "device,kind,gpus",
    [("cpu", "KIND_CPU", []), ("cuda", "KIND_GPU", []), ("cuda:1", "KIND_GPU", [1])],
)
def test_device_reaches_dlm(tiny_checkpoint, tmp_path, device, kind, gpus):
    """dlm holds the engine: one instance per device (KIND_GPU: one per GPU, or the one named)."""
    from tritonclient.grpc import model_config_pb2

    out = tmp_path / "repo"
    assert main(["--model", str(tiny_checkpoint), "--out", str(out), "--device", device]) == 0
    for model in MODELS:
        model_config(out / model / "config.pbtxt")
    config = model_config(out / "dlm" / "config.pbtxt")
    assert config.parameters["DEVICE"].string_value == device
    assert config.parameters["DTYPE"].string_value == "auto"  # bf16 on a GPU, fp32 on the CPU
    (group,) = config.instance_group
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == kind
    assert list(group.gpus) == gpus


def test_diffusion_cache_reaches_the_orchestrator(tiny_checkpoint, tmp_path):
    from dlm.sampling.diffusion import CACHES

    assert CACHES == fill_module.CACHES  # fill keeps its own copy to stay torch-free
    out = tmp_path / "repo"
    assert main(["--model", str(tiny_checkpoint), "--out", str(out)]) == 0
    assert (
        '"DIFFUSION_CACHE" value: { string_value: "full" }'
        in (out / "dlm/config.pbtxt").read_text()
    )
    assert (
        main(["--model", str(tiny_checkpoint), "--out", str(out), "--diffusion-cache", "none"]) == 0
    )
    assert (
        '"DIFFUSION_CACHE" value: { string_value: "none" }'
        in (out / "dlm/config.pbtxt").read_text()
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--backend", "tensorrt"], "BACKEND='tensorrt': must be auto or torch"),
        (["--max-batch-size", "0"], "MAX_BATCH_SIZE='0': must be a positive integer"),
        (["--dlm-instances", "two"], "DLM_INSTANCES='two'"),
        (["--device", "gpu"], "DEVICE='gpu': must be cpu, cuda or cuda:N"),
        (["--diffusion-cache", "kv"], "DIFFUSION_CACHE='kv': must be one of full, prefix, none"),
        (["--dtype", "int8"], "DTYPE='int8': must be one of auto, fp32, bf16, fp16"),
        (["--max-prompt-tokens", "0"], "MAX_PROMPT_TOKENS='0': must be a positive integer"),
        (["--max-output-tokens", "-5"], "MAX_OUTPUT_TOKENS='-5': must be a positive integer"),
    ],
)
def test_bad_settings(tiny_checkpoint, tmp_path, capsys, args, message):
    assert main(["--model", str(tiny_checkpoint), "--out", str(tmp_path / "r"), *args]) == 2
    assert message in capsys.readouterr().err


def test_model_folder_is_checked(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_each_model_is_served_with_its_own_engine(tmp_path):
    """`make engine MODEL=a`, then `MODEL=b`: two engine folders; fill (as `make serve` runs it)
    points each model at its own, and the engine loaded from it is that model's. A checkpoint
    changed in place is rebuilt, not served from its stale engine."""
    import shutil
    import subprocess
    from pathlib import Path

    from dlm import checkpoint
    from export import engine_dir
    from serving.engine import load_engine
    from tests.conftest import tiny_model, train_tiny_tokenizer

    root = Path(__file__).resolve().parents[2]
    models = {"a": tiny_model(seed=1), "b": tiny_model(seed=2, num_layers=3)}
    for name, model in models.items():
        checkpoint.save(model, tmp_path / name)
        train_tiny_tokenizer(tmp_path / name)

    def make_engine(name: str) -> str:
        r = subprocess.run(
            ["make", "--no-print-directory", "engine", f"MODEL={tmp_path / name}", "BACKEND=torch"],
            cwd=root,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    try:
        for name in models:
            make_engine(name)
        assert engine_dir(tmp_path / "a") != engine_dir(tmp_path / "b")
        for name, model in models.items():
            values = fill_module.values_from_args(
                fill_module.parser().parse_args(["--model", str(tmp_path / name)])
            )
            assert values["ENGINE_DIR"] == str(engine_dir(tmp_path / name))
            engine = load_engine(tmp_path / name, values["ENGINE_DIR"], say=lambda s: None)
            assert engine.config.num_layers == model.cfg.num_layers
        assert "[skip]" in make_engine("a")
        checkpoint.save(tiny_model(seed=3), tmp_path / "a")  # new weights, same folder
        assert "[skip]" not in make_engine("a")
    finally:
        for name in models:
            shutil.rmtree(engine_dir(tmp_path / name), ignore_errors=True)


def test_the_supervisor_reads_each_models_stub_count(tiny_checkpoint, tmp_path):
    """The instance counts the supervisor expects, parsed from the filled config.pbtxt files
    (Triton's ModelConfig protobuf): Python models run `count` stubs per GPU named, the
    ensemble none."""
    from model_repository.supervisor import repository_instances

    base = ["--model", str(tiny_checkpoint), "--backend", "torch"]
    assert main([*base, "--out", str(tmp_path / "a"), "--dlm-instances", "2"]) == 0
    assert repository_instances(tmp_path / "a") == {
        "dlm": 2,
        "ensemble": 0,
        "postprocessing": 1,
        "preprocessing": 1,
    }
    assert main([*base, "--out", str(tmp_path / "b"), "--device", "cuda:1"]) == 0
    assert repository_instances(tmp_path / "b")["dlm"] == 1
