"""What `mode=auto`'s planner costs per engine step, beside the AR step it decides about.

    python -m benchmarks.planner_step --model models/default      # the build's cost table

`Planner.size` runs once per step of a scheduler with auto requests (the block size of every
auto row, and now and then whether to explore), on the scheduler's thread between two engine
calls: whatever it takes is added to every step. Timed here at 1, 4, 8 and 16 rows on the
engine's cost model (`cost_model.json`, measured by `make engine`; a step observed in its AR and
speculation cells, as a scheduler's first steps leave it), against the table's AR step at the
same rows. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import timeit
from pathlib import Path

from dlm.cost import FILE, CostModel
from dlm.sampling.auto import SIZES, Planner
from export import engine_dir

ROWS = (1, 4, 8, 16)


def step_us(model: CostModel, rows: int, steps: int) -> tuple[float, int]:
    """(microseconds per Planner.size call, the size chosen most) over `steps` steps."""
    for tokens in (1, 12):  # a step seen in each cell: the overhead is learnt, none borrowed
        model.observe(rows, tokens, 0.0)
        model.observe(rows, tokens, model.table_seconds(rows, tokens))
    step = [0]
    planner = Planner(model, rows=lambda: rows, step=lambda: step[0])
    sizes = []

    def one() -> None:
        step[0] += 1
        sizes.append(planner.size(SIZES[-1]))

    return timeit.timeit(one, number=steps) / steps * 1e6, max(set(sizes), key=sizes.count)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/default")
    p.add_argument("--engine", default=None, help="build folder (default: the model's)")
    p.add_argument("--steps", type=int, default=2000)
    args = p.parse_args(argv)
    path = Path(args.engine or engine_dir(args.model)) / FILE
    table = json.loads(path.read_text())
    print(f"# {path} ({table['machine']})")
    print("| rows | planner us / step | chosen size | AR step ms (table) | planner / AR step |")
    print("|---:|---:|---:|---:|---:|")
    for rows in ROWS:
        model = CostModel(**table)
        us, size = step_us(model, rows, args.steps)
        ar = model.table_seconds(rows, 1) * 1e3
        print(f"| {rows} | {us:.1f} | {size} | {ar:.2f} | {us / 1e3 / ar:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
