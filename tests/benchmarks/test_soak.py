"""The soak's verdict and its /proc readings (the soak itself: `make soak`, minutes long)."""

import os
import subprocess
import sys

from benchmarks.soak import process_tree, rss_bytes, verdict


def rows(server, stubs, shm=(4, 4)):
    seconds = range(0, 301, 5)
    n = len(seconds)
    return [
        {
            "seconds": float(t),
            "server_rss_mb": server[0] + (server[1] - server[0]) * i / (n - 1),
            "stubs_rss_mb": stubs[0] + (stubs[1] - stubs[0]) * i / (n - 1),
            "stubs": 4,
            "shm_regions": shm[0] if i < n - 1 else shm[1],
            "shm_mb": 128.0,
        }
        for i, t in enumerate(seconds)
    ]


NO_FAILURES = {"ensemble": 0.0, "dlm": 0.0}


def test_flat_memory_and_no_failures_pass():
    ok, lines = verdict(rows((40, 41), (1000, 1030)), NO_FAILURES, 0, 0.10, 60)
    assert ok, lines


def test_growing_stub_memory_fails():
    ok, lines = verdict(rows((40, 41), (1000, 1300)), NO_FAILURES, 0, 0.10, 60)
    assert not ok and any("stubs RSS" in line and "NOT flat" in line for line in lines)


def test_a_failed_request_fails():
    ok, _ = verdict(rows((40, 40), (1000, 1000)), {"ensemble": 1.0}, 0, 0.10, 60)
    assert not ok
    ok, _ = verdict(rows((40, 40), (1000, 1000)), NO_FAILURES, 99, 0.10, 60)
    assert not ok


def test_more_shm_regions_at_the_end_fails():
    ok, lines = verdict(rows((40, 40), (1000, 1000), shm=(4, 5)), NO_FAILURES, 0, 0.10, 60)
    assert not ok and any("GREW" in line for line in lines)


def test_process_tree_finds_children_and_their_memory():
    code = "import time; print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "up\n"  # its interpreter is loaded (not just forked)
        tree = process_tree(os.getpid())
        assert child.pid in tree and tree[os.getpid()]
        assert rss_bytes(child.pid) > 1_000_000
    finally:
        child.kill()
        child.wait()
