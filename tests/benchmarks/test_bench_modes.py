"""benchmarks.modes in process on the tiny random model: rows, the reference samplers, files."""

import json

from benchmarks import modes


class _Prompt:
    def __init__(self, prompt):
        self.prompt = prompt


def test_modes_in_process_with_reference(tiny_checkpoint, tmp_path, monkeypatch):
    # Short prompts: the tiny model's 300-token BPE would make held-out stdlib prompts long.
    monkeypatch.setattr(modes, "held_out_prompts", lambda n: [_Prompt("def f(x):\n")] * n)
    out = tmp_path / "modes"
    args = ["--model", str(tiny_checkpoint), "--backend", "torch", "--threads", "1"]
    args += [
        "--no-triton",
        "--reference",
        "--prompts",
        "2",
        "--max-tokens",
        "32",
        "--out",
        str(out),
    ]
    args += ["--settings", "ar", "diffusion steps=8", "self_spec"]
    assert modes.main(args) == 0
    rows = json.loads((out / "modes.json").read_text())["rows"]
    assert [(r["side"], r["setting"]) for r in rows] == [
        ("in process", "ar"),
        ("in process", "diffusion steps=8"),
        ("in process", "self_spec"),
        ("reference", "diffusion steps=8 LLaDA, no cache"),
        ("reference", "diffusion steps=8 Fast-dLLM, prefix cache"),
    ]
    for r in rows:
        assert r["tokens"] > 0 and r["forward_passes"] > 0 and r["tokens_per_s"] > 0
        assert 0 <= r["valid_python"] <= 1
    assert rows[0]["tokens_per_forward"] <= 1.0
    for ref in rows[-2:]:
        assert ref["same_text"] == 1.0, "a reference sampler must give our sampler's output"
        assert ref["forward_passes"] == rows[1]["forward_passes"]
        assert ref["speed_up_of_ours"] > 0
    assert (out / "quality_vs_speed.png").read_bytes()[:4] == b"\x89PNG"
    assert "| reference |" in (out / "modes.md").read_text()


def test_modes_with_file_context(tiny_checkpoint, tmp_path):
    """Held-out stdlib prompts with their files' leading statements before them."""
    out = tmp_path / "modes"
    args = ["--model", str(tiny_checkpoint), "--backend", "torch", "--threads", "1"]
    args += ["--no-triton", "--reference", "--prompts", "2", "--max-tokens", "16"]
    args += ["--context-chars", "150", "--settings", "diffusion steps=8", "--out", str(out)]
    assert modes.main(args) == 0
    rows = json.loads((out / "modes.json").read_text())["rows"]
    assert [r["side"] for r in rows] == ["in process", "reference", "reference"]
    assert all(r["same_text"] == 1.0 for r in rows[1:])
    assert "up to 150 characters of file context" in (out / "modes.md").read_text()
