"""The engine's cost model: seconds per pass by rows in the batch and tokens per row, measured on
this machine and kept beside the engine (`cost_model.json` in the engine folder).

`measure(engine)` prefills `max(ROWS)` sequences with CONTEXT cached positions, then times one
pass of every (rows, tokens) of the grid (block-bidirectional, reading the cache, writing
nothing: the shape of a self-speculation round), the fastest of REPEATS after a warm-up, in
REPEATS sweeps over the grid (not REPEATS timings in a row: a burst of a neighbour's work on a
shared machine spoiled whole cells: 12 tokens read 2.0x 4 tokens where passes take 1.5x). A pass
between grid points is interpolated linearly in rows and tokens; past the grid, extrapolated
from its last two points. A scheduler that uses it reports how long each of its steps took, from
one start to the next (`observe`: the pass, the policies, the responses and whatever the server
does between steps), and what that adds to the table is learnt per cell of the grid. `mode=auto`
asks it what a round of each draft length would cost at the batch in flight
(`dlm.sampling.auto`).

The cache is reused while the machine is the same (`machine(engine)`: the engine's class, its
device and threads, the CPU model and count, the GPU's name), else measured again.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dlm.engine import Engine, PassRequest

ROWS = (1, 2, 4, 8, 16)
TOKENS = (1, 4, 12, 32, 96)  # a self_spec round of block b with a full draft: 3b tokens
CONTEXT = 32  # cached positions each row reads
REPEATS = 3
OBSERVED = 0.05  # weight of one observed step in the overhead (about 20 steps of memory)
FILE = "cost_model.json"


@dataclass
class CostModel:
    rows: list[int]
    tokens: list[int]
    seconds: list[list[float]]  # [rows index][tokens index]
    machine: str
    context: int = CONTEXT

    def __post_init__(self) -> None:
        # What a step costs where the engine serves beyond the measured pass (the scheduler's
        # policies, responses, the server's work between steps, a context longer or shorter
        # than the table's), per cell of the grid: an EMA of observed minus measured, 0 until
        # `observe`.
        self.overhead = [[0.0] * len(self.tokens) for _ in self.rows]
        self.observed = [[0] * len(self.tokens) for _ in self.rows]  # steps seen per cell
        self._previous: tuple[int, int] | None = None  # the cell of the last step observed
        # auto asks for every candidate size of every step: cells are found by bisection
        # between the grid's geometric midpoints, and a cell's borrowed one is kept until
        # another cell is seen for the first time
        self._bounds = tuple(_midpoints(xs) for xs in (self.rows, self.tokens))
        self._borrowed: dict[tuple[int, int], tuple[int, int] | None] = {}

    def table_seconds(self, rows: int, tokens: int) -> float:
        """The measured table at (rows, tokens), interpolated (between the two lines of rows
        around `rows`: auto asks this for every candidate size of every step)."""
        i = _segment(self.rows, rows)
        lo, hi = (_interp(self.tokens, self.seconds[j], tokens) for j in (i - 1, i))
        return max(
            1e-6, lo + (hi - lo) * (rows - self.rows[i - 1]) / (self.rows[i] - self.rows[i - 1])
        )

    def pass_seconds(self, rows: int, tokens: float) -> float:
        """The time of one step of `rows` rows of `tokens` tokens each (on average): the
        measured pass plus the overhead the steps observed nearest to it (`_overhead`)."""
        return max(1e-6, self.table_seconds(rows, tokens) + self._overhead(rows, tokens))

    def _overhead(self, rows: int, tokens: float) -> float:
        """The learnt overhead at (rows, tokens): in the nearest line of rows, interpolated in
        tokens between the two cells around it (a round's cost does not jump where its tokens
        cross from one cell to the next: auto compares sizes whose rounds straddle cells)."""
        i, (j, f) = self._cell(rows, tokens)[0], self._knots(tokens)
        return (1 - f) * self._learnt(i, j) + f * self._learnt(i, j + 1)

    def _knots(self, tokens: float) -> tuple[int, float]:
        """(j, f): tokens lies f of the way from self.tokens[j] to self.tokens[j + 1] (f held
        within [0, 1] past the ends: the overheads are not extrapolated)."""
        j = _segment(self.tokens, tokens) - 1
        t0, t1 = self.tokens[j], self.tokens[j + 1]
        return j, min(1.0, max(0.0, (tokens - t0) / (t1 - t0)))

    def _learnt(self, i: int, j: int) -> float:
        """Cell (i, j)'s overhead; a cell no step has reached yet takes that of the nearest one
        that a step did, in its line of rows first (a choice the scheduler has not tried looks
        no cheaper than the ones it has): 0 before any."""
        if self.observed[i][j]:
            return self.overhead[i][j]
        if (i, j) not in self._borrowed:
            seen = [
                (abs(a - i), abs(b - j), a, b)
                for a, line in enumerate(self.observed)
                for b, n in enumerate(line)
                if n
            ]
            self._borrowed[i, j] = min(seen)[2:] if seen else None
        borrowed = self._borrowed[i, j]
        return 0.0 if borrowed is None else self.overhead[borrowed[0]][borrowed[1]]

    def _cell(self, rows: int, tokens: float) -> tuple[int, int]:
        """The grid cell nearest (rows, tokens) on log scales (ties to the smaller)."""
        row_bounds, token_bounds = self._bounds
        return bisect.bisect_left(row_bounds, rows), bisect.bisect_left(token_bounds, tokens)

    def observe(self, rows: int, tokens: float, seconds: float) -> None:
        """A step of `rows` rows of `tokens` tokens each on average took `seconds`, start to
        next start (padded, split in two calls or not: what that costs is learnt too). Learnt
        only after a step of the same cell: the first step of another shape pays for what the
        one before left (served, its responses still on their way through the server's other
        processes; measured: AR steps at 16 rows after speculative ones took 16-37 ms, 12 ms
        after AR steps). What it shows past the interpolated overhead goes to the two cells
        around it in its line of rows, each by its share of the interpolation."""
        cell = self._cell(rows, tokens)
        steady, self._previous = self._previous == cell, cell
        if not steady:
            return
        i, (j, f) = cell[0], self._knots(tokens)
        error = seconds - self.table_seconds(rows, tokens) - self._overhead(rows, tokens)
        for b, share in ((j, 1 - f), (j + 1, f)):
            if share <= 0:
                continue
            if not self.observed[i][b]:
                self.overhead[i][b] = self._learnt(i, b)  # from where it was read
                self._borrowed.clear()  # the nearest seen cell may now be another
            self.observed[i][b] += 1
            # a cell's first steps move it most, then about 1 / OBSERVED steps of memory: a
            # cell seen rarely (the other choice, once in a while) learns from its first on
            self.overhead[i][b] += max(OBSERVED, 1.0 / self.observed[i][b]) * share * error

    def split(self, tokens: list[int]) -> int | None:
        """Where to cut a step whose rows carry `tokens` tokens each (ascending) into two engine
        calls, the rows before the cut in one and the others in the second, when that costs less
        pass time than padding every row to the longest (a new request's prefill beside one-token
        rows); None: one call."""
        n = len(tokens)
        best, cut = self.table_seconds(n, tokens[-1]), None
        for s in range(1, n):
            if tokens[s] != tokens[s - 1]:
                t = self.table_seconds(s, tokens[s - 1]) + self.table_seconds(n - s, tokens[-1])
                if t < best:
                    best, cut = t, s
        return cut

    def table(self) -> str:
        """The measured grid as text (ms), rows down, tokens across."""
        head = "rows \\ tokens " + " ".join(f"{t:>7}" for t in self.tokens)
        lines = [head] + [
            f"{r:>13} " + " ".join(f"{1000 * s:7.2f}" for s in line)
            for r, line in zip(self.rows, self.seconds, strict=True)
        ]
        return "\n".join(lines)


def _midpoints(xs: list[int]) -> list[float]:
    """The geometric midpoints of a grid line: x is nearest xs[bisect_left(midpoints, x)]."""
    return [math.sqrt(a * b) for a, b in zip(xs[:-1], xs[1:], strict=True)]


def _segment(xs: list[int], x: float) -> int:
    """i such that xs[i - 1], xs[i] bracket x (the first or last two past the ends)."""
    return min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)


def _interp(xs: list[int], ys: list[float], x: float) -> float:
    i = _segment(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(engine: Engine) -> str:
    """What the figures depend on, as one string."""
    cpu = cpu_name()
    inner = engine
    while hasattr(inner, "engine"):  # through wrappers (metered, held)
        inner = inner.engine
    parts = [type(inner).__name__, str(getattr(inner, "device", "cpu"))]
    parts += [f"threads={getattr(inner, 'threads', None)}", cpu, f"{os.cpu_count()} CPUs"]
    if hasattr(inner, "spin_rows"):  # ONNX Runtime: small steps on a spinning pool or not
        parts.append(f"spin_rows={inner.spin_rows}")
    if hasattr(inner, "graphs"):  # the PyTorch engine: its passes replayed as CUDA graphs or not
        parts.append(f"graphs={'off' if inner.graphs is None else 'on'}")
    gpu = getattr(inner, "gpu_name", None)
    if gpu:
        parts.append(gpu)
    return ", ".join(parts)


def measure(engine: Engine, rows=ROWS, tokens=TOKENS, context=CONTEXT, repeats=REPEATS):
    """Time the grid on `engine` (a few seconds); its caches are released afterwards."""
    cfg = engine.config
    ids = [-(i + 1) for i in range(max(rows))]  # never a real sequence's id
    prompt = [i % cfg.vocab_size for i in range(context)]
    shapes = [(r, t) for r in rows for t in tokens]
    best = dict.fromkeys(shapes, math.inf)
    try:
        engine.step([PassRequest(s, 0, prompt, 0, True, 1) for s in ids])
        for rep in range(1 + repeats):  # a warm-up (allocations, kernel choice), then timed
            # every shape once per sweep: a neighbour's burst on a shared machine spoils one
            # of a shape's timings, not all of them
            for r, t in shapes:
                passes = [PassRequest(s, context, [5] * t, t, False, t) for s in ids[:r]]
                t0 = time.perf_counter()
                engine.step(passes)
                if rep:
                    best[r, t] = min(best[r, t], time.perf_counter() - t0)
    finally:
        for s in ids:
            engine.release(s)
    grid = [[best[r, t] for t in tokens] for r in rows]  # the fastest: the pass itself
    return CostModel(list(rows), list(tokens), grid, machine(engine), context)


def cached(engine: Engine, folder: str | Path) -> CostModel | None:
    """`folder`'s cached cost model if it was measured for `engine` on this machine, else None."""
    path = Path(folder) / FILE
    if not path.exists():
        return None
    found = CostModel(**json.loads(path.read_text()))
    grid = (found.rows, found.tokens, found.context) == (list(ROWS), list(TOKENS), CONTEXT)
    return found if found.machine == machine(engine) and grid else None


