"""Soak test: perf_analyzer streaming at a fixed concurrency for several minutes, with the
server's memory and shared memory watched the whole time.

    python -m benchmarks.soak [--minutes 5] [--concurrency 16] [--out build/soak]

Starts a tritonserver on loopback (model_repository.local_server.LocalServer, the build's engine),
warms it up with a short perf_analyzer run at the same load, then runs perf_analyzer 2.51 (`-i grpc
--streaming`, three time windows filling `--minutes`) on a mix of held-out prompts in all three
modes, while sampling every `--every` seconds: the resident memory of tritonserver and of each
Python-backend stub, and the Python backend's regions in /dev/shm (count and bytes). Verdict
(printed and written to `summary.md`, `soak.json`, `memory.csv`, `memory.png`):
- failed requests: `nv_inference_request_failure` of every model, counted over the soak, and
  perf_analyzer's exit status (it stops at the first failed request);
- memory flat: the mean resident memory of the last minute within `--tolerance` (10%) of the
  first minute's, for the server and for the stubs together;
- /dev/shm: no more regions or bytes at the end than at the start.
Exit status 0 only if all three hold.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks import perf_analyzer as pa
from benchmarks.bench import machine, prompts
from export import engine_dir
from model_repository.processes import REGION, mapped_paths

MODES = ({"mode": "ar"}, {"mode": "diffusion"}, {"mode": "self_spec"})


def process_tree(root: int) -> dict[int, str]:
    """{pid: command name} of `root` and all its descendants."""
    try:
        top = psutil.Process(root)
        procs = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    tree = {}
    for p in procs:
        try:
            tree[p.pid] = p.name()
        except psutil.NoSuchProcess:
            continue
    return tree


def rss_bytes(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def shm_usage(pids) -> tuple[int, int]:
    """(regions, bytes allocated) of the Python backend's shared memory mapped by `pids` (other
    servers on the machine have their own regions)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    paths = {p for p in mapped_paths(procs) if p.startswith("/dev/shm/" + REGION)}
    used = 0
    for p in paths:
        try:
            used += Path(p).stat().st_blocks * 512
        except FileNotFoundError:
            continue
    return len(paths), used


def sample(server_pid: int, t0: float) -> dict:
    tree = process_tree(server_pid)
    stubs = [p for p, n in tree.items() if n.startswith("triton_python")]
    regions, shm_bytes = shm_usage(tree)
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "server_rss_mb": rss_bytes(server_pid) / 2**20,
        "stubs_rss_mb": sum(rss_bytes(p) for p in stubs) / 2**20,
        "stubs": len(stubs),
        "shm_regions": regions,
        "shm_mb": shm_bytes / 2**20,
    }


