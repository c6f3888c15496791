"""The real perf_analyzer 2.51 (shipped in the tritonclient wheel): where it is, how to call it
against `ensemble`, and what its outputs say in tokens.

perf_analyzer needs `libb64.so.0d` (Debian: `apt-get install libb64-0d`) and `libcudart.so.12`
(`pip install nvidia-cuda-runtime-cu12`; it is put on LD_LIBRARY_PATH here). The ensemble is
decoupled, so it is driven with `-i grpc --streaming`; inputs come from `--input-data` JSON made
of real prompts (random data goes past the vocabulary).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dlm import schema

APT_HINT = "apt-get install -y libb64-0d"
PIP_HINT = "pip install nvidia-cuda-runtime-cu12"


def binary() -> Path | None:
    """$PERF_ANALYZER if set (e.g. an unpacked `scripts/pack_triton.py` archive's), else the
    perf_analyzer next to this interpreter (the wheel installs it into the venv's bin), else
    the one on PATH."""
    if os.environ.get("PERF_ANALYZER"):
        return Path(os.environ["PERF_ANALYZER"])
    for candidate in (Path(sys.executable).parent / "perf_analyzer", shutil.which("perf_analyzer")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def environment() -> dict[str, str]:
    """os.environ with the pip-installed CUDA runtime's lib dir first on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime as cr  # namespace package from nvidia-cuda-runtime-cu12

        lib = str(Path(next(iter(cr.__path__))) / "lib")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (lib, env.get("LD_LIBRARY_PATH", "")) if p
        )
    except ImportError:
        pass
    return env


def unavailable() -> str | None:
    """None if perf_analyzer runs here, else why not (with the command that fixes it)."""
    exe = binary()
    if exe is None:
        return (
            "perf_analyzer not found (it ships in the tritonclient wheel: pip install tritonclient)"
        )
    try:
        r = subprocess.run(
            [str(exe), "--version"], env=environment(), capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"perf_analyzer did not run: {e}"
    if r.returncode == 0 and "Perf Analyzer Version" in r.stdout + r.stderr:
        return None
    err = (r.stderr or r.stdout).strip()
    if "libb64" in err:
        return f"perf_analyzer needs libb64.so.0d: {APT_HINT}"
    if "libcudart" in err:
        return f"perf_analyzer needs libcudart.so.12: {PIP_HINT}"
    return f"perf_analyzer --version failed (rc {r.returncode}): {err[-300:]}"


def input_data(prompts: list[str], max_tokens: int, knobs: dict) -> dict:
    """perf_analyzer `--input-data` JSON: one entry per prompt, the contract's tensors (shapes
    without the batch dimension). `knobs`: any one-value input of the request schema."""
    entries = []
    for p in prompts:
        e = {
            "text_input": {"content": [p], "shape": [1]},
            "max_tokens": {"content": [max_tokens], "shape": [1]},
            "stream": {"content": [True], "shape": [1]},
        }
        for name, value in knobs.items():
            k = schema.BY_NAME.get(name)
            if k is None or k.many or name in e:
                allowed = [k.name for k in schema.KNOBS if not k.many and k.name not in e]
                raise ValueError(f"knob {name!r} unknown; allowed: {', '.join(allowed)}")
            e[name] = {"content": [k.python_type(value)], "shape": [1]}
        entries.append(e)
    return {"data": entries}


def command(
    url: str,
    data: Path,
    concurrency: int,
    csv_out: Path,
    export_out: Path,
    requests: int,
    trials: int = 5,
    model: str = "ensemble",
) -> list[str]:
    """One concurrency point: count windows of `requests` requests, throughput stable within 100%
    over 3 windows in `trials` windows at most (loose on purpose: a sweep must take minutes on 2
    shared cores, and perf_analyzer reports nothing for a point it calls unstable)."""
    return [
        str(binary() or "perf_analyzer"),
        *("-m", model, "-i", "grpc", "--streaming", "-u", url),
        *("--input-data", str(data)),
        *("--concurrency-range", f"{concurrency}:{concurrency}"),
        *("--measurement-mode", "count_windows"),
        *("--measurement-request-count", str(requests)),
        *("--stability-percentage", "100", "--max-trials", str(trials)),
        *("-f", str(csv_out), "--profile-export-file", str(export_out)),
    ]


def _int(value) -> int:
    """An INT32 output as the profile export writes it (a number or a decimal string)."""
    if isinstance(value, list):
        value = value[-1] if value else 0
    return int(float(value))


def summarize(export_file: Path, csv_file: Path) -> dict:
    """Figures of one point from perf_analyzer's profile export (per request: send time, response
    times, response outputs) and its CSV. Tokens are the requests' final `num_output_tokens`
    (a running total in every response); tokens/s = all tokens / (last response - first send)."""
    exp = json.loads(export_file.read_text())["experiments"][-1]
    tokens, passes, latency, first = [], [], [], []
    start, end = None, None
    for r in exp["requests"]:
        stamps = r.get("response_timestamps") or []
        if not stamps:
            continue
        outs = r.get("response_outputs") or []
        tokens.append(
            max(
                (
                    _int(o["num_output_tokens"])
                    for o in outs
                    if o.get("num_output_tokens") is not None
                ),
                default=0,
            )
        )
        passes.append(
            max(
                (
                    _int(o["num_forward_passes"])
                    for o in outs
                    if o.get("num_forward_passes") is not None
                ),
                default=0,
            )
        )
        latency.append((stamps[-1] - r["timestamp"]) / 1e6)
        first.append((stamps[0] - r["timestamp"]) / 1e6)
        start = r["timestamp"] if start is None else min(start, r["timestamp"])
        end = stamps[-1] if end is None else max(end, stamps[-1])
    if not tokens:
        raise RuntimeError(f"{export_file}: no completed requests")
    seconds = (end - start) / 1e9
    with open(csv_file) as f:
        pa = next(csv.DictReader(f))
    latency.sort()
    return {
        "requests": len(tokens),
        "output_tokens": sum(tokens),
        "forward_passes": sum(passes),
        "seconds": seconds,
        "output_tokens_per_s": sum(tokens) / seconds,
        "tokens_per_forward": sum(tokens) / max(sum(passes), 1),
        "requests_per_s": float(pa["Inferences/Second"]),
        "latency_avg_ms": sum(latency) / len(latency),
        "latency_p50_ms": latency[len(latency) // 2],
        "latency_p99_ms": latency[min(len(latency) - 1, int(0.99 * len(latency)))],
        "first_response_avg_ms": sum(first) / len(first),
    }
