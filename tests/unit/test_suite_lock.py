"""The lock that lets an `alone` test run with no other beside it (tests/conftest.py): shared holders
run together, an exclusive one waits for them, and a holder arriving while it waits queues behind it.
`flock` locks belong to open files, so separate `FileLock`s conflict within one process too."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.conftest import FileLock


def test_an_exclusive_holder_waits_for_the_shared_ones_and_the_later_ones_wait_for_it(tmp_path: Path) -> None:
    events: list[str] = []
    first, second, alone, later = (FileLock(tmp_path) for _ in range(4))
    first.hold(exclusive=False)
    second.hold(exclusive=False)  # shared holders run together

    def take(lock: FileLock, exclusive: bool, name: str) -> None:
        lock.hold(exclusive)
        events.append(name)
        time.sleep(0.2)
        events.append(name + " done")
        lock.release()

    t_alone = threading.Thread(target=take, args=(alone, True, "alone"))
    t_alone.start()
    time.sleep(0.3)
    t_later = threading.Thread(target=take, args=(later, False, "later"))
    t_later.start()
    time.sleep(0.3)
    assert events == []  # the exclusive holder waits for both shared ones; the later one waits behind it
    first.release()
    time.sleep(0.2)
    assert events == []
    second.release()
    t_alone.join(5)
    t_later.join(5)
    assert events == ["alone", "alone done", "later", "later done"]
    for lock in (first, second, alone, later):
        lock.close()
