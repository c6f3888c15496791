"""Modes side by side in process under a closed loop: `--concurrency` requests in flight in one
scheduler, each replaced by the next as it finishes, as perf_analyzer keeps a server loaded, but
without the server (no IPC, no other processes on the cores), so what it shows is the policies'
choices and the engine's steps alone.

    python -m benchmarks.closed_loop [--concurrency 1 16] [--modes ar auto self_spec_b4]

Every round runs each mode once, in turn, and `--rounds` rounds alternate them so that a
machine's drift (a shared VM's neighbours) falls on every mode alike. The engine's cost model
(and what `auto` learns on top of it) lives as long as the process. Prints output tokens/s per
mode and round and each mode's ratio to the first, per round. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.bench import MODES
from dlm import cost
from dlm.sampling.loop import Scheduler
from dlm.sampling.request import GenerationRequest
from dlm.tokenizer import TextTokenizer
from dlm.train.prompts import held_out_prompts
from serving.engine import load_engine


def run(engine, prompts: list[list[int]], knobs: dict, concurrency: int, total: int, tokens: int):
    """(output tokens/s, tokens per forward) of `total` requests, `concurrency` in flight."""
    sched = Scheduler(engine, max_batch=max(concurrency, 1))
    issued = done_tokens = passes = 0

    def add() -> None:
        nonlocal issued
        prompt = prompts[issued % len(prompts)]
        sched.add(GenerationRequest(list(prompt), max_tokens=tokens, **knobs))
        issued += 1

    for _ in range(min(concurrency, total)):
        add()
    t0 = time.perf_counter()
    while len(sched):
        for seq in sched.step():
            done_tokens += len(seq.output)
            passes += seq.nfe
            if issued < total:
                add()
    return done_tokens / (time.perf_counter() - t0), done_tokens / max(passes, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/default")
    p.add_argument("--engine", default=None, help="export's build folder (default: the model's)")
    p.add_argument("--backend", default="auto", help="auto (the build's engine) | torch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--modes", nargs="+", default=["ar", "auto", "self_spec_b4"], choices=MODES)
    p.add_argument("--requests", type=int, default=4, help="requests per slot of concurrency")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    engine = load_engine(args.model, args.engine, args.backend, args.threads, say=print)
    cost.for_engine(engine)  # measured (or loaded) before the first timed round
    tok = TextTokenizer(args.model)
    prompts = [tok.encode(x.prompt) for x in held_out_prompts(args.prompts)]
    print(f"# {cost.machine(engine)}; {args.max_tokens} tokens, greedy")
    print("| concurrency | round | " + " | ".join(args.modes) + " | tokens/forward |")
    print("|---" * (len(args.modes) + 3) + "|")
    for c in args.concurrency:
        total = max(1, args.requests * c)
        for r in range(1, args.rounds + 1):
            got = {m: run(engine, prompts, MODES[m], c, total, args.max_tokens) for m in args.modes}
            base = got[args.modes[0]][0]
            cells = [f"{got[m][0]:.0f} ({got[m][0] / base:.2f}x)" for m in args.modes]
            tpf = " / ".join(f"{got[m][1]:.2f}" for m in args.modes)
            print(f"| {c} | {r} | " + " | ".join(cells) + f" | {tpf} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
