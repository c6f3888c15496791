"""What the supervisor reads of a server's processes (model_repository.processes), on real
processes made here: children of this test that look like Python backend stubs (killed or not),
regions mapped by a live process; and the two loops every caller uses."""

import mmap
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from model_repository.processes import (
    STUB,
    killed_stubs,
    poll_until,
    remove_left_by_exited,
    remove_orphans,
    stop_process,
    stubs,
)

SLEEP = "import sys; print('up', flush=True); sys.stdin.read()\n"  # exits 0 when stdin closes


@pytest.fixture
def spawn(tmp_path):
    """spawn(model, name, region): a child of this test with a stub's name and command line
    (`<stub> <repo>/<model>/1/model.py <region> <size> <growth> <ppid> <backend dir> <ipc>
    <name> ...`): this Python under a link named like the stub, running a model.py that sleeps."""
    link = tmp_path / STUB
    link.symlink_to(os.path.realpath(sys.executable))
    made: list[subprocess.Popen] = []

    def spawn(model: str, name: str, region: str = "r") -> subprocess.Popen:
        script = tmp_path / "repo" / model / "1" / "model.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(SLEEP)
        argv = [str(link), str(script), region, "1", "1", "9", "/b", "3", name, "DEFAULT"]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "up\n"
        made.append(proc)
        return proc

    yield spawn
    for proc in made:
        proc.kill()
        proc.wait()


def test_only_instance_stubs_count(spawn):
    instance = spawn("dlm", "dlm_0_0", "r_a")
    spawn("dlm", "dlm", "r_b")  # the stub that checks the config, then exits by itself
    killed = spawn("preprocessing", "preprocessing_0_0", "r_c")
    killed.send_signal(signal.SIGKILL)
    poll_until(lambda: killed.pid in killed_stubs(os.getpid()), 10)  # a zombie: not counted
    other = subprocess.Popen(
        [sys.executable, "-c", SLEEP], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline() == "up\n"
        assert stubs(os.getpid()) == [("dlm", instance.pid, "r_a")]
        assert stubs(other.pid) == []  # another server's: none
    finally:
        stop_process(other, 5)


def test_a_stub_killed_stays_a_zombie_with_its_signal(spawn):
    by_signal = spawn("dlm", "dlm")
    by_itself = spawn("dlm", "dlm")
    alive = spawn("dlm", "dlm_0_0")
    by_signal.send_signal(signal.SIGKILL)
    by_itself.stdin.close()  # exits 0: a zombie too until reaped, but not a killed one
    assert poll_until(lambda: by_signal.pid in killed_stubs(os.getpid()), 10)
    assert poll_until(lambda: psutil.Process(by_itself.pid).status() == psutil.STATUS_ZOMBIE, 10)
    assert killed_stubs(os.getpid()) == [by_signal.pid]
    assert alive.poll() is None


def test_remove_orphans_only_touches_new_unmapped_regions(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    names = [f"triton_python_backend_shm_region_{i}" for i in "abc"]
    for n in names:
        (shm / n).write_bytes(b"\0" * mmap.PAGESIZE)
        os.utime(shm / n, (time.time() - 60, time.time() - 60))
    (shm / "other_file").write_bytes(b"")
    code = (
        "import mmap, sys, time\n"
        "f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 0)\n"
        "print('up', flush=True); time.sleep(1000)\n"
    )
    mapper = subprocess.Popen(
        [sys.executable, "-c", code, str(shm / names[1])], stdout=subprocess.PIPE, text=True
    )
    try:
        assert mapper.stdout.readline() == "up\n"
        removed = remove_orphans({names[0]}, shm)
    finally:
        stop_process(mapper, 5)
    assert removed == [names[2]]  # a: in the baseline; b: mapped by a live process
    assert sorted(p.name for p in shm.iterdir()) == sorted([names[0], names[1], "other_file"])


def test_poll_until_returns_the_value_or_gives_up():
    calls = []
    assert poll_until(lambda: calls.append(1) or len(calls) >= 3 and "done", 60, 0) == "done"
    assert len(calls) == 3
    assert poll_until(lambda: False, 0) is False  # past its deadline: checked once
    assert poll_until(lambda: None, float("inf"), 0, give_up=lambda: True) is None


def test_stop_process_asks_then_kills():
    polite = subprocess.Popen(
        [sys.executable, "-c", SLEEP], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert polite.stdout.readline() == "up\n"
    assert stop_process(polite, 30) == -signal.SIGTERM and polite.returncode == -signal.SIGTERM
    code = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SLEEP
    stubborn = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert stubborn.stdout.readline() == "up\n"
    assert stop_process(stubborn, 0.5) == -signal.SIGKILL  # SIGTERM ignored: killed


def test_remove_orphans_of_an_exited_server_ignores_their_age(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    new, old, stranger = (f"triton_python_backend_shm_region_{i}" for i in ("new", "old", "x"))
    for n in (new, old, stranger):
        (shm / n).write_bytes(b"\0" * mmap.PAGESIZE)
    os.utime(shm / old, (time.time() - 60, time.time() - 60))
    assert remove_orphans(set(), shm) == [old]  # a region of the last 2 s may be a new server's
    # ... but one of a server that has exited is its own leftover, however new
    assert remove_orphans(set(), shm, ours={new}) == [new]
    assert sorted(p.name for p in shm.iterdir()) == [stranger]


def test_regions_of_an_exited_server_are_removed_once_its_stubs_let_go(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    region = "triton_python_backend_shm_region_lingering"
    (shm / region).write_bytes(b"\0" * mmap.PAGESIZE)
    code = (  # a stub that outlives its server by a moment
        "import mmap, sys, time\n"
        "f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 0)\n"
        "print('up', flush=True); time.sleep(0.5)\n"
    )
    stub = subprocess.Popen(
        [sys.executable, "-c", code, str(shm / region)], stdout=subprocess.PIPE, text=True
    )
    assert stub.stdout.readline() == "up\n"
    assert remove_left_by_exited(set(), {region}, timeout=30, shm=shm) == [region]
    assert stub.wait(30) == 0 and not (shm / region).exists()
