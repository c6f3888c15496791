"""mode=auto and the engine's cost model."""

import json

import pytest

from dlm import cost
from dlm.engine import TorchEngine
from dlm.pipeline import DEFAULT_MODEL, Pipeline
from dlm.sampling import GenerationRequest, auto, generate
from dlm.sampling.auto import (
    EXPLORE,
    EXPLORE_BUDGET,
    EXPLORE_STEPS,
    MEMORY,
    PRIOR_ACCEPT,
    PRIOR_DRAFT,
    PRIOR_FIRST,
    SIZES,
    Drafting,
    Planner,
    best_size,
    explore_interval,
)
from dlm.sampling.self_spec import FORK_GAIN
from dlm.sampling.sequence import BlockStats
from tests.conftest import random_prompts, tiny_model

END = 63


def flat(seconds: float = 0.01) -> cost.CostModel:
    """A machine where a pass costs the same whatever its size (a GPU at a small batch)."""
    return cost.CostModel([1, 8], [1, 96], [[seconds] * 2] * 2, "flat")


def dear() -> cost.CostModel:
    """One where a pass costs 10 ms per token of a row (a busy CPU, much exaggerated: more
    than any step overhead the scheduler may learn on top of it)."""
    return cost.CostModel([1, 8], [1, 96], [[0.01, 0.96], [0.08, 7.68]], "dear")


def linear() -> cost.CostModel:
    """One where a pass costs a little more with every token (a GPU)."""
    return cost.CostModel([1, 8], [1, 96], [[0.010, 0.011], [0.010, 0.011]], "linear")


def requests(prompts, mode, **kw):
    return [GenerationRequest(list(p), mode=mode, end_id=END, max_tokens=30, **kw) for p in prompts]


@pytest.mark.parametrize("model", ["flat", "dear", "measured"])
def test_auto_equals_ar_in_ragged_batches(model):
    engine = TorchEngine(tiny_model(seed=3))
    engine.model.diffusion_head.weight.data *= 8  # confident drafts, often right
    if model != "measured":
        engine.cost_model = flat() if model == "flat" else dear()
    prompts = random_prompts(10, lo=2, hi=40, seed=4)
    ar = generate(engine, requests(prompts, "ar"))
    for block in (8, 32):
        got = generate(engine, requests(prompts, "auto", block_length=block))
        assert [g.token_ids for g in got] == [a.token_ids for a in ar]
    if model == "measured":  # measured once for the engine, on first use
        assert engine.cost_model.machine == cost.machine(engine)


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_seeded_sampling_self_speculation_equals_ar(temperature):
    """Noise is keyed by the sequence position: a verify slot draws what an AR step there
    draws, so self_spec and auto sample ar's very tokens with the same seed."""
    engine = TorchEngine(tiny_model(seed=3))
    engine.model.diffusion_head.weight.data *= 8
    engine.cost_model = flat()
    prompts = random_prompts(8, lo=2, hi=30, seed=5)

    def run(mode, **kw):
        rs = requests(prompts, mode, temperature=temperature, **kw)
        for i, r in enumerate(rs):
            r.seed = 1000 + i
        return [g.token_ids for g in generate(engine, rs)]

    ar = run("ar")
    assert run("self_spec", block_length=8) == ar == run("auto")
    assert run("ar") == ar  # reproducible
    other = requests(prompts, "ar", temperature=temperature)
    assert [g.token_ids for g in generate(engine, other)] != ar  # the seed matters


