"""sd_notify over a real AF_UNIX datagram socket (path and abstract), watchdog period and ownership."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kairosd.notify import Notifier, monotonic_usec, socket_address, watchdog_interval_s


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_messages_arrive_as_newline_separated_datagrams(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    n = Notifier(path)
    assert n.ready("serving") and sock.recv(4096) == b"READY=1\nSTATUS=serving"
    before = monotonic_usec()
    assert n.reloading()
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].split("=")[1]) <= monotonic_usec()
    assert n.stopping() and sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    assert n.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
    n.close()


def test_abstract_socket() -> None:
    name = f"kairosd-test-{os.getpid()}-{time.monotonic_ns()}"
    assert socket_address("@" + name) == b"\0" + name.encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert Notifier("@" + name).ready() and sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled and n.watchdog_s is None and not n.ready() and not n.stopping()


def test_a_gone_receiver_does_not_raise(tmp_path: Path) -> None:
    assert not Notifier(str(tmp_path / "nobody")).ready()


def test_watchdog_interval_is_half_the_timeout_for_our_pid_only() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000"}, 42) == 0.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "42"}, 42) == 0.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "43"}, 42) is None
    assert watchdog_interval_s({}, 42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "x"}, 42) is None


def test_from_environ_takes_the_variables_away_from_children(receiver: tuple[str, socket.socket]) -> None:
    env = {"NOTIFY_SOCKET": receiver[0], "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    n = Notifier.from_environ(env)
    assert n.enabled and n.watchdog_s == 0.1 and env == {"PATH": "/bin"}


def test_watchdog_loop_pings_every_half_period(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    n = Notifier(path, watchdog_s=0.05)

    async def run() -> None:
        task = asyncio.ensure_future(n.watchdog_loop())
        await asyncio.sleep(0.32)
        task.cancel()

    asyncio.run(run())
    sock.settimeout(0.1)
    pings = []
    try:
        while True:
            pings.append(sock.recv(100))
    except TimeoutError:
        pass
    assert set(pings) == {b"WATCHDOG=1"} and 5 <= len(pings) <= 8, pings
