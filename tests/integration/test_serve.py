"""End to end: unchanged tritonclient programs against a real `kairosd serve` with real workers and a
real Triton behind it; outputs equal ONNX Runtime's, nothing lost under 2,000 concurrent requests,
every error a user can act on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from kairosd.modelgen import example_inputs
from tests.integration.daemon_harness import REPO, RunningDaemon, children, start_daemon, write_config

# bursts far past capacity on purpose (these tests are about losing nothing): admission against the
# deadline only, so every query is served or expires (tests/integration/test_backend_faults.py and
# test_overload.py test the default, admission "qos")
DEADLINE_ADMISSION = 'admission = "deadline"'

MODELS = ("dlrm", "ncf")
OUTPUT = {"dlrm": "click_probability", "ncf": "score"}


def reference(model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    sess = _sessions.setdefault(model, ort.InferenceSession(str(REPO / "model_repository" / model / "1" / "model.onnx")))
    return sess.run([OUTPUT[model]], inputs)[0]


_sessions: dict[str, ort.InferenceSession] = {}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """One worker and one real Triton, round robin so both serve every kind of request."""
    path = tmp_path_factory.mktemp("serve") / "kairosd.toml"
    ports = write_config(path, fleet={"ort-1t": 1, "triton": 1}, policy="round_robin", max_request_bytes=4 * 1024 * 1024)
    d = start_daemon(path, ports)
    yield d
    assert d.stop() == 0, d.child.log_tail()


def grpc_inputs(inputs: dict[str, np.ndarray], mod: object = grpcclient) -> list:
    out = []
    for name, arr in inputs.items():
        t = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))  # type: ignore[attr-defined]
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def http_inputs(inputs: dict[str, np.ndarray], binary: bool, mod: object = httpclient) -> list:
    out = []
    for name, arr in inputs.items():
        t = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))  # type: ignore[attr-defined]
        t.set_data_from_numpy(arr, binary_data=binary)
        out.append(t)
    return out


@pytest.mark.triton
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", [1, 100])
def test_grpc_sync_matches_onnxruntime_on_worker_and_triton(daemon: RunningDaemon, model: str, batch: int) -> None:
    client = grpcclient.InferenceServerClient(daemon.grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
    for seed in range(4):  # round robin over 2 instances: both serve this model and batch
        inputs = example_inputs(model, batch, seed=seed)
        result = client.infer(model, grpc_inputs(inputs), request_id=f"r{seed}")
        np.testing.assert_allclose(result.as_numpy(OUTPUT[model]), reference(model, inputs), rtol=1e-5, atol=1e-6)
        assert result.get_response().id == f"r{seed}"


@pytest.mark.triton
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("binary", [True, False])
def test_http_sync_matches_onnxruntime(daemon: RunningDaemon, model: str, binary: bool) -> None:
    client = httpclient.InferenceServerClient(daemon.http_url)
    assert client.is_server_ready() and client.is_model_ready(model)
    for seed in range(4):
        inputs = example_inputs(model, 37, seed=seed)
        outputs = [httpclient.InferRequestedOutput(OUTPUT[model], binary_data=binary)]
        result = client.infer(model, http_inputs(inputs, binary), outputs=outputs)
        np.testing.assert_allclose(result.as_numpy(OUTPUT[model]), reference(model, inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.triton
async def test_aio_clients_match_onnxruntime(daemon: RunningDaemon) -> None:
    g = grpcaio.InferenceServerClient(daemon.grpc_url)
    h = httpaio.InferenceServerClient(daemon.http_url)
    try:
        for model in MODELS:
            inputs = example_inputs(model, 64, seed=7)
            expected = reference(model, inputs)
            rg = await g.infer(model, grpc_inputs(inputs, grpcaio))
            rh = await h.infer(model, http_inputs(inputs, True, httpaio))
            np.testing.assert_allclose(rg.as_numpy(OUTPUT[model]), expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(rh.as_numpy(OUTPUT[model]), expected, rtol=1e-5, atol=1e-6)
            meta = await g.get_model_metadata(model)
            assert [i.name for i in meta.inputs] == list(inputs)
    finally:
        await g.close()
        await h.close()


@pytest.mark.triton
def test_both_backend_kinds_served_queries(daemon: RunningDaemon) -> None:
    client = grpcclient.InferenceServerClient(daemon.grpc_url)
    for seed in range(4):
        client.infer("ncf", grpc_inputs(example_inputs("ncf", 3, seed=seed)))
    served = daemon.metric_values("kairos_instance_queries_total")
    by_type = {t: sum(v for k, v in served.items() if f'type="{t}"' in k) for t in ("ort-1t", "triton")}
    assert by_type["ort-1t"] >= 2 and by_type["triton"] >= 2, served


@pytest.mark.triton
def test_errors_users_can_act_on(daemon: RunningDaemon) -> None:
    g = grpcclient.InferenceServerClient(daemon.grpc_url)
    h = httpclient.InferenceServerClient(daemon.http_url)
    inputs = example_inputs("dlrm", 2, seed=0)
    # unknown model
    with pytest.raises(InferenceServerException) as e:
        g.infer("nope", grpc_inputs(inputs))
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as e:
        h.infer("nope", http_inputs(inputs, True))
    assert e.value.status() == "404"
    # wrong input name
    bad = {"dense": inputs["dense_features"], "sparse_ids": inputs["sparse_ids"]}
    with pytest.raises(InferenceServerException) as e:
        g.infer("dlrm", grpc_inputs(bad))
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "dense" in e.value.message()
    # wrong dtype
    bad = {"dense_features": inputs["dense_features"].astype(np.float64), "sparse_ids": inputs["sparse_ids"]}
    with pytest.raises(InferenceServerException) as e:
        h.infer("dlrm", http_inputs(bad, True))
    assert e.value.status() == "400" and "dense_features" in e.value.message()
    # wrong shape
    bad = {"dense_features": inputs["dense_features"][:, :5].copy(), "sparse_ids": inputs["sparse_ids"]}
    with pytest.raises(InferenceServerException) as e:
        g.infer("dlrm", grpc_inputs(bad))
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "dense_features" in e.value.message()
    # oversized body (limit 4 MiB in this daemon's config)
    huge = {"dense_features": np.zeros((120_000, 13), np.float32),  # 6.2 MB
            "sparse_ids": np.zeros((120_000, 8), np.int64)}  # 7.7 MB
    with pytest.raises(InferenceServerException) as e:
        g.infer("dlrm", grpc_inputs(huge))
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    with pytest.raises(InferenceServerException) as e:
        h.infer("dlrm", http_inputs(huge, True))
    assert e.value.status() == "413"


@pytest.mark.triton
def test_malformed_http_body_is_400(daemon: RunningDaemon) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://{daemon.http_url}/v2/models/ncf/infer", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400


@pytest.fixture(scope="module")
def kairos_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """Three workers of two types under the Kairos policy (no Triton: fast start)."""
    path = tmp_path_factory.mktemp("kairos") / "kairosd.toml"
    ports = write_config(path, fleet={"ort-1t": 2, "ort-2t": 1}, policy="kairos", extra_scheduler=DEADLINE_ADMISSION)
    d = start_daemon(path, ports)
    yield d
    assert d.stop() == 0, d.child.log_tail()


async def test_2000_concurrent_requests_none_lost_or_duplicated(kairos_daemon: RunningDaemon) -> None:
    n = 2000
    rng = np.random.default_rng(3)
    batches = rng.integers(1, 33, n)
    all_inputs = example_inputs("ncf", int(batches.sum()), seed=11)
    expected = reference("ncf", all_inputs)
    offsets = np.concatenate([[0], np.cumsum(batches)])
    before = kairos_daemon.metric_values("kairos_queries_completed_total").get("", 0.0)
    client = grpcaio.InferenceServerClient(kairos_daemon.grpc_url)

    async def one(i: int) -> tuple[int, str, np.ndarray]:
        sl = slice(int(offsets[i]), int(offsets[i + 1]))
        inputs = {k: v[sl] for k, v in all_inputs.items()}
        r = await client.infer("ncf", grpc_inputs(inputs, grpcaio), request_id=f"q{i}", client_timeout=120)
        return i, r.get_response().id, r.as_numpy("score")

    try:
        results = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()
    assert len(results) == n
    assert sorted(rid for _, rid, _ in results) == sorted(f"q{i}" for i in range(n))
    for i, rid, out in results:
        assert rid == f"q{i}"
        np.testing.assert_allclose(out, expected[int(offsets[i]):int(offsets[i + 1])], rtol=1e-5, atol=1e-6)
    after = kairos_daemon.metric_values("kairos_queries_completed_total")[""]
    assert after - before == n  # every query served exactly once by an instance


def test_unavailable_when_no_instance_can_serve_before_deadline(tmp_path: Path) -> None:
    """One slow instance, a 30 ms server-side deadline and a burst of large queries with admission
    control off: the ones that cannot be served in time are answered UNAVAILABLE / 503 at their
    deadline, the rest correctly; none lost."""
    path = tmp_path / "kairosd.toml"
    ports = write_config(path, fleet={"ort-1t": 1}, extra_scheduler='default_timeout_s = 0.03\nadmission = "off"')
    d = start_daemon(path, ports)
    try:
        inputs = example_inputs("dlrm", 1024, seed=1)
        expected = reference("dlrm", inputs)

        async def burst() -> list[object]:
            c = grpcaio.InferenceServerClient(d.grpc_url)
            try:
                return await asyncio.gather(
                    *(c.infer("dlrm", grpc_inputs(inputs, grpcaio)) for _ in range(100)), return_exceptions=True
                )
            finally:
                await c.close()

        results = asyncio.run(burst())
        ok = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(ok) + len(errors) == 100
        assert errors, "a 100-query burst of batch 1024 cannot all finish within 30 ms on one worker"
        for r in ok:
            np.testing.assert_allclose(r.as_numpy("click_probability"), expected, rtol=1e-5, atol=1e-6)  # type: ignore[union-attr]
        for e in errors:
            assert isinstance(e, InferenceServerException) and e.status() == "StatusCode.UNAVAILABLE", e
            assert "deadline" in e.message()
        async def http_burst() -> list[str]:
            h = httpaio.InferenceServerClient(d.http_url, conn_limit=100)
            try:
                rs = await asyncio.gather(
                    *(h.infer("dlrm", http_inputs(inputs, True, httpaio)) for _ in range(100)), return_exceptions=True
                )
            finally:
                await h.close()
            return ["200" if not isinstance(r, BaseException) else r.status() for r in rs]  # type: ignore[union-attr]

        statuses = asyncio.run(http_burst())
        assert "503" in statuses and set(statuses) <= {"200", "503"}, statuses
    finally:
        assert d.stop() == 0


def _children(pid: int) -> list[int]:
    """The daemon's instance processes (its children, not its own front-end processes nor a planner walk,
    `python -m kairosd.autoscale.refine`)."""
    return [c for c, argv in children(pid).items() if b"frontend" not in argv and b"kairosd.autoscale.refine" not in argv]


def test_instance_killed_under_load_loses_no_query(tmp_path: Path) -> None:
    """SIGKILL one of two workers while 600 queries are in the system: every query is answered
    correctly (the failed sends are retried on the other worker, the dead one leaves dispatch), and
    the fleet replaces the dead worker within two reconcile periods."""
    import os
    import signal as sig

    path = tmp_path / "kairosd.toml"
    period_s = 0.5
    ports = write_config(path, fleet={"ort-1t": 2}, policy="round_robin", extra_scheduler=DEADLINE_ADMISSION,
                         extra_toml=f"[autoscaler]\nperiod_s = {period_s}")
    d = start_daemon(path, ports)
    try:
        workers = _children(d.child.pid)
        assert len(workers) == 2, workers
        inputs = example_inputs("dlrm", 256, seed=5)
        expected = reference("dlrm", inputs)

        async def load() -> list[object]:
            c = grpcaio.InferenceServerClient(d.grpc_url)
            try:
                tasks = [asyncio.ensure_future(c.infer("dlrm", grpc_inputs(inputs, grpcaio), client_timeout=60))
                         for _ in range(600)]
                await asyncio.sleep(0.3)  # queries are queued and in flight on both workers
                os.kill(workers[0], sig.SIGKILL)
                return await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await c.close()

        results = asyncio.run(load())
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        for r in results:
            np.testing.assert_allclose(r.as_numpy("click_probability"), expected, rtol=1e-5, atol=1e-6)  # type: ignore[union-attr]
        assert d.metric_values("kairos_queries_retried_total")[""] >= 1
        # the dead worker vanished from the provider's list and a new one replaced it, with a new id
        deadline = time.monotonic() + 2 * period_s + 15.0  # two periods, plus a worker's start-up
        while time.monotonic() < deadline:
            states = d.metric_values("kairos_instances")
            vanished = d.metric_values("kairos_fleet_instances_vanished_total")[""]
            if states.get('{state="ready",type="ort-1t"}') == 2.0 and vanished == 1:
                break
            time.sleep(0.05)
        assert states == {'{state="ready",type="ort-1t"}': 2.0}, states
        assert d.metric_values("kairos_fleet_instances_launched_total")[""] == 3
        assert len(_children(d.child.pid)) == 2
    finally:
        d.stop()


@pytest.mark.parametrize("taken", ["grpc", "http", "metrics"])
def test_a_taken_front_end_port_fails_at_once_naming_the_key(tmp_path: Path, taken: str) -> None:
    """A front-end port held by another listener: exit 2 before any instance starts, the message names
    the config key and the port."""
    import socket
    import subprocess
    import sys
    path = tmp_path / "kairosd.toml"
    ports = write_config(path, fleet={"ort-1t": 1})
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[taken]))
        holder.listen()
        p = subprocess.run([sys.executable, "-m", "kairosd", "serve", "--config", str(path)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2, p.stderr
    assert f"server.{taken}_port = {ports[taken]}" in p.stderr
    assert "Address already in use" in p.stderr
    assert "instance ready" not in p.stderr  # refused before the fleet was started


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children, ...), from /proc."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2:].split()
            if fields[0] != b"Z":
                parent_of[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {c for c, p in parent_of.items() if p in frontier} - found
        found |= frontier
    return found


def _described(pid: int) -> str:
    """pid, state and command line from /proc (what a failure message names a surviving process by)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"{pid} (gone)"
    fields = stat[stat.rindex(b")") + 2:].split()
    return f"{pid} state {fields[0].decode()} parent {int(fields[1])}: {cmdline}"


def test_instances_do_not_outlive_a_sigkilled_daemon(tmp_path: Path) -> None:
    """SIGKILL gives the daemon no chance to stop its fleet: the worker and the Triton (with its
    tritonserver) still exit, through the parent-death signal each armed at start."""
    import os
    import signal
    import time

    path = tmp_path / "kairosd.toml"
    ports = write_config(path, fleet={"ort-1t": 1, "triton": 1})
    daemon = start_daemon(path, ports)
    try:
        assert daemon.child.pid is not None
        below = _descendants(daemon.child.pid)
        assert len(below) >= 3, below  # a worker, a `kairosd triton` and its tritonserver at least
        os.kill(daemon.child.pid, signal.SIGKILL)
        daemon.child.wait(10)
        deadline = time.monotonic() + 60
        alive = below
        while alive and time.monotonic() < deadline:
            alive = {p for p in below if Path(f"/proc/{p}").exists() and b"Z" not in
                     Path(f"/proc/{p}/stat").read_bytes().rsplit(b")", 1)[1][:3]}
            time.sleep(0.2)
        assert not alive, f"still running after the daemon was SIGKILLed: {[_described(p) for p in sorted(alive)]}"
    finally:
        daemon.child.stop(5)