def test_auto_picks_long_drafts_when_passes_are_free_and_ar_when_dear(monkeypatch):
    # the tables as given: nothing learnt on top
    monkeypatch.setattr(cost.CostModel, "observe", lambda *a: None)
    pipe = Pipeline.load(DEFAULT_MODEL)
    prompt = "import os\n\n\nclass Cache:\n"
    runs = {}
    for name, model in (("flat", flat()), ("dear", dear())):
        pipe.engine.cost_model = model
        runs[name] = pipe.generate([pipe.request(prompt, mode="auto", max_tokens=48)])[0]
    ar = pipe.generate([pipe.request(prompt, mode="ar", max_tokens=48)])[0]
    spec = pipe.generate([pipe.request(prompt, mode="self_spec", max_tokens=48)])[0]
    assert runs["flat"].token_ids == runs["dear"].token_ids == ar.token_ids
    drafts = {k: [b.draft for b in r.blocks] for k, r in runs.items()}
    # free passes: the longest drafts, as self_spec at its full block (32), in its passes but
    # for the AR step it takes once in EXPLORE steps
    assert max(drafts["flat"]) >= 8, drafts
    passes = runs["flat"].num_forward_passes
    assert spec.num_forward_passes <= passes <= spec.num_forward_passes * (1 + 2 / EXPLORE)
    assert passes < ar.num_forward_passes
    assert drafts["dear"] == [0] * len(drafts["dear"])  # AR steps only
    assert runs["dear"].num_forward_passes == ar.num_forward_passes


def held(d: Drafting, size: int, committed: float, draft: int, after_fork: bool = False) -> None:
    """Many rounds held at `size`, each verifying `draft` draft tokens and committing
    `committed` (the round before each forked, or not)."""
    before = BlockStats(1, 1, draft, size, forked=after_fork)
    for _ in range(8 * MEMORY):
        d.observe(BlockStats(committed, 1, draft, size), before)


def drafting(length: int, accept: float) -> Drafting:
    """Statistics after many rounds of every size that verified drafts of `length` tokens (as
    many as the size allows), each accepted with probability `accept` after the ones before."""
    d = Drafting()
    for size in SIZES[1:]:
        draft = min(size - 1, length)
        held(d, size, 1 + sum(accept**k for k in range(1, draft + 1)), draft)
    return d


def test_best_size_follows_cost_batch_and_drafting():
    long = drafting(31, 0.95)
    assert best_size(flat(), 1, long, 32) == 32  # long confident drafts, free passes
    assert best_size(dear(), 1, long, 32) == 1
    assert best_size(flat(), 1, long, 5) == 5  # block_length is the bound
    # short drafts: a larger block buys little
    assert best_size(linear(), 1, drafting(3, 0.9), 32) < best_size(linear(), 1, long, 32) == 32
    # a pass of 8 rows costs 8x: the same drafting buys shorter blocks at the larger batch
    mixed = cost.CostModel([1, 8], [1, 96], [[0.004, 0.010], [0.010, 0.900]], "mixed")
    assert best_size(mixed, 1, drafting(31, 0.9), 32) > best_size(mixed, 8, drafting(31, 0.9), 32)
    assert best_size(linear(), 1, drafting(3, 0.0), 32) == 1  # nothing is ever accepted: AR


