"""A step that carries a new request's prefill beside one-token rows: one engine call, every row
padded to the prompt, against the two calls the cost model picks (`CostModel.split`).

    python -m benchmarks.split_step --model models/default      # the build's engine (make engine)

`rows - 1` sequences hold CONTEXT cached positions and each asks one token (AR); one more asks
its prompt of `--prompt` tokens from an empty cache. Each side is timed `--repeats` times,
alternating, and the fastest counts (the caches are cut back after every pass, so each repeat
runs the same shapes). Absolute times count only on the machine printed; the ratio is the point.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

from dlm import cost
from dlm.engine import PassRequest
from dlm.sampling.loop import Scheduler
from serving.engine import load_engine

CONTEXT = cost.CONTEXT


def passes(rows: int, prompt: int) -> list[PassRequest]:
    ar = [PassRequest(s, CONTEXT, [5], 0, True, 1) for s in range(rows - 1)]
    return ar + [PassRequest(rows - 1, 0, [7] * prompt, 0, True, 1)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/default")
    p.add_argument("--engine", default=None, help="export's build folder (default: the model's)")
    p.add_argument("--backend", default="auto", help="auto (the build's engine) | torch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, nargs="+", default=[8, 16])
    p.add_argument("--prompt", type=int, nargs="+", default=[16, 40, 96])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    engine = load_engine(args.model, args.engine, args.backend, args.threads, say=print)
    model = cost.for_engine(engine)
    print(f"# {cost.machine(engine)}")
    print("| rows | prompt | one call ms | split | split ms | one call / split |")
    print("|---|---|---|---|---|---|")
    for rows in args.rows:
        prefix = [PassRequest(s, 0, [3] * CONTEXT, 0, True, 1) for s in range(rows - 1)]
        for prompt in args.prompt:
            step = passes(rows, prompt)
            single = Scheduler(engine)
            single.cost = None  # one call, whatever the cost model says
            split = Scheduler(engine)
            split.cost = model
            best = {"one": float("inf"), "split": float("inf")}
            for _ in range(args.repeats):
                for name, scheduler in (("one", single), ("split", split)):
                    engine.step(prefix)  # the AR rows' context, again
                    t0 = time.perf_counter()
                    scheduler.run_passes(step)
                    best[name] = min(best[name], time.perf_counter() - t0)
                    for s in range(rows):
                        engine.release(s)
            cut = model.split(sorted(len(x.tokens) for x in step))
            groups = "one call" if cut is None else f"{cut} + {rows - cut}"
            print(
                f"| {rows} | {prompt} | {1000 * best['one']:.1f} | {groups} | "
                f"{1000 * best['split']:.1f} | {best['one'] / best['split']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