def load_or_measure(engine: Engine, folder: str | Path | None = None, say=None) -> CostModel:
    """The engine's cost model: `folder`'s cached one if measured on this machine, else measured
    now (and cached there when the folder is writable)."""
    found = cached(engine, folder) if folder is not None else None
    if found is not None:
        return found
    path = Path(folder) / FILE if folder is not None else None
    here = machine(engine)
    t0 = time.perf_counter()
    model = measure(engine)
    if say is not None:
        say(f"[cost] pass times measured in {time.perf_counter() - t0:.1f} s on {here}:")
        say(model.table())
    if path is not None:
        try:
            path.write_text(json.dumps(asdict(model), indent=1) + "\n")
        except OSError:  # a read-only engine folder: measured again next time
            pass
    return model


def attached(engine: Engine) -> CostModel | None:
    """The cost model attached to `engine` or an engine it wraps (by whoever loaded it)."""
    inner = engine
    while inner is not None:
        if getattr(inner, "cost_model", None) is not None:
            return inner.cost_model
        inner = getattr(inner, "engine", None)
    return None


def for_engine(engine: Engine) -> CostModel:
    """The cost model attached to `engine`, else measured once for it."""
    model = attached(engine)
    if model is None:
        model = engine.cost_model = measure(engine)
    return model
