"""What the supervisor and the tests read of a tritonserver's processes, from /proc: its Python
backend stubs (model, pid, shared-memory region) and the shared-memory regions in /dev/shm that
nothing maps any more (what a killed stub or server leaves behind)."""

from __future__ import annotations

import time
from pathlib import Path

STUB = "triton_python_backend_stub"


def stub_pids(server_pid: int, proc: str | Path = "/proc") -> dict[str, set[int]]:
    """Model name -> pids of its live (not zombie) Python backend stubs under `server_pid`."""
    found: dict[str, set[int]] = {}
    for model, pid, _ in stubs(server_pid, proc):
        found.setdefault(model, set()).add(pid)
    return found


def stubs(server_pid: int, proc: str | Path = "/proc") -> list[tuple[str, int, str]]:
    """(model, pid, shared-memory region) of each live model-instance stub under `server_pid`.

    A stub's command line is `<stub> <repo>/<model>/<version>/model.py <shm region> <size>
    <growth> <parent pid> <backend dir> <ipc handle> <name> ...`. While a model loads, the
    backend first runs a stub named after the model itself (it checks the config) that exits by
    itself (seen here); only the instances' stubs (`<model>_<group>_<index>`) are counted."""
    found = []
    for entry in Path(proc).iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        # stat: "pid (comm) state ppid ..." (comm may hold spaces: split after the last ')')
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) != server_pid or state == "Z" or len(argv) < 3:
            continue
        if not argv[0].decode(errors="replace").endswith(STUB):
            continue
        model = Path(argv[1].decode(errors="replace")).parent.parent.name
        if len(argv) > 8 and argv[8].decode(errors="replace") == model:
            continue  # the model's config-checking stub, not an instance
        found.append((model, int(entry.name), argv[2].decode(errors="replace")))
    return found


def killed_stubs(server_pid: int, proc: str | Path = "/proc") -> list[int]:
    """Stubs under `server_pid` that died of a signal and are not reaped yet: zombies whose exit
    code (field 52 of /proc/<pid>/stat) names a signal. A stub that ends by itself exits 0 and is
    reaped; one killed while its model loads stays such a zombie while the load waits for it
    for ever (seen here)."""
    found = []
    for entry in Path(proc).iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        signalled = len(fields) > 49 and int(fields[49]) & 0x7F
        # a zombie's cmdline is empty: its name (comm) is the stub's, cut to 15 characters
        comm = (entry / "comm").read_text().strip() if not argv0 else ""
        is_stub = argv0.decode(errors="replace").endswith(STUB) or STUB.startswith(comm or "-")
        if ppid == server_pid and state == "Z" and signalled and is_stub:
            found.append(int(entry.name))
    return found


REGION = "triton_python_backend_shm_region_"


def shm_regions(shm: str | Path = "/dev/shm") -> set[str]:
    """Names of the Python backend's shared-memory regions in `shm`."""
    return {p.name for p in Path(shm).glob(REGION + "*")}


def mapped_regions(proc: str | Path = "/proc") -> set[str]:
    """Regions some live process has mapped (any server's, not only ours)."""
    mapped = set()
    for maps in Path(proc).glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for line in text.splitlines():
            if REGION in line:
                mapped.add(line.rsplit("/", 1)[-1].split(" ")[0])
    return mapped


def remove_orphans(
    baseline: set[str], shm: str | Path = "/dev/shm", proc: str | Path = "/proc"
) -> list[str]:
    """Remove the regions made since `baseline` that no live process maps any more (what a
    killed or timed-out server leaves behind); a region made within the last 2 s is left
    alone (a starting server may not have mapped it yet)."""
    candidates = shm_regions(shm) - baseline
    if not candidates:
        return []
    removed, mapped = [], mapped_regions(proc)
    for name in sorted(candidates - mapped):
        path = Path(shm) / name
        try:
            if time.time() - path.stat().st_mtime < 2.0:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed


def alive(pid: int) -> bool:
    """Not gone and not a zombie."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