def test_drafting_statistics_follow_the_rounds_held_at_each_size():
    d = Drafting()
    assert d.first(2) == PRIOR_FIRST and d.first(1) == 0
    assert d.drafted(1) == 0 and d.drafted(2) == pytest.approx(PRIOR_FIRST)
    assert d.drafted(128) == pytest.approx(PRIOR_DRAFT, rel=0.01)  # the mean draft
    assert d.committed(2) == pytest.approx(1 + PRIOR_FIRST * PRIOR_ACCEPT)
    prior_4 = (d.committed(4), d.drafted(4))
    # rounds of size 8 with drafts of 6, half of them accepted to 3, the others to 1
    before = BlockStats(1, 1, 6, 8)
    for i in range(8 * MEMORY):
        d.observe(BlockStats(4 if i % 2 else 2, 1, 6, 8), before)
    assert d.first(8) == pytest.approx(1, abs=0.01)
    assert d.drafted(8) == pytest.approx(6, abs=0.01)
    assert d.committed(8) == pytest.approx(3, abs=0.01)
    assert d.tokens(8) == pytest.approx(1 + 6 + 8, abs=0.01) and d.tokens(1) == 1
    assert d.branch(8) == pytest.approx(8, abs=0.01) and d.branch(1) == 0
    assert (d.committed(4), d.drafted(4)) == prior_4  # another size's rounds say nothing of 4
    now = (d.drafted(8), d.committed(8))
    d.observe(BlockStats(1, 1, 0, 1), BlockStats(1, 1, 0, 1))  # an AR step tells nothing
    # nor a round after one of another size (its draft was drafted in that size's block) or
    # after an AR step (it has none)
    for other in (4, 1):
        for _ in range(MEMORY):
            d.observe(BlockStats(1, 1, 0, 8), BlockStats(2, 1, 1, other))
    assert (d.drafted(8), d.committed(8)) == now
    held(d, 6, committed=1, draft=0)  # rounds that had no draft do not carry the fork
    assert d.first(6) == pytest.approx(0, abs=0.01) and d.branch(6) == pytest.approx(0, abs=0.05)
    # a round whose draft came from the fork is counted without what the fork added
    held(d, 4, committed=1 + 2 * (1 + FORK_GAIN), draft=3, after_fork=True)
    assert d.committed(4) == pytest.approx(3, abs=0.01)
    held(d, 5, committed=5, draft=4)  # a size between two of SIZES counts with the one below
    assert d.committed(4) == pytest.approx(5, abs=0.01)


def test_each_size_is_judged_by_its_own_rounds():
    """The shipped model's drafts depend on the block they are drafted in: rounds of 4 that
    commit 2.4 tokens, of 6 that commit 2.5 and of 8 2.52 (in process on the 2-core CPU) buy
    block 4 where every token of a pass costs 0.25 ms more (estimated position by position
    from the rounds of 4, sizes 6 and 8 were promised 2.82 and 3.05 tokens there)."""
    d = Drafting()
    for size, committed, draft in ((4, 2.4, 2.0), (6, 2.5, 2.6), (8, 2.52, 2.9)):
        held(d, size, committed, draft)
    cpu = cost.CostModel([1, 8], [1, 96], [[0.0025, 0.0025 + 95 * 25e-5]] * 2, "cpu")
    assert best_size(cpu, 1, d, 8, smallest=4) == 4
    assert best_size(flat(), 1, d, 8, smallest=4) == 8  # free passes: the most per round


def test_the_cost_model_learns_the_overhead_of_steps():
    m = dear()
    assert m.pass_seconds(8, 1) == pytest.approx(0.08)
    for _ in range(200):  # steps at 8 rows take 4 ms more than the pass here
        m.observe(8, 1, 0.084)
    assert m.pass_seconds(8, 1) == pytest.approx(0.084, rel=0.01)
    # a cell no step has reached looks no cheaper than the nearest one a step did
    assert m.pass_seconds(8, 96) == pytest.approx(7.684, rel=0.01)
    assert m.pass_seconds(1, 1) == pytest.approx(0.014, rel=0.01)
    for _ in range(200):
        m.observe(1, 96, 0.95)  # and then as its own steps go
    assert m.pass_seconds(1, 96) == pytest.approx(0.95, rel=0.01)
    assert m.pass_seconds(8, 96) == pytest.approx(7.684, rel=0.01)  # nearer in its own line


def explorations(sizes: list[int], other) -> list[tuple[int, int]]:
    """(first step, steps) of every run of steps whose size satisfies `other`."""
    runs, i = [], 0
    while i < len(sizes):
        if other(sizes[i]):
            j = i
            while j < len(sizes) and other(sizes[j]):
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


