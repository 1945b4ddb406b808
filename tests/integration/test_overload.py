"""Admission control under overload, end to end: a small emulated fleet behind `kairosd serve` (admission =
"qos") sent an open-loop Poisson load at ~3× its capacity (bench/openloop.py's load generator, in its
own process): every query gets an answer or an explicit refusal (RESOURCE_EXHAUSTED) — none lost, none
wrong, no other error — and the admitted queries keep their p99 within QoS (with the allowance below).
The full drill, with the capacity measured live and the baseline without admission, is bench/overload.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon_harness import REPO

sys.path.insert(0, str(REPO / "bench"))

import openloop  # noqa: E402  (bench/openloop.py)

pytestmark = pytest.mark.alone  # latencies and deadlines under load: see tests/conftest.py

FLEET = {"g4dn.xlarge": 1, "r5n.large": 2}
MULTIPLE = 3.0
DURATION_S = 8.0
QOS_MS = 350.0  # the authors' rm2 target
# Admitted p99, from each query's send, may exceed QoS by 10% (35 ms) plus the path's round trip measured in
# the same run (a refused query's, from its send: the client's way to kairosd and back, the head's parsing
# and reply, under the same load). Admission judges a query from kairosd's arrival stamp by the profile
# (queue ahead, the instances' expected finish times, its own service) and a measured lag; the client also
# sees the path, which is the host's: a few ms on this machine, tens on a slowed CI VM. The 10% covers the
# hop to the instance and back (p99 10-17 ms on this machine's 2 shared cores) and the noise of a p99 over
# the few hundred queries admitted here. The load generator's own lateness is left out by measuring from
# the send (bench/openloop.py's `admitted_sent_p99_ms`).
P99_TOLERANCE = 1.10


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openloop.Daemon]:
    d = openloop.Daemon(tmp_path_factory.mktemp("overload"), "dlrm", "rm2", QOS_MS, FLEET, "kairos", {},
                        scheduler_extra='admission = "qos"', name="overload")
    yield d
    d.stop()


def capacity_qps() -> float:
    """The simulator's max QPS for the fleet (Kairos policy, the authors' batch mix): the fleet's capacity
    without a live bisection; live figures on this machine are at or below it, so 3× it overloads."""
    from kairosd import workload
    from kairosd.sim import evaluate_config

    wl = workload.load_kairos()
    setup = replace(workload.sim_setup(wl, "rm2", n_queries=1000, seed=0), policy="kairos",
                    policy_params={"margin_s": 0.001})
    return float(evaluate_config(setup, [FLEET.get(t, 0) for t in wl.types], None).qps)


def test_overload_answers_or_refuses_and_keeps_qos(daemon: openloop.Daemon, tmp_path: Path) -> None:
    from kairosd import workload

    cap = capacity_qps()
    rate = MULTIPLE * cap
    n = round(rate * DURATION_S)
    stream = workload.sim_setup(workload.load_kairos(), "rm2", n_queries=n, seed=7).stream
    r: dict[str, Any] = openloop.run_loadgen({
        "url": daemon.url, "model": "dlrm", "batches": stream.batches.tolist(), "gaps": stream.gaps.tolist(),
        "rate_qps": rate, "timeout_s": 10 * QOS_MS / 1e3, "outcomes": True, "qos_s": QOS_MS / 1e3, "grace_s": 1.0,
    })
    o = r["outcomes"]
    summary = {k: o[k] for k in ("sent", "by_outcome", "ok_within_qos", "ok_late", "admitted_p50_ms", "admitted_p99_ms",
                                 "admitted_sent_p99_ms", "refused_sent_p50_ms", "error_p50_ms", "goodput_qps")}
    summary.update(capacity_qps=cap, rate_qps=rate, sent_qps=r["sent_qps"], send_late_p99_ms=r["send_late_p99_ms"])
    print(summary)  # shown when an assertion fails
    assert o["sent"] == n
    assert o["lost"] == 0 and o["wrong"] == 0, summary
    assert set(o["by_outcome"]) <= {"OK", "RESOURCE_EXHAUSTED"}, summary
    assert o["refused"] > 0 and o["ok"] > 0, summary  # it was overload, and the fleet still served
    assert o["admitted_sent_p99_ms"] <= QOS_MS * P99_TOLERANCE + o["refused_sent_p50_ms"], summary
