"""The native open-loop load generator (bench/native/openloop.c through bench/native_loadgen.py) against a
real emulated instance over KServe v2 REST: every query answered with HTTP 200 by the instance's type,
each query's times in order (scheduled ≤ sent ≤ the instance's arrival ≤ its service end ≤ received, one
monotonic clock on this machine), and the result dict of bench/openloop.py's Python generator."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kairosd.backends.process import ChildProcess, free_port, wait_ready_sync
from tests.integration.daemon_harness import REPO

sys.path.insert(0, str(REPO / "bench"))

import native_loadgen  # noqa: E402  (bench/native_loadgen.py)
import openloop  # noqa: E402  (bench/openloop.py)

TYPE = "r5n.large"
QUERIES = 50


@pytest.fixture(scope="module")
def generator() -> None:
    if native_loadgen.compiler() is None:
        pytest.skip("no C compiler (cc, gcc or $CC) to build bench/native/openloop.c")
    native_loadgen.binary()


@pytest.fixture(scope="module")
def instance() -> Iterator[tuple[str, str]]:
    """One `kairosd emulated` instance: (gRPC address, HTTP address)."""
    g, h = free_port(), free_port()
    child = ChildProcess([sys.executable, "-m", "kairosd", "emulated", "--model-repository", str(REPO / "model_repository"),
                          "--emulate", TYPE, "--models", "ncf=ncf", "--port", str(g), "--http-port", str(h),
                          "--seed", "1"], name="emulated").start()
    try:
        wait_ready_sync(f"127.0.0.1:{g}", 30, child)
        yield f"127.0.0.1:{g}", f"127.0.0.1:{h}"
    finally:
        assert child.stop(10) == 0, child.log_tail()


def test_every_query_answered_in_order(generator: None, instance: tuple[str, str], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dump = tmp_path / "dump.npz"
    spec = {"url": instance[0], "http_url": instance[1], "protocol": "http", "generator": "native", "model": "ncf",
            "batches": rng.choice([1, 50, 200], QUERIES).tolist(), "gaps": rng.exponential(1.0, QUERIES).tolist(),
            "rate_qps": 200.0, "timeout_s": 5.0, "dump": dump}
    r = openloop.run_loadgen(spec)
    assert r["generator"] == "native"
    assert r["n"] == QUERIES and r["errors"] == 0 and r["errors_by_kind"] == {}
    assert r["served_by"] == {TYPE: QUERIES - int(QUERIES * openloop.WARMUP_FRACTION)}
    assert 0 < r["p50_ms"] <= r["p99_ms"] < 5000
    assert r["service_mean_ms"] > 0 and r["loadgen_cpu"] >= 0 and r["sent_qps"] > 0
    d = np.load(dump)
    assert list(d["served_by"]) == [TYPE] * QUERIES
    assert np.all(d["latency"] > 0) and np.all(d["service"] > 0)
    assert np.all(d["arrivals"] <= d["sent"])
    assert np.all(d["sent"] <= d["arrived"])
    assert np.all(d["arrived"] <= d["ended"])
    assert np.all(d["ended"] <= d["received"])
    # the latency runs from the scheduled arrival to the whole answer: at least the service drawn
    assert np.all(d["latency"] >= d["service"])


def test_errors_are_counted_per_query(generator: None, instance: tuple[str, str]) -> None:
    """A refusal (HTTP 400: batch 2048 over ncf's max_batch_size 1024) and an answer later than the timeout
    are each one query's error; the other queries are answered."""
    batches = [1, 2048] * 10
    spec = {"url": instance[0], "http_url": instance[1], "protocol": "http", "generator": "native", "model": "ncf",
            "batches": batches, "gaps": [1.0] * len(batches), "rate_qps": 200.0, "timeout_s": 5.0}
    r = openloop.run_loadgen(spec)
    assert r["errors"] == 10 and r["errors_by_kind"] == {"status": 10}
    assert sum(r["served_by"].values()) == 9  # the answered ones after the warm-up (the first two queries)
    late = {**spec, "batches": [1000] * 10, "gaps": [1.0] * 10, "timeout_s": 1e-4}
    r = openloop.run_loadgen(late)
    assert r["errors"] == 10 and r["errors_by_kind"] == {"timeout": 10}


def test_no_target_fails_the_warm_up_not_the_program(generator: None, instance: tuple[str, str]) -> None:
    """A port nobody listens on: the warm-up query (one request before the schedule) is refused, and the
    generator says so and exits 3."""
    spec = {"url": instance[0], "http_url": f"127.0.0.1:{free_port()}", "protocol": "http", "generator": "native",
            "model": "ncf", "batches": [1, 1], "gaps": [1.0, 1.0], "rate_qps": 100.0, "timeout_s": 1.0}
    with pytest.raises(RuntimeError, match="warm-up query failed: error 1"):
        openloop.run_loadgen(spec)


def test_against_the_native_noop_target(generator: None) -> None:
    """bench/native/noop.c, the target of the generators' own ceiling: 1,000 queries at 5,000 q/s, each
    answered at once with the emulated parameters of type "noop"."""
    rows = native_loadgen.native_ceiling([5000.0], 1000, ["native"])
    assert len(rows) == 1
    r = rows[0]
    assert r["errors"] == 0 and r["served_by"] == {"noop": 900}
    assert r["service_mean_ms"] == 0 and 0 < r["p50_ms"] <= r["p99_ms"] < 1000
