"""In-flight accounting for an instance server: count accepted queries, refuse new ones once draining,
and let shutdown wait until the accepted ones are answered."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class Draining:
    """`ready` is False once `start_draining()` ran; `in_flight` counts the queries inside `accepted()`."""

    def __init__(self) -> None:
        self.ready = True
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def accepted(self) -> Iterator[None]:
        """Count one query for the duration of the block."""
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    def start_draining(self) -> None:
        """Refuse new queries (UNAVAILABLE, so a client tries another instance); report not ready."""
        self.ready = False

    async def drained(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the accepted queries to finish; True if none is left."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
