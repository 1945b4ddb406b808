"""A short chaos drill (bench/chaos.py) on a small emulated fleet: instance processes SIGSTOPped and
SIGKILLed under a checked tritonclient load lose no query and return no wrong answer, a query held by a
frozen instance is abandoned and answered elsewhere instead of waiting out the freeze, the frozen
instance serves again after SIGCONT, and a killed one is replaced."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.daemon_harness import REPO

sys.path.insert(0, str(REPO / "bench"))

import chaos  # noqa: E402  (bench/chaos.py)

pytestmark = pytest.mark.alone  # latencies and deadlines under load: see tests/conftest.py

FLEET = {"g4dn.xlarge": 1, "r5n.large": 3}
# rm2 at these batches: p99 ≤ 23 ms on every type of the fleet, so the backend deadline (a multiple of the
# type's p99, at least backend_timeout_min_ms) is far shorter than the freeze
BATCHES = (10, 20, 50)
STOP_S = 2.5
DURATION_S = 12.0
DEADLINE_S = 2.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    d = chaos.start_emulated(tmp_path_factory.mktemp("chaos"), FLEET)
    yield d
    d.stop()


def test_stop_and_kill_lose_nothing(daemon: Any) -> None:
    exp = chaos.Expected("dlrm", BATCHES, real=False)
    # seed 3: a stop at 1.7 s (SIGCONT 2.5 s later), a kill ~2 s after the thawed instance serves again
    # (~6.5 s), and the 3 s the drill leaves an action to be seen (bench/chaos.py's SETTLE_S), with a second
    # to spare for a slow poll
    res = chaos.drill(daemon, exp, BATCHES, calm_s=0, duration_s=10.5, concurrency=4, rate_qps=0,
                      deadline_s=DEADLINE_S, grace_s=1.0, actions=("stop", "kill"), interval_s=2.0, stop_s=STOP_S,
                      seed=3, max_events=2)
    chaos.print_table(res)  # shown when an assertion fails
    s = res.chaos
    events = [(e.action, e.instance, e.recovered_s, e.note) for e in res.events]
    assert not res.chaos_errors, res.chaos_errors
    assert [e.action for e in res.events] == ["stop", "kill"], events
    assert s["sent"] > 100, s
    assert s["lost"] == 0 and s["wrong"] == 0, (s, events)
    # every query ended (answer or explicit error) well before the freeze was over: the frozen instance's
    # query was abandoned at its backend deadline and retried, not held until SIGCONT or the deadline
    longest_ms = max(v for v in (s["max_ms"], s["error_max_ms"]) if v is not None)
    assert longest_ms < STOP_S * 1e3 * 0.8, (s, events)
    for e in res.events:
        if e.action == "stop":
            assert e.recovered_s is not None, f"{e.instance} was not sent a query again after SIGCONT: {events}"
        else:
            assert e.recovered_s is not None, f"{e.instance} was not replaced: {events}"
    # and the fleet is whole again (a replacement may still be starting, a thawed instance being probed)
    deadline = time.monotonic() + 15
    while len(chaos.ready_instances(daemon)) < sum(FLEET.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    states = [(i["id"], i["state"]) for i in chaos.fleet_instances(daemon)]
    assert len(chaos.ready_instances(daemon)) == sum(FLEET.values()), states


def test_stop_real_worker_serves_again(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same freeze on real ONNX Runtime workers (ort-1t, QoS 25 ms: the hop and the services are
    milliseconds, so one frozen query is a large disturbance to the head's estimates): nothing lost or
    wrong, answers compared with ONNX Runtime run here, the thawed worker is sent queries again, and the
    fleet keeps answering after the freeze as before it."""
    d = chaos.start_real(tmp_path_factory.mktemp("chaos-real"), 3)
    try:
        exp = chaos.Expected("dlrm", chaos.REAL_BATCHES, real=True)
        res = chaos.drill(d, exp, chaos.REAL_BATCHES, calm_s=0, duration_s=DURATION_S, concurrency=3, rate_qps=0,
                          deadline_s=DEADLINE_S, grace_s=1.0, actions=("stop",), interval_s=3.0, stop_s=STOP_S,
                          seed=5, max_events=1)
    finally:
        d.stop()
    chaos.print_table(res)
    s = res.chaos
    events = [(e.action, e.instance, e.recovered_s, e.note) for e in res.events]
    assert len(res.events) == 1 and not res.chaos_errors, (events, res.chaos_errors)
    assert s["lost"] == 0 and s["wrong"] == 0, (s, events)
    assert res.events[0].recovered_s is not None, f"the thawed worker was not sent a query again: {events}"
    # correct answers in the first window (before the freeze) and in the last (after it), by send time
    # per second: the last window is shorter when the run does not end on a window's edge
    (_, first, _), (t_last, last, _) = s["timeline"][0], s["timeline"][-1]
    span_last = min(chaos.TIMELINE_S, DURATION_S - t_last)
    before, after = first / chaos.TIMELINE_S, last / span_last
    assert after >= 0.5 * before, f"answers per second fell from {before:.0f} to {after:.0f}: {s}"
