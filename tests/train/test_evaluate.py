"""The evaluation's measures (dlm.train.evaluate) and one small run of it."""

from dlm.pipeline import Pipeline
from dlm.train import evaluate


def test_distinct_share_sees_loops():
    assert evaluate.distinct_share([1, 2, 3, 4, 5, 6]) == 1.0
    assert evaluate.distinct_share([7] * 10) == 1 / 7  # one 4-gram, seven times
    assert evaluate.distinct_share([1, 2, 3, 1, 2, 3, 1]) == 3 / 4
    assert evaluate.distinct_share([1, 2]) == 1.0  # too short to repeat


def test_valid_python_cuts_the_unfinished_line():
    assert evaluate.valid_python("def f(x):\n", "    return x\n")
    assert evaluate.valid_python("def f(x):\n", "    y = x\n    return (")  # last line cut
    assert not evaluate.valid_python("def f(x):\n", "    return x)\n)\n)\n)\n)\n")


def test_a_small_run_reports_every_measure(tiny_checkpoint):
    pipe = Pipeline.load(tiny_checkpoint)
    settings = [s for s in evaluate.SETTINGS if s[0] in ("ar", "ar freq=0.5", "self_spec")]
    rows = evaluate.evaluate(pipe, 3, 8, settings)
    assert [r["setting"] for r in rows] == ["ar", "self_spec", "ar freq=0.5"]
    for r in rows:
        assert 0 <= r["distinct_4grams"] <= 1 and 0 <= r["valid_python"] <= 1
        assert 0 < r["tokens"] <= 3 * 8 and r["passes"] >= 3  # eos may end one early
    assert rows[1]["agreement_with_ar"] == 1.0  # self_spec is lossless
    table = evaluate.markdown(rows, rows[0]["tokens_per_s"])
    assert "| distinct 4-grams |" in table and table.count("\n") == 5
