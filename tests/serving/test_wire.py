"""The denoiser's wire format: passes and results survive the round trip, empty batches too."""

import numpy as np
import pytest

from dlm.engine import PassRequest, PassResult
from dlm.serving.wire import (
    INPUTS,
    OUTPUTS,
    pack_passes,
    pack_results,
    unpack_passes,
    unpack_results,
)


def passes():
    # temperature travels as FP32, as engines take it (pack_batch); 0.5 is exact in both.
    return [
        PassRequest(7, 0, [5, 6, 7, 8], tail=0, write=True, n_out=1),
        PassRequest(
            2**40 + 3, 12, [9, 3, 3], tail=3, write=False, n_out=3, temperature=0.5, seed=2**32 - 1
        ),
        PassRequest(9, 4, [5, 3, 3, 3, 3], tail=2, write=True, n_out=5, fork=2),
    ]


def test_passes_round_trip():
    arrays = pack_passes(passes(), release=[4, 5], cancel=[2**40 + 3])
    assert set(arrays) == set(INPUTS)
    assert arrays["tokens"].shape == (3, 5) and arrays["tokens"].dtype == np.int64
    assert arrays["header"].shape == (3, 8) and arrays["control"].shape == (3, 2)
    got, release, cancel = unpack_passes(arrays)
    assert got == passes()
    assert release == [4, 5] and cancel == [2**40 + 3]


def test_empty_batch_carries_releases_only():
    arrays = pack_passes([], release=[1])
    assert arrays["tokens"].shape == (0, 0) and arrays["header"].shape == (0, 8)
    assert unpack_passes(arrays) == ([], [1], [])


def test_results_cut_to_each_pass():
    ps = passes()[:2]
    results = [
        PassResult(np.array([11]), np.array([0.5], np.float32)),
        PassResult(np.array([1, 2, 3]), np.array([0.1, 0.2, 0.3], np.float32)),
    ]
    arrays = pack_results(results, cancelled=[ps[1].seq_id])
    assert set(arrays) == set(OUTPUTS)
    assert arrays["out_tokens"].shape == (2, 3)
    back = unpack_results(arrays, ps)
    for a, b in zip(back, results, strict=True):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.confidence, b.confidence)
    assert arrays["cancelled"].tolist() == [ps[1].seq_id]


def test_bad_inputs_name_the_tensor():
    arrays = pack_passes(passes())
    arrays["temperature"] = arrays["temperature"][:1]
    with pytest.raises(ValueError, match=r"temperature \(1,\)"):
        unpack_passes(arrays)
    arrays = pack_passes(passes())
    arrays["header"][0, 2] = 9  # n_tokens beyond the tokens width
    with pytest.raises(ValueError, match=r"header\[0\]\.n_tokens=9"):
        unpack_passes(arrays)
