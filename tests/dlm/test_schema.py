"""The request schema (dlm.schema) is the one list of inputs: the request's fields, the filled
configs, the client's types and both command lines follow it."""

import dataclasses
import subprocess
import sys

from dlm import schema
from dlm.sampling import GenerationRequest


def test_every_request_field_has_one_input():
    fields = {f.name for f in dataclasses.fields(GenerationRequest)} - {"prompt_ids"}
    by_field = [k.field for k in schema.KNOBS if k.field]
    assert sorted(by_field) == sorted(fields)
    assert schema.REQUIRED == ("text_input", "max_tokens")


def test_filled_configs_declare_the_schema(tiny_checkpoint, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from model_repository.fill import main

    assert (
        main(["--model", str(tiny_checkpoint), "--out", str(tmp_path), "--backend", "torch"]) == 0
    )
    for model in ("ensemble", "preprocessing"):
        text = (tmp_path / model / "config.pbtxt").read_text()
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        declared = {
            i.name: (model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.optional)
            for i in config.input
        }
        assert declared == {
            k.name: (schema.TYPES[k.dtype][0], [-1 if k.many else 1], True) for k in schema.KNOBS
        }
    ensemble = text_format.Parse(
        (tmp_path / "ensemble" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    first = ensemble.ensemble_scheduling.step[0]
    assert dict(first.input_map) == {k.name: k.name for k in schema.KNOBS}


def test_client_types_follow_the_schema():
    from client.api import INPUT_TYPES

    assert INPUT_TYPES["random_seed"][1] == "UINT64" and INPUT_TYPES["factor"][1] == "FP32"
    assert set(INPUT_TYPES) == set(schema.BY_NAME)


def test_both_command_lines_take_every_knob():
    from client.__main__ import parser as client_parser
    from dlm.__main__ import _parser as dlm_parser

    argv = ["--prompt", "x", "--factor", "1.5", "--seed", "7", "--stop", "a", "--stop", "b"]
    for args in (
        client_parser().parse_args(argv),
        dlm_parser().parse_args(["generate", *argv]),
    ):
        knobs = schema.from_arguments(args)
        assert knobs["factor"] == 1.5 and knobs["random_seed"] == 7
        assert knobs["stop_words"] == ["a", "b"] and knobs["mode"] is None
        assert set(knobs) == {k.name for k in schema.KNOBS if k.cli}
    assert schema.flag_of("seed") == "--seed" and schema.flag_of("text_input") == "--prompt"


def test_the_schema_imports_without_torch():
    code = "import sys, dlm.schema, client.api; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
