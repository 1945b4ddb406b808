"""free_port hands out ports that no outgoing connection can take between the pick and the bind."""

from __future__ import annotations

import socket

from kairosd.backends.process import PORT_FLOOR, _ephemeral_low, free_port


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    low = _ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    for port in ports:
        assert PORT_FLOOR <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))