@pytest.mark.parametrize("machine", ["flat", "dear"])
def test_auto_explores_the_other_choices_in_turn_within_its_budget(machine):
    """Flat passes: speculation at the longest size is the choice, AR steps and the size next to
    it the explorations, in turn; dear passes: AR is the choice, the best speculative size the
    exploration. EXPLORE_STEPS steps in a row, each as often as keeps the tokens that choice is
    expected to lose (its time, at the rate it falls short by) within EXPLORE_BUDGET, never
    more often than every EXPLORE steps."""
    model = flat() if machine == "flat" else dear()
    d = Drafting()
    best = best_size(model, 1, d, SIZES[-1])
    planner = Planner(model, rows=lambda: 1, step=iter(range(10**6)).__next__)
    others = planner.others(1, best)
    if machine == "flat":
        assert best == SIZES[-1] and others == [1, SIZES[-2]]
    else:
        assert best == 1 and others == [best_size(model, 1, d, SIZES[-1], smallest=2)]
    interval = {}
    for other in others:
        k = interval[other] = explore_interval(model, 1, best, other, d)
        loss = 1 - auto.rate(model, 1, d, other) / auto.rate(model, 1, d, best)
        time = model.pass_seconds(1, d.tokens(other)) / model.pass_seconds(1, d.tokens(best))
        assert k >= EXPLORE and EXPLORE_STEPS * time * loss / k <= EXPLORE_BUDGET
    turns = [others[i % len(others)] for i in range(4)]
    sizes = [planner.size(128) for _ in range(sum(interval[o] for o in turns) + EXPLORE_STEPS)]
    begins = [interval[turns[0]] - 1]  # each exploration begins its interval after the last
    for other in turns[1:]:
        begins.append(begins[-1] + interval[other])
    assert explorations(sizes, lambda s: s != best) == [(b, EXPLORE_STEPS) for b in begins]
    assert [sizes[b] for b in begins] == turns
    assert set(sizes) == {best, *others}


def test_the_scheduler_reports_its_steps_to_the_cost_model():
    engine = TorchEngine(tiny_model())
    engine.cost_model = flat()
    generate(engine, requests(random_prompts(3, seed=6), "auto"))
    assert any(x != 0.0 for line in engine.cost_model.overhead for x in line)


def test_cost_model_is_measured_cached_and_reused(tmp_path):
    engine = TorchEngine(tiny_model())
    said = []
    first = cost.load_or_measure(engine, tmp_path, said.append)
    assert said and "rows \\ tokens" in said[-1]
    cached = json.loads((tmp_path / cost.FILE).read_text())
    assert cached["machine"] == cost.machine(engine) and cached["seconds"] == first.seconds
    assert all(s > 0 for line in first.seconds for s in line)
    said.clear()
    again = cost.load_or_measure(engine, tmp_path, said.append)
    assert again == first and not said  # reused, not measured
    cached["machine"] = "another machine"
    (tmp_path / cost.FILE).write_text(json.dumps(cached))
    third = cost.load_or_measure(engine, tmp_path, said.append)
    assert said and third.machine == cost.machine(engine)  # measured again
    # its passes as CUDA graphs (padded: dlm.graphs) cost otherwise: another table
    assert cost.machine(TorchEngine(tiny_model(), graphs=True)) != cost.machine(engine)
    m = first
    assert m.pass_seconds(1, 1) == pytest.approx(m.seconds[0][0])
    between = m.pass_seconds(3, 20)
    assert min(min(line) for line in m.seconds) <= between <= max(max(x) for x in m.seconds)


class Clocked:
    """An engine whose passes take 1 ms per row per token on a fake clock, and three calls in a
    row `burst` ms more (a neighbour's burst on a shared machine)."""

    def __init__(self, config, burst_at: int, burst: float = 0.1) -> None:
        self.config, self.now, self.calls = config, 0.0, 0
        self.burst_at, self.burst = burst_at, burst

    def clock(self) -> float:
        return self.now

    def step(self, passes):
        self.calls += 1
        self.now += 0.001 * len(passes) * len(passes[0].tokens)
        if self.burst_at <= self.calls < self.burst_at + 3:
            self.now += self.burst
        return []

    def release(self, seq_id) -> None:
        pass


