"""In-flight accounting for an instance server: count accepted queries, refuse new ones once draining,
and let shutdown wait until the accepted ones are answered and the refusals have settled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

# after the accepted queries are answered, the server keeps refusing until no query came for QUIET_S:
# a request whose bytes were still arriving when the drain ended is answered UNAVAILABLE (retryable)
# rather than cancelled by the server's stop (CANCELLED)
QUIET_S = 0.1


class Draining:
    """`ready` is False once `start_draining()` ran; `in_flight` counts the queries inside `accepted()`."""

    def __init__(self) -> None:
        self.ready = True
        self.in_flight = 0
        self._last_seen_s = -float("inf")  # time.monotonic() when a query last entered or left accepted()
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def accepted(self) -> Iterator[None]:
        """Count one query for the duration of the block."""
        self.in_flight += 1
        self._last_seen_s = time.monotonic()
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            self._last_seen_s = time.monotonic()
            if self.in_flight == 0:
                self._idle.set()

    def start_draining(self) -> None:
        """Refuse new queries (UNAVAILABLE, so a client tries another instance); report not ready."""
        self.ready = False

    async def drained(self, timeout_s: float, quiet_s: float = QUIET_S) -> bool:
        """Wait up to `timeout_s` until no query is in flight and none came or left for `quiet_s`; True if so.

        The quiet period starts when the last query is answered: calls the server had received but the
        loop had not yet taken up while it was busy are then refused rather than cancelled by the stop."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self._idle.is_set():
                try:
                    await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    return False
            now = time.monotonic()
            quiet_until = self._last_seen_s + quiet_s
            if now >= quiet_until:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(quiet_until, deadline) - now)
