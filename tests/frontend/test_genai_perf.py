"""genai-perf (0.0.16, its own venv: `make genai-perf-deps`) against the front door's OpenAI
endpoints, through `make bench-genai-perf` as users run it: every request answered, tokens and
latencies measured."""

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 6


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_genai_perf_against_the_front_door(front, tmp_path, endpoint):
    out = tmp_path / "genai-perf"
    run = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "bench-genai-perf",
            f"GENAI_ENDPOINT={endpoint}",
            f"GENAI_URL=127.0.0.1:{front.port}",
            f"GENAI_REQUESTS={REQUESTS}",
            f"GENAI_OUT={out}",
            "GENAI_MODE=self_spec",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (export,) = out.rglob("profile_export_genai_perf.json")
    stats = json.loads(export.read_text())
    print(
        endpoint, {k: stats[k].get("avg") for k in ("request_latency", "output_token_throughput")}
    )
    assert stats["request_count"]["avg"] >= REQUESTS
    assert stats["output_sequence_length"]["avg"] > 0
    assert stats["time_to_first_token"]["avg"] > 0
