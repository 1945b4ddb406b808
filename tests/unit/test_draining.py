"""Draining: shutdown waits for the accepted queries and then for the refusals to settle."""

from __future__ import annotations

import asyncio
import time

from kairosd.backends.draining import Draining


async def test_drained_waits_for_the_queries_in_flight_then_for_a_quiet_period() -> None:
    d = Draining()
    release = asyncio.Event()

    async def query() -> None:
        with d.accepted():
            await release.wait()

    running = asyncio.ensure_future(query())
    await asyncio.sleep(0)
    assert d.in_flight == 1
    d.start_draining()
    assert not d.ready
    assert not await d.drained(0.05, quiet_s=0.01)  # still in flight at the timeout
    release.set()
    await running
    started = time.monotonic()
    assert await d.drained(5.0, quiet_s=0.2)
    assert time.monotonic() - started >= 0.19  # the quiet period runs from the last answer


async def test_a_refusal_during_the_quiet_period_extends_it() -> None:
    d = Draining()
    d.start_draining()

    async def refused_later() -> None:
        await asyncio.sleep(0.15)
        with d.accepted():  # a request still arriving after the drain: refused at once
            pass

    started = time.monotonic()
    with d.accepted():  # the last accepted query
        pass
    late = asyncio.ensure_future(refused_later())
    assert await d.drained(5.0, quiet_s=0.3)
    await late
    assert time.monotonic() - started >= 0.15 + 0.25


async def test_drained_is_immediate_when_nothing_came_and_false_if_quiet_outlasts_the_timeout() -> None:
    d = Draining()
    started = time.monotonic()
    assert await d.drained(1.0, quiet_s=0.5)
    assert time.monotonic() - started < 0.4
    with d.accepted():
        pass
    assert not await d.drained(0.05, quiet_s=10.0)
