"""free_port hands out ports that no outgoing connection can take between the pick and the bind."""

from __future__ import annotations

import socket

import pytest

from kairosd.backends import process
from kairosd.backends.process import PORT_FLOOR, _ephemeral_low, free_port, reserve_ports


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    low = _ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    for port in ports:
        assert PORT_FLOOR <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))



def test_reserved_ports_are_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # every port of the range reserved but three: only those three, or the kernel's own choice in
    # the ephemeral range, come back (unreserved, nearly every pick would be a port of the range)
    monkeypatch.setattr(process, "_handed_out", set())
    low = _ephemeral_low()
    left = [p for p in range(PORT_FLOOR, low) if process._bindable("127.0.0.1", p)][:3]
    assert len(left) == 3
    reserve_ports(p for p in range(PORT_FLOOR, low) if p not in left)
    got = [free_port() for _ in range(20)]
    assert len(set(got)) == 20
    assert all(p in left or p >= low for p in got), got
