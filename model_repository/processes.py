"""A tritonserver's processes as the supervisor, `serve`, the soak and the tests see them (through
psutil): its Python backend stubs (model, pid, shared-memory region), the shared-memory regions
in /dev/shm that nothing maps any more (what a killed stub or server leaves behind), and the two
loops every caller needs: `poll_until` (a condition with a deadline) and `stop_process`
(ask, wait, kill)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import psutil

STUB = "triton_python_backend_stub"
REGION = "triton_python_backend_shm_region_"
T = TypeVar("T")


def poll_until(
    condition: Callable[[], T],
    timeout: float,
    interval: float = 0.1,
    give_up: Callable[[], bool] = lambda: False,
) -> T:
    """Call `condition()` every `interval` s until it returns a true value, and return that
    value; return its last (false) value once `timeout` s have passed or `give_up()` holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or give_up() or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def stop_process(
    proc: subprocess.Popen | psutil.Process,
    timeout: float,
    ask: Callable[[], object] | None = None,
) -> int | None:
    """End `proc`: `ask()` it to stop (default: SIGTERM), wait up to `timeout` s for it to exit,
    SIGKILL it past that and wait again. Returns its exit code (a Popen is reaped by its own
    wait(), so that its returncode stays right)."""
    timeouts = (subprocess.TimeoutExpired, psutil.TimeoutExpired)
    try:
        if ask is not None:
            ask()
        else:
            proc.send_signal(signal.SIGTERM)
    except (ProcessLookupError, psutil.NoSuchProcess):  # gone already
        pass
    try:
        return proc.wait(timeout)
    except timeouts:
        try:
            proc.kill()
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
        return proc.wait()


def _children(server_pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(server_pid).children()
    except psutil.NoSuchProcess:
        return []


def stub_pids(server_pid: int) -> dict[str, set[int]]:
    """Model name -> pids of its live (not zombie) Python backend stubs under `server_pid`."""
    found: dict[str, set[int]] = {}
    for model, pid, _ in stubs(server_pid):
        found.setdefault(model, set()).add(pid)
    return found


def stubs(server_pid: int) -> list[tuple[str, int, str]]:
    """(model, pid, shared-memory region) of each live model-instance stub under `server_pid`.

    A stub's command line is `<stub> <repo>/<model>/<version>/model.py <shm region> <size>
    <growth> <parent pid> <backend dir> <ipc handle> <name> ...`. While a model loads, the
    backend first runs a stub named after the model itself (it checks the config) that exits by
    itself (seen here); only the instances' stubs (`<model>_<group>_<index>`) are counted."""
    found = []
    for p in _children(server_pid):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            argv = p.cmdline()
        except psutil.Error:  # gone meanwhile
            continue
        if len(argv) < 3 or not argv[0].endswith(STUB):
            continue
        model = Path(argv[1]).parent.parent.name
        if len(argv) > 8 and argv[8] == model:
            continue  # the model's config-checking stub, not an instance
        found.append((model, p.pid, argv[2]))
    return found


def exit_signal(pid: int) -> int:
    """The signal that ended the zombie `pid` (0: it exited by itself). psutil gives no exit code
    of a process that is not our child (the stubs are tritonserver's): read it from field 52 of
    /proc/<pid>/stat, the wait status a zombie keeps for its parent (proc(5))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 onwards
    return int(fields[49]) & 0x7F if len(fields) > 49 else 0


def killed_stubs(server_pid: int) -> list[int]:
    """Stubs under `server_pid` that died of a signal and are not reaped yet. A stub that ends
    by itself exits 0 and is reaped; one killed while its model loads stays such a zombie while
    the load waits for it for ever (seen here)."""
    found = []
    for p in _children(server_pid):
        try:
            # a zombie's cmdline is empty: its name is the stub's, cut to 15 characters
            if p.status() == psutil.STATUS_ZOMBIE and STUB.startswith(p.name()):
                if exit_signal(p.pid):
                    found.append(p.pid)
        except psutil.Error:
            continue
    return found


def alive(pid: int) -> bool:
    """Not gone and not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def shm_regions(shm: str | Path = "/dev/shm") -> set[str]:
    """Names of the Python backend's shared-memory regions in `shm`."""
    return {p.name for p in Path(shm).glob(REGION + "*")}


def mapped_paths(procs: Iterable[psutil.Process], contains: str = REGION) -> set[str]:
    """The files, with `contains` in their path, that `procs` map ("(deleted)" dropped)."""
    paths = set()
    for p in procs:
        try:
            maps = p.memory_maps(grouped=True)
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to read
            continue
        paths.update(m.path.split(" (deleted)")[0] for m in maps if contains in m.path)
    return paths


def mapped_regions() -> set[str]:
    """Regions some live process has mapped (any server's, not only ours)."""
    return {Path(p).name for p in mapped_paths(psutil.process_iter())}


def remove_orphans(
    baseline: set[str], shm: str | Path = "/dev/shm", ours: set[str] | None = None
) -> list[str]:
    """Remove the regions made since `baseline` that no live process maps any more (what a
    killed or timed-out server leaves behind); a region made within the last 2 s is left
    alone (a starting server may not have mapped it yet). `ours`: only these regions, of a
    server that has exited, each removed however new (no stub of it can still map one)."""
    candidates = shm_regions(shm) - baseline
    if ours is not None:
        candidates &= ours
    if not candidates:
        return []
    removed, mapped = [], mapped_regions()
    for name in sorted(candidates - mapped):
        path = Path(shm) / name
        try:
            if ours is None and time.time() - path.stat().st_mtime < 2.0:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed


def remove_left_by_exited(
    baseline: set[str], ours: set[str], timeout: float = 10.0, shm: str | Path = "/dev/shm"
) -> list[str]:
    """After a server has exited: wait (at most `timeout` s) until no process maps its regions
    any more (its stubs may outlive it by a moment), then remove those it left, however new."""
    poll_until(lambda: not (ours & shm_regions(shm) & mapped_regions()), timeout, 0.1)
    return remove_orphans(baseline, shm, ours=ours)
