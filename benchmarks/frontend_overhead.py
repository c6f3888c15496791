"""The front door's cost: the same requests through the OpenAI API and straight to Triton's gRPC.

    python -m benchmarks.frontend_overhead --model models/default      # after `make engine`

One tritonserver (the model's built engine) with the front door beside it, as `make serve` runs
them. At each concurrency N, N client threads send the same greedy streaming requests (each mode
in turn) either with the official `openai` client to /v1/completions or with tritonclient's gRPC
stream to `ensemble`; the two sides alternate, `--repeats` runs each. Printed: mean request
latency, the front door's extra milliseconds per request, and tokens/s both ways with their
ratio. Absolute times count only on the machine named in the output. Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from client.api import GrpcClient
from export import engine_dir
from frontend.process import FrontDoor
from model_repository.local_server import LocalServer, free_ports

PROMPTS = ["def fibonacci(n):\n", "import os\n\n\ndef walk(path):\n", "class Stack:\n    def "]
MODES = ("ar", "diffusion", "self_spec")


def run_side(send, requests: list[tuple[str, str]], concurrency: int) -> tuple[int, float, list]:
    """(tokens, wall seconds, per-request seconds) of `requests` on `concurrency` threads."""
    todo, lock = list(requests), threading.Lock()
    tokens, latencies = [0], []

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                prompt, mode = todo.pop()
            t = time.perf_counter()
            n = send(prompt, mode)
            with lock:
                tokens[0] += n
                latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tokens[0], time.perf_counter() - t0, latencies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="models/default")
    p.add_argument("--engine", help="engine folder (default: the model's, export.engine_dir)")
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--requests", type=int, default=24, help="requests per side and level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="engine threads")
    args = p.parse_args(argv)
    model = Path(args.model).resolve()
    engine = Path(args.engine or engine_dir(model))
    if not (engine / "manifest.json").exists():
        print(f"error: {engine}: no manifest.json (run `make engine`)", file=sys.stderr)
        return 2
    import openai

    work = Path(tempfile.mkdtemp(prefix="dlm-frontend-bench-"))
    fill = ["--engine", str(engine), "--threads", str(args.threads)]
    with LocalServer(model, work, fill) as server:
        front = FrontDoor(f"127.0.0.1:{server.grpc}", free_ports(1)[0], model).start()
        local = threading.local()

        def via_frontend(prompt: str, mode: str) -> int:
            if not hasattr(local, "oai"):
                local.oai = openai.OpenAI(base_url=f"{front.url}/v1", api_key="-", max_retries=0)
            stream = local.oai.completions.create(
                model=front.model_name,
                prompt=prompt,
                max_tokens=args.max_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"mode": mode},
            )
            return [c.usage.completion_tokens for c in stream if c.usage][0]

        def via_grpc(prompt: str, mode: str) -> int:
            if not hasattr(local, "grpc"):
                local.grpc = GrpcClient(f"127.0.0.1:{server.grpc}")
            r = local.grpc.generate(prompt, args.max_tokens, mode=mode, temperature=0, stream=True)
            return r.num_output_tokens

        sides = {"front door": via_frontend, "gRPC": via_grpc}
        for send in sides.values():  # warm up both paths
            run_side(send, [(PROMPTS[0], "ar")], 1)
        print(
            f"# front door vs direct gRPC: {model.name}, engine {engine.name}, "
            f"{platform.node()}, {os.cpu_count()} CPUs, max_tokens {args.max_tokens}, greedy "
            f"streaming, modes {'/'.join(MODES)} in turn, {args.requests} requests per run, "
            f"{args.repeats} runs a side (alternating)"
        )
        print(
            "\n| concurrency | gRPC ms/request | front door ms/request | extra ms/request | "
            "gRPC tok/s | front door tok/s | front door / gRPC |"
        )
        print("|---|---|---|---|---|---|---|")
        requests = [
            (PROMPTS[i % len(PROMPTS)], MODES[i % len(MODES)]) for i in range(args.requests)
        ]
        for n in (int(x) for x in args.concurrency.split(",")):
            got = {name: [0, 0.0, []] for name in sides}
            for r in range(args.repeats):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for name in order:
                    tokens, seconds, lat = run_side(sides[name], requests, n)
                    got[name][0] += tokens
                    got[name][1] += seconds
                    got[name][2] += lat
            (gt, gs, gl), (ft, fs, fl) = got["gRPC"], got["front door"]
            g_ms, f_ms = 1000 * statistics.mean(gl), 1000 * statistics.mean(fl)
            print(
                f"| {n} | {g_ms:.1f} | {f_ms:.1f} | {f_ms - g_ms:+.1f} | {gt / gs:.1f} | "
                f"{ft / fs:.1f} | {(ft / fs) / (gt / gs):.2f} |",
                flush=True,
            )
        front.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
