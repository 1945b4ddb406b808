"""Emulated instances: unchanged tritonclient programs (gRPC and HTTP) against `kairosd emulated` directly and
behind a real `kairosd serve` (one instance of each Kairos AWS type, launched by the local provider), and
timing at low load: each type's drawn service times match its profile (p50 and p90 within 5% or 0.5 ms), no
reply comes before its drawn service time has passed, and what the client sees beyond it stays within the
allowances below. The fidelity figures themselves (p50 and p99 at the client on 16 instances) are measured
by bench/live.py, not asserted here: on 2 shared cores a test's timing depends on what else runs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import np_to_triton_dtype

from kairosd.backends.emulated import ARRIVED_PARAM, DONE_PARAM, SERVER_NAME, SERVICE_PARAM, TYPE_PARAM
from kairosd.backends.process import ChildProcess, free_port, wait_ready_sync
from kairosd.emulation import load_cells
from kairosd.modelgen import example_inputs
from tests.integration.daemon_harness import REPO, RunningDaemon, start_daemon, workers_toml

TYPES = ("g4dn.xlarge", "c5n.2xlarge", "r5n.large", "t3.xlarge")
MODELS = {"dlrm": "rm2", "ncf": "ncf"}
OUTPUT = {"dlrm": "click_probability", "ncf": "score"}
# rm2 at batch 200: 55 ms (g4dn) to 179 ms (t3), each cell's p99 within 2% of its mean, so a few dozen
# queries estimate p50 and p99 well
FIDELITY_BATCH = 200
FIDELITY_QUERIES = 30
MAX_LOOP_QUERIES = 8 * FIDELITY_QUERIES


# What the client sees beyond the drawn service time, at p50 and p90 of a type's queries, is held to the
# same path's cost measured in the same round (the baseline: the same loops sending ncf at batch 1, whose
# service is under 1 ms, so that what the client sees of it is the round trip alone) plus a share of the
# drawn time, for the wake-up of an idle core after a 55-180 ms wait. The path's cost is the host's: on 2
# cores shared with the rest of the test run and a slowed VM it doubles, which says nothing of the
# emulation. The share flags what does: an instance that sleeps twice (excess = the drawn time), a query
# queued behind another (excess ≥ the fastest type's 55 ms) or a head that holds a query back. The tail is
# checked at p90: with 30 queries a type, p99 is the slowest query, which one stall of the shared VM decides.
TAIL_Q = 90
EXCESS_SHARE = {50: 0.1, TAIL_Q: 0.2}
BASELINE_MODEL, BASELINE_BATCH = "ncf", 1
# a reply may come this much before its drawn service time (the instance's timer wakes a little early)
EARLY_MS = 0.2


def within(measured_ms: float, expected_ms: float) -> bool:
    return abs(measured_ms - expected_ms) <= max(0.05 * expected_ms, 0.5)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    path = tmp_path_factory.mktemp("emulated") / "kairosd.toml"
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    types = "\n".join(f'[types."{t}"]\nbackend = "emulated"\nemulate = "{t}"\nprice_usd_per_hour = 0.1\n' for t in TYPES)
    path.write_text(f"""
