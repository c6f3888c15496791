"""Two exported denoiser graphs side by side on ONNX Runtime: one pass, alternating (not a test).

    python -m benchmarks.graph_ab --model models/default A/denoiser.onnx B/denoiser.onnx

One pass over `--cached` positions of `--rows` rows (default one), of 1, 4 and 32 new tokens
each (an AR step, a small and a trained-size block), the parity cases' random inputs; the
graphs take turns every `--passes` passes for `--rounds` rounds, so a shared VM's drift weighs
on both. Prints each graph's median milliseconds and the speed of B against A. Used for
graph-level changes (e.g. the RMSNorm form ONNX Runtime fuses, benchmarks/results/graph_ab_cpu/).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from dlm.engines import model_config
from export import parity
from export.ort_engine import ort_session

TOKENS = (1, 4, 32)


def pass_ms(session, feed: dict, passes: int) -> float:
    names = [o.name for o in session.get_outputs()]
    t0 = time.perf_counter()
    for _ in range(passes):
        session.run(names, feed)
    return (time.perf_counter() - t0) / passes * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.graph_ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="models/default", help="checkpoint folder (its config)")
    p.add_argument("a", help="the reference graph")
    p.add_argument("b", help="the graph measured against it")
    p.add_argument("--cached", type=int, default=128)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--passes", type=int, default=20, help="passes per turn")
    args = p.parse_args(argv)
    cfg = model_config(args.model)
    sessions = [ort_session(g, args.threads) for g in (args.a, args.b)]
    print(
        f"# {args.a} (A) vs {args.b} (B): {args.rows} row(s) over {args.cached} cached positions, "
        f"{args.threads} threads, {args.rounds} rounds of {args.passes} passes each"
    )
    print("| new tokens | A ms | B ms | B speed vs A |")
    print("|---:|---:|---:|---:|")
    for t in TOKENS:
        n = args.rows
        case = parity.PassCase(
            f"{t}", (args.cached,) * n, (t,) * n, (0 if t == 1 else t,) * n, (t,) * n
        )
        feed = parity.case_inputs(cfg, case)
        times: list[list[float]] = [[], []]
        for s in sessions:  # warm up
            pass_ms(s, feed, args.passes)
        for _ in range(args.rounds):
            for s, out in zip(sessions, times, strict=True):
                out.append(pass_ms(s, feed, args.passes))
        a, b = (statistics.median(x) for x in times)
        print(f"| {t} | {a:.3f} | {b:.3f} | {a / b:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
