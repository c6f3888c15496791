"""Cancellations of ensemble requests, from `postprocessing` to the `dlm` instance that runs them.

Triton 2.51 shows a client's cancellation of an ensemble request only to the steps scheduled
after it (core PR #263: the ensemble marks the next step's request), i.e. to `postprocessing`,
never to `dlm`, whose request is already running. So postprocessing sends the request's key to
its `dlm` instance: one datagram on a Linux abstract Unix socket named after the instance's
process (no file, nothing to clean up, gone with the process), which the scheduler thread drains
before every pass. A key is `pid << 32 | sequence id`: it names both the instance and the
sequence, so any postprocessing instance reaches the right `dlm` instance, and a key of a
process that is gone is dropped. The same inbox takes a shutdown notice (`shutdown`, sent by
`model_repository.serve` right before it stops the server): streams end with an error at once
(a stopping Triton 2.51 no longer delivers their next responses), one-answer requests may still
finish during the grace it names, then the instance ends what is left with an error, so that
every client has its answer before Triton's exit timeout cuts the server off.
"""

from __future__ import annotations

import os
import socket
import struct
import time

MESSAGE = struct.Struct("<Bq")  # (CANCEL, key) or (SHUTDOWN, grace in milliseconds)
CANCEL, SHUTDOWN = 0, 1


def address(pid: int) -> bytes:
    return f"\0dlm-triton-cancel-{pid}".encode()


def key(seq_id: int, pid: int | None = None) -> int:
    """The key of sequence `seq_id` of the instance `pid` (this process by default)."""
    return ((os.getpid() if pid is None else pid) & 0x7FFFFFFF) << 32 | seq_id


def _post(messages: list[tuple[int, int, int]]) -> list[int]:
    """Send (pid, kind, value) datagrams; returns the indexes of those whose instance is gone."""
    lost = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for i, (pid, kind, value) in enumerate(messages):
            try:
                s.sendto(MESSAGE.pack(kind, value), address(pid))
            except (ConnectionRefusedError, FileNotFoundError):
                lost.append(i)
    return lost


def send(keys: list[int]) -> list[int]:
    """Send each key to its instance; returns the keys whose instance is gone."""
    return [keys[i] for i in _post([(k >> 32, CANCEL, k) for k in keys])]


def shutdown(pids: list[int], grace_s: float, wait_s: float = 5.0) -> int:
    """Tell the `dlm` instances `pids` that the server stops in `grace_s` seconds, and wait (at
    most `wait_s`) until each has ended its streams: their error responses must reach Triton
    before it stops (a stopping Triton stalls them). Returns how many acknowledged."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("")  # an abstract address of its own: where the acknowledgements come back
        s.settimeout(wait_s)
        sent = 0
        for pid in pids:
            try:
                s.sendto(MESSAGE.pack(SHUTDOWN, int(grace_s * 1000)), address(pid))
                sent += 1
            except (ConnectionRefusedError, FileNotFoundError):
                continue
        acked, deadline = 0, time.monotonic() + wait_s
        while acked < sent and time.monotonic() < deadline:
            try:
                s.recv(MESSAGE.size)
            except (TimeoutError, BlockingIOError):
                break
            acked += 1
    return acked


class Inbox:
    """The cancellations sent to this process, read without blocking; `deadline` (monotonic
    seconds) once a shutdown notice came, else None."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.deadline: float | None = None
        self.notified_by: list = []  # senders of shutdown notices not yet acknowledged
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address(self.pid))
        self.sock.setblocking(False)

    def drain(self) -> set[int]:
        """Sequence ids cancelled since the last call."""
        got = set()
        while True:
            try:
                data, sender = self.sock.recvfrom(MESSAGE.size)
            except BlockingIOError:
                return got
            kind, k = MESSAGE.unpack(data)
            if kind == SHUTDOWN:
                self.deadline = time.monotonic() + k / 1000
                if sender:
                    self.notified_by.append(sender)
            elif k >> 32 == self.pid & 0x7FFFFFFF:
                got.add(k & 0xFFFFFFFF)

    def acknowledge(self) -> None:
        """Tell the senders of shutdown notices that this instance's streams have ended."""
        for sender in self.notified_by:
            try:
                self.sock.sendto(MESSAGE.pack(SHUTDOWN, 0), sender)
            except OSError:  # that sender gave up waiting
                continue
        self.notified_by = []

    def close(self) -> None:
        self.sock.close()
