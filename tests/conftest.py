"""The suite runs its test files on several processes (pytest-xdist; `-n auto --dist loadfile` in
pyproject.toml's addopts: one process per core, at most `MAX_WORKERS`; `-n 0` runs it in this process).

A test marked `alone` (e.g. a file's `pytestmark = pytest.mark.alone`) runs with no other test beside it:
its assertions hold latencies or deadlines under load, which a daemon, a Triton or a simulation started
by another process on the same cores would stretch. The other tests run side by side. Each test, with
the setup and teardown of the fixtures it starts or ends, holds a lock shared between the processes:
shared, or exclusive for an `alone` test. A test that waits for the exclusive lock holds a gate that
keeps new holders out, so it waits only for the tests already running.

`--dist loadfile` hands the files out in the order of the collection, which `pytest_collection_modifyitems`
sets: the longest files first (`LONGEST_FILES`), so that the short ones even out the processes' ends; then
the files with an `alone` test, those with other tests too before those without, so that the suite's
serial part runs last, after the files that run side by side, and an `alone` test rarely waits for a long
test of another process to end."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Generator
from pathlib import Path

import pytest

# each process may run a daemon with its fleet (and a Triton): more processes than cores only contend
MAX_WORKERS = 4

# the files that take longest (without an `alone` test), longest first, as `--durations` shows them on 2 cores;
# the files of a few seconds at the end of the list, so that the processes finish their side-by-side part together
LONGEST_FILES = (
    "integration/test_autoscale_ec2.py",
    "integration/test_serve.py",
    "unit/test_planner.py",
    "unit/test_joint.py",
    "unit/test_sim.py",
    "unit/test_simkernel.py",
    "unit/test_refine.py",
    "integration/test_autoscale_refine.py",
    "integration/test_backend_stream.py",
    "integration/test_access.py",
    "integration/test_autoscale_local.py",
    "integration/test_ec2_provider.py",
    "unit/test_pruning.py",
    "integration/test_http_forward.py",
    "unit/test_target.py",
    "integration/test_hostile_http.py",
    "unit/test_simkernel_mix.py",
    "integration/test_metrics.py",
    "integration/test_limits.py",
    "integration/test_scheduler.py",
    "integration/test_fleet.py",
    "unit/test_decide.py",
    "integration/test_triton_local.py",
    "integration/test_hostile_grpc.py",
    "integration/test_grpc_over_http.py",
    "integration/test_http_lean.py",
    "unit/test_synth.py",
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


class FileLock:
    """A readers-writer lock between processes on the files `<directory>/gate` and `<directory>/rw`:
    `hold(exclusive)` takes `flock` on `rw`, shared or exclusive, after passing `gate`, which a writer
    holds while it waits for the readers to finish (so readers arriving then queue behind it)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._gate = os.open(directory / "gate", os.O_CREAT | os.O_RDWR, 0o600)
        self._rw = os.open(directory / "rw", os.O_CREAT | os.O_RDWR, 0o600)

    def hold(self, exclusive: bool) -> None:
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._rw, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def release(self) -> None:
        fcntl.flock(self._rw, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._gate)
        os.close(self._rw)


_RUN_LOCK = pytest.StashKey[FileLock]()


def pytest_configure(config: pytest.Config) -> None:
    # xdist would reorder the files by their number of tests; the order is the collection's (below)
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # set in the worker processes of pytest-xdist only
    if run is None:
        return
    # a worker's basetemp is <the run's basetemp>/popen-gwN, which pytest removes after a few runs
    base = config.option.basetemp
    directory = Path(base).parent if base else Path(tempfile.gettempdir()) / f"kairosd-tests-{run}"
    config.stash[_RUN_LOCK] = FileLock(directory / "run-lock")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Orders the files as the module docstring says; the tests of a file keep their order."""
    tests = Path(__file__).parent
    alone: dict[Path, set[bool]] = {}
    for item in items:
        alone.setdefault(item.path, set()).add(item.get_closest_marker("alone") is not None)
    longest = {tests / name: rank for rank, name in enumerate(LONGEST_FILES)}

    def key(item: pytest.Item) -> tuple[int, int]:
        kinds = alone[item.path]
        if True in kinds:
            return (2 if False in kinds else 3, 0)
        rank = longest.get(item.path)
        return (0, rank) if rank is not None else (1, 0)

    items.sort(key=key)  # stable: the files not ranked here, and each file's tests, keep their order


def pytest_unconfigure(config: pytest.Config) -> None:
    lock = config.stash.get(_RUN_LOCK, None)
    if lock is not None:
        lock.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    lock = item.config.stash.get(_RUN_LOCK, None)
    if lock is None:
        return (yield)
    lock.hold(exclusive=item.get_closest_marker("alone") is not None)
    try:
        return (yield)
    finally:
        lock.release()