class Sampler(threading.Thread):
    def __init__(self, server_pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = server_pid, every
        self.rows: list[dict] = []
        self.done = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self.done.is_set():
            self.rows.append(sample(self.pid, self.t0))
            self.done.wait(self.every)


def failures(server) -> dict[str, float]:
    return {
        m: server.metric("nv_inference_request_failure", model=m)
        for m in ("ensemble", "preprocessing", "dlm", "postprocessing")
    }


def soak_command(url: str, data: Path, args, out: Path, minutes: float) -> list[str]:
    """perf_analyzer for `minutes`: three time windows, any of them 'stable'. Removes an old
    profile export at `out` (perf_analyzer refuses to overwrite one)."""
    out.with_suffix(".json").unlink(missing_ok=True)
    window_ms = int(minutes * 60_000 / 3)
    return [
        str(pa.binary() or "perf_analyzer"),
        *("-m", "ensemble", "-i", "grpc", "--streaming", "-u", url),
        *("--input-data", str(data)),
        *("--concurrency-range", f"{args.concurrency}:{args.concurrency}"),
        *("--measurement-mode", "time_windows", "--measurement-interval", str(window_ms)),
        *("--stability-percentage", "999", "--max-trials", "3"),
        *(
            "-f",
            str(out.with_suffix(".csv")),
            "--profile-export-file",
            str(out.with_suffix(".json")),
        ),
    ]


def growth(rows: list[dict], key: str, span: float) -> tuple[float, float, float]:
    """(first-`span`-seconds mean, last-`span`-seconds mean, relative change) of `key`."""
    start, end = rows[0]["seconds"], rows[-1]["seconds"]
    first = [r[key] for r in rows if r["seconds"] <= start + span]
    last = [r[key] for r in rows if r["seconds"] >= end - span]
    a, b = sum(first) / len(first), sum(last) / len(last)
    return a, b, (b - a) / max(a, 1e-9)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    t = [r["seconds"] for r in rows]
    for key, label in [
        ("server_rss_mb", "tritonserver RSS"),
        ("stubs_rss_mb", "Python stubs RSS"),
        ("shm_mb", "/dev/shm (backend)"),
    ]:
        ax.plot(t, [r[key] for r in rows], label=label)
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def verdict(rows, failed, pa_rc, tolerance, span) -> tuple[bool, list[str]]:
    lines, ok = [], pa_rc == 0 and not any(failed.values())
    lines.append(
        f"- failed requests: {failed} (nv_inference_request_failure over the soak); "
        f"perf_analyzer exit status {pa_rc}"
    )
    for key, label in [("server_rss_mb", "tritonserver RSS"), ("stubs_rss_mb", "stubs RSS")]:
        a, b, g = growth(rows, key, span)
        flat = abs(g) <= tolerance
        ok &= flat
        lines.append(
            f"- {label}: {a:.0f} MiB (first {span:.0f} s) -> {b:.0f} MiB (last {span:.0f} s), "
            f"{g:+.1%} ({'flat' if flat else 'NOT flat'} within {tolerance:.0%})"
        )
    first, last = rows[0], rows[-1]
    shm_ok = (
        last["shm_regions"] <= first["shm_regions"] and last["shm_mb"] <= first["shm_mb"] + 1e-6
    )
    ok &= shm_ok
    lines.append(
        f"- /dev/shm: {first['shm_regions']} regions / {first['shm_mb']:.1f} MiB at the start, "
        f"{last['shm_regions']} / {last['shm_mb']:.1f} MiB at the end "
        f"({'no growth' if shm_ok else 'GREW'}); peak "
        f"{max(r['shm_mb'] for r in rows):.1f} MiB"
    )
    return ok, lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="models/default")
    p.add_argument("--engine", default=None, help="export's build folder (default: the model's)")
    p.add_argument("--backend", default="auto", help="auto (the build's engine) | torch")
    p.add_argument("--minutes", type=float, default=5.0, help="length of the measured soak")
    p.add_argument("--warmup-minutes", type=float, default=0.5)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=16, help="held-out prompts per mode")
    p.add_argument("--every", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed memory change")
    p.add_argument("--out", type=Path, default=Path("build/soak"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.engine = str(args.engine or engine_dir(args.model))
    if args.minutes <= 0 or args.concurrency < 1:
        print("error: --minutes must be > 0 and --concurrency >= 1", file=sys.stderr)
        return 2
    why = pa.unavailable()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    from model_repository.local_server import LocalServer

    command_line = shlex.join(
        ["python", "-m", "benchmarks.soak", *(sys.argv[1:] if argv is None else argv)]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    texts = prompts(args.prompts)
    data = args.out / "input.json"
    entries = [e for knobs in MODES for e in pa.input_data(texts, args.max_tokens, knobs)["data"]]
    data.write_text(json.dumps({"data": entries}))
    fill = ["--backend", args.backend, "--engine", args.engine, "--threads", "2"]
    fill += ["--max-passes-per-step", str(args.concurrency)]
    print(f"# {command_line}\n# {machine()}\nstarting tritonserver ({' '.join(fill)}) ...")
    work = Path(tempfile.mkdtemp(prefix="dlm-soak-"))
    with LocalServer(args.model, work, fill) as server:
        url = f"127.0.0.1:{server.grpc}"
        commands = []
        print(f"warm-up: {args.warmup_minutes} min at concurrency {args.concurrency}", flush=True)
        warm = soak_command(url, data, args, args.out / "pa_warmup", args.warmup_minutes)
        commands.append(warm)
        r = subprocess.run(warm, env=pa.environment(), capture_output=True, text=True)
        if r.returncode != 0:
            print(f"error: warm-up failed:\n{(r.stdout + r.stderr)[:2000]}", file=sys.stderr)
            return 1
        before = failures(server)
        sampler = Sampler(server.proc.pid, args.every)
        sampler.start()
        cmd = soak_command(url, data, args, args.out / "pa_soak", args.minutes)
        commands.append(cmd)
        print(f"soak: {args.minutes} min, memory sampled every {args.every} s", flush=True)
        with open(args.out / "pa_soak.log", "w") as log:
            proc = subprocess.Popen(cmd, env=pa.environment(), stdout=log, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                time.sleep(min(30.0, args.every * 6))
                if sampler.rows:
                    s = sampler.rows[-1]
                    print(
                        f"  {s['seconds']:6.0f} s  server {s['server_rss_mb']:.0f} MiB  "
                        f"stubs ({s['stubs']}) {s['stubs_rss_mb']:.0f} MiB  "
                        f"shm {s['shm_regions']} regions {s['shm_mb']:.1f} MiB",
                        flush=True,
                    )
        rc = proc.wait()
        time.sleep(args.every)  # one sample after the load, once the last requests are freed
        sampler.done.set()
        sampler.join()
        sampler.rows.append(sample(server.proc.pid, sampler.t0))
        failed = {m: v - before[m] for m, v in failures(server).items()}
        success = server.metric("nv_inference_request_success", model="ensemble")
    rows = sampler.rows
    with open(args.out / "memory.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, args.out / "memory.png")
    span = min(60.0, args.minutes * 60 / 3)
    ok, lines = verdict(rows, failed, rc, args.tolerance, span)
    figures = pa.summarize(args.out / "pa_soak.json", args.out / "pa_soak.csv") if rc == 0 else {}
    head = [
        f"# Soak: perf_analyzer, concurrency {args.concurrency}, {args.minutes} min",
        "",
        f"- command: `{command_line}`",
        f"- machine: {machine()}",
        f"- perf_analyzer: `{shlex.join(cmd)}`",
        f"- load: {len(entries)} requests cycled (held-out prompts x ar, diffusion, self_spec), "
        f"max_tokens {args.max_tokens}; ensemble successes since start {success:.0f}",
    ]
    if figures:
        head.append(
            f"- measured windows: {figures['requests']} requests, "
            f"{figures['output_tokens_per_s']:.1f} output tokens/s, p50 latency "
            f"{figures['latency_p50_ms']:.0f} ms, p99 {figures['latency_p99_ms']:.0f} ms"
        )
    text = "\n".join(head + lines + ["", f"**{'PASS' if ok else 'FAIL'}**", ""])
    (args.out / "summary.md").write_text(text)
    (args.out / "soak.json").write_text(
        json.dumps(
            {"command": command_line, "ok": ok, "failed": failed, "pa": figures, "memory": rows},
            indent=1,
        )
        + "\n"
    )
    print(text)
    print(f"wrote {args.out}/: summary.md soak.json memory.csv memory.png")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
