"""How long the event loop spends in one component's code: wall time summed over its callbacks.

A span is one `perf_counter` pair (about 0.1 µs), cheap enough for every query; the spans are short
(microseconds), so on a loaded machine they are rarely preempted and their wall time is about their CPU
time. Spans must not nest (the caller of a measured step does not measure it again)."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any


class BusyMeter:
    """Seconds of event-loop time spent in a component: `t0 = meter.start()` … `meter.stop(t0)`, or a
    callback wrapped whole with `timed`."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0

    @staticmethod
    def start() -> float:
        return perf_counter()

    def stop(self, t0: float) -> None:
        self.seconds += perf_counter() - t0

    def timed(self, step: Callable[..., None]) -> Callable[..., None]:
        """`step`, counted whole (also when it raises): for a step the event loop calls back."""

        def run(*args: Any) -> None:
            t0 = perf_counter()
            try:
                step(*args)
            finally:
                self.seconds += perf_counter() - t0

        return run
