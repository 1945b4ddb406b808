"""`kairosd.heap.settle`: start-up's objects leave the collector's way, and a later settle reclaims
cycles that were frozen and have since become garbage."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from kairosd import heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.fixture
def _no_automatic_collection() -> Iterator[None]:
    """The collector runs only when asked (`settle` asks), not when an allocation crosses a threshold."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@pytest.mark.usefixtures("_no_automatic_collection")
def test_settle_frees_garbage_and_freezes_what_survives() -> None:
    garbage = weakref.ref(_Node())  # unreachable at once, kept alive by its own cycle
    kept = _Node()
    assert garbage() is not None
    took = heap.settle("test")
    assert garbage() is None
    assert took >= 0.0
    assert gc.get_freeze_count() > 0
    assert gc.get_count()[2] == 0 and not any(o is kept for o in gc.get_objects(2))  # frozen, not in generation 2


@pytest.mark.usefixtures("_no_automatic_collection")
def test_a_second_settle_reclaims_cycles_frozen_by_the_first() -> None:
    node = _Node()
    ref = weakref.ref(node)
    heap.settle("start-up")
    del node
    gc.collect()
    assert ref() is not None, "a full collection does not traverse the frozen objects"
    heap.settle("reload")
    assert ref() is None
