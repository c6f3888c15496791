"""benchmarks.bench: perf_analyzer input data and result parsing (fast), and the whole sweep with
the real perf_analyzer against a real tritonserver on the tiny random model (slow)."""

import csv
import json

import pytest

from benchmarks import bench
from benchmarks import perf_analyzer as pa


def test_input_data_has_the_contract_tensors():
    d = pa.input_data(["def f(x):\n", "class A:\n"], 16, {"mode": "diffusion", "threshold": 0.9})
    assert len(d["data"]) == 2
    e = d["data"][0]
    assert e["text_input"] == {"content": ["def f(x):\n"], "shape": [1]}
    assert e["max_tokens"]["content"] == [16] and e["stream"]["content"] == [True]
    assert e["mode"]["content"] == ["diffusion"] and e["threshold"]["content"] == [0.9]
    f = pa.input_data(["x"], 4, {"mode": "diffusion", "factor": 1})["data"][0]["factor"]
    assert f == {"content": [1.0], "shape": [1]}
    with pytest.raises(ValueError, match="knob 'temp'"):
        pa.input_data(["x"], 4, {"temp": 1})


def test_summarize_counts_final_tokens_per_request(tmp_path):
    ms = 1_000_000
    reqs = [
        {
            "timestamp": t0,
            "response_timestamps": [t0 + 10 * ms, t0 + 100 * ms],
            "response_outputs": [
                {"num_output_tokens": 4, "num_forward_passes": 2},
                {"num_output_tokens": 8, "num_forward_passes": 4},
            ],
        }
        for t0 in (0, 100 * ms)
    ]
    (tmp_path / "e.json").write_text(json.dumps({"experiments": [{"requests": reqs}]}))
    (tmp_path / "e.csv").write_text("Concurrency,Inferences/Second\n1,10.0\n")
    s = pa.summarize(tmp_path / "e.json", tmp_path / "e.csv")
    assert s["requests"] == 2 and s["output_tokens"] == 16 and s["forward_passes"] == 8
    assert s["seconds"] == pytest.approx(0.2)
    assert s["output_tokens_per_s"] == pytest.approx(80.0)
    assert s["tokens_per_forward"] == 2.0
    assert s["latency_p50_ms"] == pytest.approx(100.0)
    assert s["first_response_avg_ms"] == pytest.approx(10.0)


@pytest.mark.slow
def test_sweep_end_to_end_on_tiny_model(tiny_checkpoint, tmp_path, monkeypatch):
    why = pa.unavailable()
    if why:
        pytest.skip(why)
    # Short prompts: the tiny model's 300-token BPE would make held-out stdlib prompts long.
    monkeypatch.setattr(bench, "prompts", lambda n: ["def f(x):\n", "class A:\n    "][:n])
    modes, levels = ["ar", "diffusion", "self_spec"], [1, 2]
    out = tmp_path / "bench"
    args = ["--model", str(tiny_checkpoint), "--backend", "torch", "--threads", "1"]
    args += ["--concurrency", *map(str, levels), "--modes", *modes, "--out", str(out)]
    args += ["--max-tokens", "8", "--prompts", "2", "--requests", "2", "--timeout", "60"]
    assert bench.main(args) == 0
    for name in ["summary.md", "bench.json", "bench.csv", "commands.txt"]:
        assert (out / name).stat().st_size > 0, name
    for name in ["throughput.png", "latency.png"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [(r["mode"], r["concurrency"]) for r in rows] == [(m, n) for m in modes for n in levels]
    for r in rows:
        assert r["requests"] >= 2 and r["output_tokens"] > 0 and r["output_tokens_per_s"] > 0
        assert 0 < r["tokens_per_forward"] <= 8 and r["latency_p50_ms"] > 0
        assert r["output_tokens"] <= 8 * r["requests"]
    assert all(r["tokens_per_forward"] <= 1.0 for r in rows if r["mode"] == "ar")
    with open(out / "bench.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    commands = (out / "commands.txt").read_text().splitlines()
    assert len(commands) >= len(rows) and all("--streaming" in c for c in commands)
    for m in modes:
        for n in levels:
            assert (out / f"pa_{m}_c{n}.csv").exists()
