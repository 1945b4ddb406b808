"""Garbage collection for a serving process: what start-up built is moved out of the collector's way.

CPython's full (generation 2) collection traverses every object the collector tracks. A serving process
that imported numpy, scipy, grpc and aiohttp and built its fleet holds a few hundred thousand of them,
and one full collection then holds the event loop for tens of milliseconds: every query in flight waits
that long, and a p99 measured over a few thousand queries moves with it. `settle()` collects once and
freezes what survives (`gc.freeze`: the permanent generation, which collections do not traverse), so the
collections that serving itself triggers traverse only what serving allocated.

Frozen objects are still freed by reference counting; only cyclic garbage among them would be kept, so
`settle()` unfreezes before it collects: called again after a reload, it reclaims the cycles the reload
let go of and freezes the new state.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def settle(what: str) -> float:
    """Collect everything, then freeze the survivors; returns the seconds it took (the event loop is
    held that long, once). `what` names the moment in the log line (e.g. "start-up", "reload")."""
    t0 = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    took = time.perf_counter() - t0
    log.info("heap settled after %s: %d objects frozen out of garbage collection in %.1f ms",
             what, gc.get_freeze_count(), took * 1e3)
    return took


__all__ = ["settle"]