@pytest.mark.parametrize("burst_at", range(2, 40, 3))
def test_a_burst_of_slow_passes_spoils_no_cell_of_the_table(monkeypatch, burst_at):
    """The grid is timed in sweeps, each cell once per sweep: three slow calls in a row fall
    on three cells' timings, each of which has two clean ones (timed three in a row, a cell
    could get all three)."""
    engine = Clocked(TorchEngine(tiny_model()).config, burst_at)
    monkeypatch.setattr(cost.time, "perf_counter", engine.clock)
    m = cost.measure(engine, rows=(1, 2), tokens=(1, 4, 12))
    assert m.seconds == [[pytest.approx(0.001 * r * t) for t in (1, 4, 12)] for r in (1, 2)]


def test_a_step_is_split_where_padding_costs_more_than_a_second_call():
    prefill_among_ar = [1] * 7 + [96]
    assert dear().split(prefill_among_ar) == 7  # 7 one-token rows apart from the prompt
    assert flat().split(prefill_among_ar) is None  # a second call costs a whole pass
    assert dear().split([1] * 8) is None  # nothing padded


class Calls:
    """An engine that records how many rows each of its calls carried."""

    def __init__(self, engine):
        self.engine, self.config, self.rows = engine, engine.config, []

    def step(self, passes):
        self.rows.append(len(passes))
        return self.engine.step(passes)

    def release(self, seq_id):
        self.engine.release(seq_id)


@pytest.mark.parametrize("mode", ["ar", "self_spec"])
def test_a_split_step_gives_what_one_call_gives(mode):
    """Prompts of many lengths prefilled in one step: split where passes are dear (the prompts'
    rows apart from the shorter ones), one call where they are flat; the same tokens."""
    prompts = random_prompts(6, lo=2, hi=40, seed=9)
    got = {}
    for name, model in (("dear", dear()), ("flat", flat())):
        engine = TorchEngine(tiny_model(seed=3))
        engine.cost_model = model
        calls = Calls(engine)
        got[name] = [r.token_ids for r in generate(calls, requests(prompts, mode))]
        got[name + " calls"] = calls.rows
    assert got["dear"] == got["flat"]
    assert len(got["dear calls"]) > len(got["flat calls"])  # some steps took two calls
    assert sum(got["dear calls"]) == sum(got["flat calls"])  # every pass ran once


def test_default_blocks_follow_the_pass_times():
    """The block of a request that names none (dlm.sampling.blocks): the trained block where
    passes cost the same whatever their size, a short one where a 32-token pass costs 3.6x a
    1-token one (this 2-core CPU's ONNX Runtime table)."""
    from dlm.sampling import blocks

    assert blocks.block_lengths(flat(), 32) == {"self_spec": 32, "diffusion": 32}
    # a little dearer with every token: self_spec's drafts (3 tokens on average by the prior,
    # now and then longer) are best caught by a block of 12; diffusion commits a little more
    # per pass in a longer block
    assert blocks.block_lengths(linear(), 32) == {"self_spec": 12, "diffusion": 24}
    cpu = cost.CostModel(
        [1, 2], [1, 4, 12, 32, 96], [[0.0031, 0.0043, 0.0063, 0.0113, 0.0198]] * 2, "2-core CPU"
    )
    # (its rounds do not fork there: the fork's tokens cost more than they bring)
    assert blocks.block_lengths(cpu, 32) == {"self_spec": 4, "diffusion": 4}
    assert blocks.block_lengths(cpu, 3) == {"self_spec": 3, "diffusion": 3}  # the trained bound
    assert blocks.block_lengths(dear(), 32) == {"self_spec": 2, "diffusion": 4}  # 4 at least
    # self_spec's rounds fork where the fork's tokens cost little, not on the CPU
    assert blocks.self_spec_forks(flat(), 32) and blocks.self_spec_forks(linear(), 12)
    assert not blocks.self_spec_forks(cpu, 4) and not blocks.self_spec_forks(dear(), 2)
