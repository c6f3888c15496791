"""Tokenizer wrapper, incremental decoding and the `python -m dlm generate` CLI."""

import json
import subprocess
import sys

from dlm.__main__ import main
from dlm.tokenizer import IncrementalDecoder, TextTokenizer


def test_incremental_decoder_concatenates_to_full_text(tiny_checkpoint):
    tok = TextTokenizer(tiny_checkpoint)
    text = "def f(x):\n    return 'héllo wörld ✓ 🚀'  # done\n"
    ids = tok.encode(text)
    dec = IncrementalDecoder(tok.decode)
    pieces = [dec.push([i]) for i in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


def test_chat_template(tiny_checkpoint, tmp_path):
    import shutil

    shutil.copytree(tiny_checkpoint, tmp_path / "m")
    (tmp_path / "m" / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}"
            }
        )
    )
    tok = TextTokenizer(tmp_path / "m")
    assert tok.apply_chat_template("hi") == "<user>hi<assistant>"


def test_cli_json(tiny_checkpoint, capsys):
    for mode in ("ar", "diffusion", "self_spec"):
        assert (
            main(
                [
                    "generate",
                    "--model",
                    str(tiny_checkpoint),
                    "--prompt",
                    "def f(x):",
                    "--mode",
                    mode,
                    "--max-tokens",
                    "12",
                    "--json",
                ]
            )
            == 0
        )
        out = json.loads(capsys.readouterr().out)
        assert set(out) >= {
            "text",
            "token_ids",
            "num_forward_passes",
            "num_output_tokens",
            "seconds",
        }
        assert out["num_output_tokens"] == len(out["token_ids"]) <= 12


def test_cli_bad_flag_one_clear_line(tiny_checkpoint):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dlm",
            "generate",
            "--model",
            str(tiny_checkpoint),
            "--prompt",
            "x",
            "--threshold",
            "1.5",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "--threshold" in r.stderr and "(0, 1]" in r.stderr
