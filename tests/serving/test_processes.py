"""What the supervisor reads of a server's processes (model_repository.processes), on a fake
/proc and /dev/shm made here."""

import os
import time

from model_repository.processes import killed_stubs, remove_orphans, stubs

STUB = b"/opt/backends/python/triton_python_backend_stub"
REST = " ".join(["0"] * 45)  # stat fields 7..51


def process(proc, pid: int, ppid: int, argv: list[bytes], state="S", exit_code=0) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    # "pid (comm) state ppid pgrp session ..."; field 52 (the last) is the exit code
    (d / "stat").write_text(f"{pid} (triton_python_b) {state} {ppid} 1 1 {REST} {exit_code}")
    (d / "cmdline").write_bytes(b"\0".join(argv) if state != "Z" else b"")
    (d / "comm").write_text("triton_python_b\n")


def stub_argv(model: str, name: str, region: str) -> list[bytes]:
    head = [STUB, f"/r/{model}/1/model.py".encode(), region.encode(), b"1", b"1", b"9", b"/b"]
    return [*head, b"3", name.encode(), b"DEFAULT", b""]


def test_only_instance_stubs_count(tmp_path):
    process(tmp_path, 10, 9, stub_argv("dlm", "dlm_0_0", "r_a"))
    process(tmp_path, 11, 9, stub_argv("dlm", "dlm", "r_b"))  # checks the config, then exits
    process(tmp_path, 12, 9, stub_argv("preprocessing", "preprocessing_0_0", "r_c"), "Z", 9)
    process(tmp_path, 13, 8, stub_argv("dlm", "dlm_0_0", "r_d"))  # another server's
    process(tmp_path, 14, 9, [b"/usr/bin/python3", b"x.py", b"y"])
    assert stubs(9, tmp_path) == [("dlm", 10, "r_a")]


def test_a_stub_killed_stays_a_zombie_with_its_signal(tmp_path):
    process(tmp_path, 20, 9, stub_argv("dlm", "dlm", "r"), "Z", 9)  # SIGKILL
    process(tmp_path, 21, 9, stub_argv("dlm", "dlm", "r"), "Z", 0)  # ended by itself
    process(tmp_path, 22, 9, stub_argv("dlm", "dlm_0_0", "r"))
    process(tmp_path, 23, 7, stub_argv("dlm", "dlm", "r"), "Z", 9)  # not this server's
    assert killed_stubs(9, tmp_path) == [20]


def test_remove_orphans_only_touches_new_unmapped_regions(tmp_path):
    shm, proc = tmp_path / "shm", tmp_path / "proc"
    shm.mkdir()
    (proc / "42").mkdir(parents=True)
    names = [f"triton_python_backend_shm_region_{i}" for i in "abc"]
    for n in names:
        (shm / n).write_bytes(b"")
        os.utime(shm / n, (time.time() - 60, time.time() - 60))
    (shm / "other_file").write_bytes(b"")
    (proc / "42" / "maps").write_text(f"7f00-7f01 rw-s 0 00:1a 9 /dev/shm/{names[1]}\n")
    removed = remove_orphans({names[0]}, shm, proc)
    assert removed == [names[2]]  # a: in the baseline; b: mapped by a live process
    assert sorted(p.name for p in shm.iterdir()) == sorted([names[0], names[1], "other_file"])
