"""Load test of the `ensemble` model with the real perf_analyzer: a concurrency sweep per mode.

    python -m benchmarks.bench [--model models/default] [--concurrency 1 2 4 8]
                               [--modes ar diffusion self_spec] [--out build/bench]
    python -m benchmarks.bench --url 127.0.0.1:8001 ...     # a server already running

Starts a tritonserver for `--model` (model_repository.local_server.LocalServer, the build's engine)
unless `--url` names one, then for every mode and concurrency runs perf_analyzer 2.51 (`-i grpc
--streaming`, `--input-data` made of held-out prompts, count windows of `--requests` requests).
Writes into `--out`:
- `commands.txt`: every perf_analyzer command exactly as run;
- `pa_<mode>_c<n>.csv` / `.json`: perf_analyzer's own CSV (`-f`) and profile export;
- `bench.json`, `bench.csv`: one row per mode x concurrency, output tokens/s from the responses'
  `num_output_tokens`, tokens per forward from `num_forward_passes`, latencies per request;
- `throughput.png`, `latency.png`: against concurrency, one line per mode;
- `summary.md`: the table, the machine and the command line.
Absolute CPU figures count only on the machine named in the summary; ratios are the point.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import perf_analyzer as pa
from dlm.cost import cpu_name
from export import engine_dir

MODES = {
    "ar": {"mode": "ar"},
    "diffusion": {"mode": "diffusion"},
    "diffusion_f1": {"mode": "diffusion", "factor": 1.0},
    "self_spec": {"mode": "self_spec"},
    "self_spec_b4": {"mode": "self_spec", "block_length": 4},
    "self_spec_b8": {"mode": "self_spec", "block_length": 8},
    "self_spec_b16": {"mode": "self_spec", "block_length": 16},
    "auto": {"mode": "auto"},
}
COLUMNS = [
    "mode",
    "concurrency",
    "requests",
    "output_tokens",
    "forward_passes",
    "seconds",
    "output_tokens_per_s",
    "tokens_per_forward",
    "requests_per_s",
    "latency_avg_ms",
    "latency_p50_ms",
    "latency_p99_ms",
    "first_response_avg_ms",
]


def prompts(n: int) -> list[str]:
    """`n` held-out prompts (first lines of functions in held-out stdlib files)."""
    from dlm.train.prompts import held_out_prompts

    return [p.prompt for p in held_out_prompts(n)]


def machine() -> str:
    cpu = cpu_name()
    gpu = ""
    if shutil.which("nvidia-smi"):
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        gpu = "".join(f", {n.strip()}" for n in names if n.strip())
    load = os.getloadavg()[0]
    return f"{platform.node()}, {cpu}, {os.cpu_count()} CPUs{gpu}, load {load:.2f}"


def sweep(url: str, args, out: Path, say=print) -> list[dict]:
    texts = prompts(args.prompts)
    rows = []
    points = [(m, n) for m in args.modes for n in args.concurrency]
    with open(out / "commands.txt", "w") as log:
        for i, (mode, n) in enumerate(points, 1):
            data = out / f"input_{mode}.json"
            data.write_text(json.dumps(pa.input_data(texts, args.max_tokens, MODES[mode])))
            stem = out / f"pa_{mode}_c{n}"
            t0 = time.perf_counter()
            # at least 2 requests per slot in a window; once more with windows twice as long
            # if perf_analyzer finds the point unstable
            for count in (max(args.requests, 2 * n), max(args.requests, 2 * n) * 2):
                cmd = pa.command(
                    url, data, n, stem.with_suffix(".csv"), stem.with_suffix(".json"), count
                )
                log.write(shlex.join(cmd) + "\n")
                log.flush()
                r = subprocess.run(
                    cmd, env=pa.environment(), capture_output=True, text=True, timeout=args.timeout
                )
                (stem.with_suffix(".log")).write_text(r.stdout + r.stderr)
                if r.returncode == 0 or "stable measurement" not in r.stdout + r.stderr:
                    break
                say(f"  {mode} c={n}: unstable, again with windows of {2 * count}", flush=True)
            if r.returncode != 0:
                raise RuntimeError(
                    f"perf_analyzer failed (rc {r.returncode}) for {mode} c={n}:\n"
                    f"{(r.stdout + r.stderr)[-2000:]}"
                )
            row = {"mode": mode, "concurrency": n}
            row.update(pa.summarize(stem.with_suffix(".json"), stem.with_suffix(".csv")))
            rows.append(row)
            say(
                f"[{i}/{len(points)}] {mode:9s} c={n:<3d} {row['output_tokens_per_s']:7.1f} tok/s  "
                f"TPF {row['tokens_per_forward']:.2f}  p50 {row['latency_p50_ms']:7.0f} ms  "
                f"({row['requests']} requests, {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return rows


def plot(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, label, name in [
        ("output_tokens_per_s", "output tokens/s", "throughput.png"),
        ("latency_p50_ms", "p50 request latency (ms)", "latency.png"),
    ]:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for mode in dict.fromkeys(r["mode"] for r in rows):
            pts = [(r["concurrency"], r[key]) for r in rows if r["mode"] == mode]
            ax.plot(*zip(*pts, strict=True), marker="o", label=mode)
        ax.set_xscale("log", base=2)
        levels = sorted({r["concurrency"] for r in rows})
        ax.set_xticks(levels, [str(n) for n in levels])
        ax.minorticks_off()
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        files.append(out / name)
    return files


def summary(rows: list[dict], command_line: str, setup: str) -> str:
    lines = [
        "# perf_analyzer sweep of `ensemble`",
        "",
        f"- command: `{command_line}`",
        f"- machine: {machine()}",
        f"- {setup}",
        "",
        "| mode | concurrency | output tokens/s | tokens/forward | requests/s | "
        "p50 latency ms | p99 latency ms | first response ms | requests |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['output_tokens_per_s']:.1f} | "
            f"{r['tokens_per_forward']:.2f} | {r['requests_per_s']:.2f} | "
            f"{r['latency_p50_ms']:.0f} | {r['latency_p99_ms']:.0f} | "
            f"{r['first_response_avg_ms']:.0f} | {r['requests']} |"
        )
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out: Path, command_line: str, setup: str) -> None:
    (out / "bench.json").write_text(
        json.dumps({"command": command_line, "machine": machine(), "rows": rows}, indent=1) + "\n"
    )
    with open(out / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    plot(rows, out)
    (out / "summary.md").write_text(summary(rows, command_line, setup))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="models/default")
    p.add_argument("--url", help="gRPC host:port of a running server (else one is started)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--out", type=Path, default=Path("build/bench"))
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=16, help="held-out prompts in the input data")
    p.add_argument(
        "--requests",
        type=int,
        default=8,
        help="requests per measurement window (>= 2 x concurrency)",
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds per perf_analyzer run")
    p.add_argument("--backend", default="auto", help="auto (the build's engine) | torch")
    p.add_argument("--engine", default=None, help="export's build folder (default: the model's)")
    p.add_argument("--device", default="cpu", help="dlm's PyTorch engine: cpu | cuda")
    p.add_argument("--threads", type=int, default=2, help="engine threads in the server")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.engine = str(args.engine or engine_dir(args.model))
    command_line = shlex.join(
        ["python", "-m", "benchmarks.bench", *(sys.argv[1:] if argv is None else argv)]
    )
    why = pa.unavailable()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# {command_line}\n# {machine()}", flush=True)
    if args.url:
        rows = sweep(args.url, args, args.out)
        setup = f"server at {args.url}, max_tokens {args.max_tokens}, greedy"
    else:
        from client.api import GrpcClient
        from model_repository.local_server import LocalServer

        fill = ["--backend", args.backend, "--engine", args.engine, "--threads", str(args.threads)]
        fill += ["--device", args.device]
        fill += ["--max-passes-per-step", str(max(args.concurrency))]
        work = Path(tempfile.mkdtemp(prefix="dlm-bench-"))
        print(f"starting tritonserver for {args.model} ({' '.join(fill)}) ...", flush=True)
        with LocalServer(args.model, work, fill) as server:
            url = f"127.0.0.1:{server.grpc}"
            c = GrpcClient(url, timeout=120)
            for mode in args.modes:  # warm up every mode's path
                c.generate("def f(x):\n", max_tokens=8, **MODES[mode])
            c.close()
            rows = sweep(url, args, args.out)
        setup = (
            f"LocalServer: {args.model}, {' '.join(fill)}, max_tokens {args.max_tokens}, "
            f"{args.prompts} held-out prompts, windows of {args.requests} requests, greedy"
        )
    write(rows, args.out, command_line, setup)
    print(summary(rows, command_line, setup))
    print(f"wrote {args.out}/: summary.md bench.json bench.csv throughput.png latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