[server]
host = "127.0.0.1"
http_port = {ports['http']}
grpc_port = {ports['grpc']}
metrics_port = {ports['metrics']}
{workers_toml()}
[scheduler]
policy = "round_robin"
admission = "off"  # ncf at 5 ms QoS: protocol and fidelity, not admission, are tested here
[models]
repository = "{REPO / 'model_repository'}"
profiles = "{REPO / 'profiles' / 'aws'}"
[models.qos_ms]
dlrm = 350.0
ncf = 5.0
[emulation]
models = {{ dlrm = "rm2", ncf = "ncf" }}
{types}
[fleet.static]
{chr(10).join(f'"{t}" = 1' for t in TYPES)}
""")
    d = start_daemon(path, ports, timeout_s=60)
    yield d
    assert d.stop() == 0, d.child.log_tail()


@pytest.fixture(scope="module")
def instance() -> Iterator[tuple[str, str]]:
    """One `kairosd emulated` started by hand: (gRPC address, HTTP address)."""
    g, h = free_port(), free_port()
    child = ChildProcess([sys.executable, "-m", "kairosd", "emulated", "--model-repository", str(REPO / "model_repository"),
                          "--emulate", "g4dn.xlarge", "--models", "dlrm=rm2,ncf=ncf", "--port", str(g),
                          "--http-port", str(h), "--seed", "1"], name="emulated").start()
    try:
        wait_ready_sync(f"127.0.0.1:{g}", 30, child)
        yield f"127.0.0.1:{g}", f"127.0.0.1:{h}"
    finally:
        assert child.stop(10) == 0, child.log_tail()


def grpc_inputs(model: str, batch: int) -> list[grpcclient.InferInput]:
    out = []
    for name, arr in example_inputs(model, batch, seed=0).items():
        t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def http_inputs(model: str, batch: int, binary: bool) -> list[httpclient.InferInput]:
    out = []
    for name, arr in example_inputs(model, batch, seed=0).items():
        t = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr, binary_data=binary)
        out.append(t)
    return out


def check_protocol(grpc_url: str, http_url: str) -> None:
    g = grpcclient.InferenceServerClient(grpc_url)
    h = httpclient.InferenceServerClient(http_url)
    for model, batch in (("dlrm", 7), ("ncf", 3)):
        assert g.is_model_ready(model) and h.is_model_ready(model)
        meta = g.get_model_metadata(model)
        assert [o.name for o in meta.outputs] == [OUTPUT[model]] and list(meta.outputs[0].shape) == [-1, 1]
        r = g.infer(model, grpc_inputs(model, batch), request_id="q1")
        out = r.as_numpy(OUTPUT[model])
        assert out.shape == (batch, 1) and out.dtype == np.float32 and not out.any()
        assert r.get_response().id == "q1"
        assert r.get_response().outputs[0].datatype == "FP32"
        for binary in (True, False):
            outputs = [httpclient.InferRequestedOutput(OUTPUT[model], binary_data=binary)]
            rh = h.infer(model, http_inputs(model, batch, binary), outputs=outputs)
            arr = rh.as_numpy(OUTPUT[model])
            assert arr.shape == (batch, 1) and arr.dtype == np.float32 and not arr.any()
            # the response parameters come in the JSON header, as on gRPC
            params = rh.get_response()["parameters"]
            assert isinstance(params[TYPE_PARAM], str) and params[TYPE_PARAM]
            assert params[SERVICE_PARAM] > 0 and params[DONE_PARAM] >= params[ARRIVED_PARAM] > 0


def test_protocol_direct(instance: tuple[str, str]) -> None:
    grpc_url, http_url = instance
    meta = grpcclient.InferenceServerClient(grpc_url).get_server_metadata()
    assert meta.name == SERVER_NAME and "emulated:g4dn.xlarge" in meta.extensions
    assert httpclient.InferenceServerClient(http_url).get_server_metadata()["name"] == SERVER_NAME
    check_protocol(grpc_url, http_url)


def test_protocol_through_kairosd(daemon: RunningDaemon) -> None:
    check_protocol(daemon.grpc_url, daemon.http_url)


def _served_enough(out: list[tuple[str, float, float]]) -> bool:
    return all(sum(1 for s in out if s[0] == t) >= FIDELITY_QUERIES for t in TYPES)


async def _loop(url: str, out: list[tuple[str, float, float]], model: str = "dlrm", batch: int = FIDELITY_BATCH) -> None:
    """Sequential queries (by default rm2-timed at FIDELITY_BATCH), pre-serialized on a lean grpc.aio
    channel (the client adds as little as it can), until every type has served FIDELITY_QUERIES of all the
    loops' queries (at most MAX_LOOP_QUERIES from this loop): (type that served it, client latency s, drawn
    service s). Through kairosd, round robin over idle instances moves a loop between instances, so a fixed
    count per loop would not give every type its share."""
    request = pb.ModelInferRequest(model_name=model)
    for name, arr in example_inputs(model, batch, seed=0).items():
        request.inputs.add(name=name, datatype=np_to_triton_dtype(arr.dtype), shape=arr.shape)
        request.raw_input_contents.append(arr.tobytes())
    body = request.SerializeToString()
    async with grpc.aio.insecure_channel(url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        await call(body)  # connect
        for _ in range(MAX_LOOP_QUERIES):
            if _served_enough(out):
                return
            t0 = time.perf_counter()
            reply = await call(body)
            latency = time.perf_counter() - t0
            params = pb.ModelInferResponse.FromString(reply).parameters
            out.append((params[TYPE_PARAM].string_param, latency, params[SERVICE_PARAM].int64_param / 1e6))


def _fidelity_failures(samples: list[tuple[str, float, float]], where: str, baseline_ms: dict[int, float]) -> list[str]:
    failures = []
    for t in TYPES:
        cells = load_cells(t, "kairos", MODELS)["dlrm"]
        lat = np.array([s[1] for s in samples if s[0] == t]) * 1e3
        drawn = np.array([s[2] for s in samples if s[0] == t]) * 1e3
        assert len(lat) >= FIDELITY_QUERIES, f"{where}: only {len(lat)} queries served by {t}"
        early = lat - drawn < -EARLY_MS
        assert not early.any(), f"{where}: {t} replied before its drawn service time: {lat[early]} ms < {drawn[early]} ms"
        for q in (50, TAIL_Q):
            profile = cells.quantile_s(FIDELITY_BATCH, q / 100) * 1e3
            given = float(np.percentile(drawn, q))
            # the draw is statistics, not timing: it is held to the profile whatever the host does
            assert within(given, profile), f"{where}: {t} drawn p{q} {given:.2f} ms, profile {profile:.2f} ms"
            excess = float(np.percentile(lat - drawn, q))
            allowed = baseline_ms[q] + EXCESS_SHARE[q] * given
            if excess > allowed:
                failures.append(f"{where}: {t} p{q} of client minus drawn: {excess:.2f} ms (allowed {allowed:.2f} ms: the "
                                f"path's {baseline_ms[q]:.2f} ms + {EXCESS_SHARE[q]:.0%} of {given:.2f} ms drawn)")
    return failures


def _baseline_ms(urls: list[str]) -> dict[int, float]:
    """The path's own cost at p50 and p90 now: client latency minus drawn service of BASELINE_MODEL at
    BASELINE_BATCH, FIDELITY_QUERIES from each of the loops `urls` (as many as the fidelity round's)."""
    samples: list[tuple[str, float, float]] = []
    asyncio.run(_gather([_loop(url, samples, BASELINE_MODEL, BASELINE_BATCH) for url in urls]))
    excess = np.array([s[1] - s[2] for s in samples]) * 1e3
    return {q: float(np.percentile(excess, q)) for q in (50, TAIL_Q)}


def _check_fidelity(urls: list[str], where: str) -> None:
    """Fidelity in one of two rounds of FIDELITY_QUERIES a type, each with its own baseline measured just
    before it: a stall of the shared VM (hypervisor steal of 0.3-0.5 cores was measured on this host) can
    shift one round's median by a few ms, which says nothing of the emulation; the failures of both rounds
    are reported."""
    failures: list[str] = []
    for _ in range(2):
        baseline = _baseline_ms(urls)
        samples: list[tuple[str, float, float]] = []
        asyncio.run(_gather([_loop(url, samples) for url in urls]))
        round_failures = _fidelity_failures(samples, where, baseline)
        if not round_failures:
            return
        failures += round_failures
    raise AssertionError("; ".join(failures))


@pytest.mark.alone  # latencies measured to a few ms: see tests/conftest.py
def test_fidelity_direct_and_through_kairosd(daemon: RunningDaemon) -> None:
    with urllib.request.urlopen(f"http://{daemon.metrics_url}/kairos/fleet", timeout=5) as r:
        fleet = json.loads(r.read())
    addresses = {i["type"]: i["address"] for i in fleet["instances"]}
    assert sorted(addresses) == sorted(TYPES)
    _check_fidelity([addresses[t] for t in TYPES], "direct")
    # through kairosd: round robin over idle instances, as many client loops as instances (low load)
    _check_fidelity([daemon.grpc_url] * len(TYPES), "through kairosd")


async def _gather(loops: list[Coroutine[Any, Any, None]]) -> None:
    await asyncio.gather(*loops)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from kairosd import config
    from kairosd.errors import ConfigError

    base = {"models": {"qos_ms": {"dlrm": 350.0}}, "fleet": {"static": {"e": 1}}}
    cases = [
        ({"e": {"backend": "emulated"}}, {"models": {"dlrm": "rm2"}}, "types.e.emulate is required"),
        ({"e": {"backend": "emulated", "emulate": "p3.2xlarge"}}, {"models": {"dlrm": "rm2"}}, "emulate = 'p3.2xlarge'"),
        ({"e": {"backend": "emulated", "emulate": "t3.xlarge"}}, {"models": {"dlrm": "resnet"}}, "'resnet'"),
        ({"e": {"backend": "emulated", "emulate": "t3.xlarge"}}, {}, "[emulation] models"),
        ({"e": {"backend": "onnxruntime", "emulate": "t3.xlarge"}}, {"models": {"dlrm": "rm2"}}, "types.e.emulate is only"),
        ({"e": {"backend": "emulated", "emulate": "t3.xlarge", "emulate_data": "nowhere"}}, {"models": {"dlrm": "rm2"}},
         "emulate_data"),
    ]
    for types, emulation, message in cases:
        with pytest.raises(ConfigError, match=None) as exc:
            config.parse({**base, "types": types, "emulation": emulation}, tmp_path)
        assert message in str(exc.value), str(exc.value)
    # a profile CSV directory: the type's rows become log-normal cells
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "rm2.csv").write_text("instance_type,batch,mean_s,p99_s\nt3.xlarge,1,0.010,0.012\nt3.xlarge,100,0.1,0.11\n")
    cfg = config.parse({**base, "types": {"e": {"backend": "emulated", "emulate": "t3.xlarge", "emulate_data": "p"}},
                        "emulation": {"models": {"dlrm": "rm2"}}}, tmp_path)
    cells = load_cells("t3.xlarge", cfg.types["e"].emulate_data, {"dlrm": "rm2"})["dlrm"]
    assert abs(cells.samples_s[0].mean() - 0.010) < 1e-4 and abs(cells.quantile_s(1, 0.99) - 0.012) < 3e-4
    assert cells.grid_index(50) == 1 and cells.grid_index(5000) == 1
    # with the timed queries beside it: batch 1's cell is their quantiles (at the row's mean), batch 100's,
    # which has none, stays the log-normal
    (tmp_path / "p" / "rm2.samples.csv").write_text("instance_type,batch,samples_s\nt3.xlarge,1,0.008 0.008 0.008 0.016\n")
    timed = load_cells("t3.xlarge", cfg.types["e"].emulate_data, {"dlrm": "rm2"})["dlrm"]
    assert set(np.round(timed.samples_s[0], 6)) == {0.008, 0.016}
    assert (timed.samples_s[0] == 0.008).mean() == 0.75
    np.testing.assert_allclose(timed.samples_s[1], cells.samples_s[1])


