"""Serving overhead and batching: the same sampler in process and through Triton, side by side.

    python -m benchmarks.serving_overhead --model models/default             # ONNX Runtime
    python -m benchmarks.serving_overhead --model models/default --backend torch
    python -m benchmarks.serving_overhead --random default     # random weights, same shapes

1. concurrency 1, per mode: tokens/s of `dlm.sampling.generate` in this process against the
   same requests through the real tritonserver (gRPC, non-streaming), one at a time, back to
   back, `--repeats` runs a side alternating which goes first (ABBA), so that a shared VM whose
   speed drifts weighs on both sides alike; the median of the run pairs' ratios beside the
   totals' (one slow moment moves it little); clients connect before the clock starts.
   Alternating request by request instead leaves the server idle before each of its requests:
   on the 2-core VM that cost about 18 ms a request (three stub processes and the engine's
   threads woken), `results/serving_overhead_cpu/run5_request_pairs_idle_server.md`;
2. throughput at concurrency 1/4/8/16: N requests kept in flight (in process: one Scheduler
   holding N requests, refilled as they finish; through Triton: N client threads).
Both sides use the same engine (`--backend auto`: the build's, ONNX Runtime on CPU after `make
engine`; `torch`: PyTorch) with the same thread count on the same cores, and greedy decoding of
the same prompts; the server's `dlm` model runs the same Scheduler beside the same engine, one
engine step per iteration for every request in flight. Absolute times count only on the machine
named in the output; the ratios are the point. Not a test: nothing is asserted.
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

import torch

from benchmarks.gpu_harness import random_checkpoint
from dlm.engines import served_defaults
from dlm.pipeline import Pipeline
from dlm.sampling import Limits, Scheduler
from dlm.tokenizer import TextTokenizer
from export import engine_dir
from serving.engine import load_engine, served_build
from serving.metrics import FLUSH_S

PROMPTS = [
    "def fibonacci(n):\n",
    "import os\n\n\ndef walk(path):\n",
    "class Stack:\n    def ",
    "for i in range(10):\n    ",
    "def read_lines(path):\n    with open(path) as f:\n",
]
MODES = [("ar", {}), ("diffusion", {}), ("self_spec", {})]


def in_process(pipe: Pipeline, requests, concurrency: int) -> tuple[int, float]:
    """(tokens, seconds) for all requests with `concurrency` kept in flight."""
    sched = Scheduler(pipe.engine, pipe.limits, max_batch=concurrency)
    queue, tokens = list(requests), 0
    t0 = time.perf_counter()
    while queue or len(sched):
        while queue and len(sched) < concurrency:
            sched.add(queue.pop(0))
        tokens += sum(len(s.output) for s in sched.step())
    return tokens, time.perf_counter() - t0


def side_by_side(pipe, url, prompts, knobs: dict, concurrency: int, repeats: int):
    """[(in-process (tokens, seconds), Triton (tokens, seconds))] for the same requests,
    `repeats` pairs, alternating which side goes first (ABBA...), so that a machine whose speed
    drifts (a shared VM) weighs on both sides alike."""
    runs = {
        "process": lambda: in_process(
            pipe, [pipe.request(p, **knobs) for p in prompts], concurrency
        ),
        "triton": lambda: through_triton(url, [(p, knobs) for p in prompts], concurrency),
    }
    pairs = []
    for r in range(repeats):
        got = {side: runs[side]() for side in (("process", "triton"), ("triton", "process"))[r % 2]}
        pairs.append((got["process"], got["triton"]))
    return pairs


def summary(pairs) -> tuple[int, int, float, float, float]:
    """(tokens in process, through Triton, tok/s in process, through Triton, the median of the
    pairs' Triton / in-process ratios: one slow moment of a shared VM moves it little)."""
    (tok_a, sec_a), (tok_b, sec_b) = (
        [sum(x) for x in zip(*side, strict=True)] for side in zip(*pairs, strict=True)
    )
    # both sides of a pair give the same greedy tokens (a request may give none: eos first), so
    # a pair's ratio of speeds is its ratio of times
    ratios = [sa / sb for (_, sa), (_, sb) in pairs]
    return tok_a, tok_b, tok_a / sec_a, tok_b / sec_b, statistics.median(ratios)


def through_triton(url: str, jobs: list[tuple[str, dict]], concurrency: int) -> tuple[int, float]:
    """(tokens, seconds) for the jobs through `concurrency` client threads, timed from when every
    client is connected (a connection's setup is not a request's cost) to the last response."""
    from client.api import GrpcClient

    lock, queue, totals, errors = threading.Lock(), list(jobs), [0], []
    ready = threading.Barrier(concurrency + 1)

    def worker():
        c = GrpcClient(url, timeout=600)
        ready.wait()
        while True:
            with lock:
                if not queue:
                    break
                prompt, knobs = queue.pop(0)
            try:
                r = c.generate(prompt, stream=False, **knobs)
            except Exception as e:  # reported after the run
                errors.append(e)
                continue
            with lock:
                totals[0] += r.num_output_tokens
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return totals[0], time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serving_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="models/default")
    p.add_argument("--random", metavar="PRESET", help="random weights of a preset instead")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--backend", default="auto", help="auto (the build's engine) | torch")
    p.add_argument("--engine", default=None, help="export's build folder (default: the model's)")
    p.add_argument("--threads", type=int, default=2, help="engine threads, both sides")
    p.add_argument("--concurrency", default="1,4,8,16")
    p.add_argument("--requests", type=int, default=16, help="requests per throughput point")
    p.add_argument("--throughput-mode", default="self_spec")
    p.add_argument(
        "--repeats", type=int, default=6, help="runs of each side, alternating which goes first"
    )
    args = p.parse_args(argv)
    args.engine = str(args.engine or engine_dir(args.model))

    from model_repository.local_server import LocalServer

    torch.set_num_threads(args.threads)
    model = Path(args.model)
    if args.random:
        model = random_checkpoint(args.random, Path("build") / f"bench_random_{args.random}")
    if not (model / "config.json").exists():
        print(
            f"error: --model {model}: no checkpoint (train one, or use --random default)",
            file=sys.stderr,
        )
        return 2
    engine = load_engine(model, args.engine, args.backend, args.threads, say=print)
    defaults = served_defaults(model, served_build(model, args.engine, args.backend))
    pipe = Pipeline(engine, TextTokenizer(model), defaults, Limits())
    levels = [int(x) for x in args.concurrency.split(",")]
    print(
        f"# serving overhead: {model} ({'random weights' if args.random else 'trained'}), "
        f"{type(engine).__name__}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"{args.threads} engine threads, "
        f"max_tokens {args.max_tokens}, greedy"
    )
    work = Path(tempfile.mkdtemp(prefix="dlm-bench-"))
    with LocalServer(
        model,
        work,
        [
            "--backend",
            args.backend,
            "--engine",
            args.engine,
            "--threads",
            str(args.threads),
            "--max-passes-per-step",
            str(max(levels)),
        ],
    ) as server:
        url = f"127.0.0.1:{server.grpc}"
        through_triton(url, [(PROMPTS[0], {"max_tokens": 8, "mode": "ar"})], 1)  # warm up
        in_process(pipe, [pipe.request(PROMPTS[0], max_tokens=8, mode="ar")], 1)
        print(
            f"\n## concurrency 1, per mode (the prompts one after another, {args.repeats} runs "
            "a side, alternating which goes first)"
        )
        print(
            "| mode | tokens | in process tok/s | Triton tok/s | Triton / in process | "
            "median of the run pairs |"
        )
        print("|---|---|---|---|---|---|")
        for mode, knobs in MODES:
            knobs = {"max_tokens": args.max_tokens, "mode": mode, **knobs}
            pairs = side_by_side(pipe, url, PROMPTS, knobs, 1, args.repeats)
            tok_a, tok_b, rate_a, rate_b, median = summary(pairs)
            print(
                f"| {mode} | {tok_a} / {tok_b} | {rate_a:.1f} | {rate_b:.1f} | "
                f"{rate_b / rate_a:.2f} | {median:.2f} |",
                flush=True,
            )
        mode = args.throughput_mode
        print(f"\n## throughput vs concurrency ({mode}, {args.requests} requests per point)")
        print(
            "| concurrency | in process tok/s | Triton tok/s | Triton / in process | "
            "median of the run pairs | Triton passes per engine step |"
        )
        print("|---|---|---|---|---|---|")
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
        knobs = {"max_tokens": args.max_tokens, "mode": mode}
        for n in levels:
            steps, passes = (server.metric(f"dlm_engine_{k}") for k in ("steps", "passes"))
            pairs = side_by_side(pipe, url, prompts, knobs, n, args.repeats)
            _, _, rate_a, rate_b, median = summary(pairs)
            time.sleep(2 * FLUSH_S)  # the server reports its counts at most every FLUSH_S
            steps = server.metric("dlm_engine_steps") - steps
            passes = server.metric("dlm_engine_passes") - passes
            print(
                f"| {n} | {rate_a:.1f} | {rate_b:.1f} | {rate_b / rate_a:.2f} | {median:.2f} | "
                f"{passes / max(1, steps):.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