def test_emulated_host_serves_several_instances_from_one_process() -> None:
    """`--instance` twice: two instances of different types in one process, each on its own ports, answering
    with its own type over gRPC and HTTP; SIGTERM stops both."""
    ports = [(t, free_port(), free_port()) for t in ("g4dn.xlarge", "t3.xlarge")]
    argv = [sys.executable, "-m", "kairosd", "emulated", "--model-repository", str(REPO / "model_repository"),
            "--models", "ncf=ncf", "--seed", "3"]
    for t, g, h in ports:
        argv += ["--instance", f"{t}:{g}:{h}"]
    child = ChildProcess(argv, name="emulated-host").start()
    try:
        for t, g, h in ports:
            wait_ready_sync(f"127.0.0.1:{g}", 30, child)
            meta = grpcclient.InferenceServerClient(f"127.0.0.1:{g}").get_server_metadata()
            assert f"emulated:{t}" in meta.extensions
            r = grpcclient.InferenceServerClient(f"127.0.0.1:{g}").infer("ncf", grpc_inputs("ncf", 4))
            assert r.get_response().parameters[TYPE_PARAM].string_param == t
            rh = httpclient.InferenceServerClient(f"127.0.0.1:{h}").infer("ncf", http_inputs("ncf", 4, True))
            assert rh.get_response()["parameters"][TYPE_PARAM] == t
            assert rh.as_numpy(OUTPUT["ncf"]).shape == (4, 1)
    finally:
        assert child.stop(10) == 0, child.log_tail()


def test_emulated_cli_needs_one_way_to_name_instances() -> None:
    from kairosd.backends.emulated import HostedInstance, parse_hosted
    from kairosd.errors import ConfigError

    assert parse_hosted("r5n.large:9001:9000") == HostedInstance("r5n.large", 9001, 9000)
    assert parse_hosted("r5n.large:9001") == HostedInstance("r5n.large", 9001, None)
    for bad in ("r5n.large", "r5n.large:x", ":9001", "r5n.large:9001:y"):
        with pytest.raises(ConfigError, match="TYPE:GRPC_PORT"):
            parse_hosted(bad)
    both = subprocess.run([sys.executable, "-m", "kairosd", "emulated", "--model-repository", str(REPO / "model_repository"),
                           "--models", "ncf=ncf", "--emulate", "t3.xlarge", "--instance", "t3.xlarge:1:2"],
                          capture_output=True, text=True, timeout=60)
    assert both.returncode == 1 and "either --emulate" in both.stderr
