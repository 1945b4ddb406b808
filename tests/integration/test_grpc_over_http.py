"""gRPC queries reach an instance over its HTTP endpoint (`kairosd/backends/grpc_http.py`), and over gRPC
with KAIROSD_BACKEND_HTTP=0. One emulated host serves a g4dn.xlarge and a t3.xlarge instance; kairosd's
one `[[fleet.endpoints]]` names the g4dn's gRPC address and the t3's HTTP address, so every answer says
which endpoint served it (the `emulated_type` response parameter)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from kairosd.backends.emulated import TYPE_PARAM
from kairosd.backends.process import ChildProcess, free_port, wait_ready_sync
from kairosd.modelgen import example_inputs
from tests.integration.daemon_harness import REPO, RunningDaemon, start_daemon, write_config
from tests.integration.test_serve import grpc_inputs, http_inputs

TYPES_TOML = """
[types."g4dn.xlarge"]
backend = "emulated"
emulate = "g4dn.xlarge"
price_usd_per_hour = 0.526
"""


@pytest.fixture(scope="module")
def host() -> Iterator[dict[str, tuple[int, int]]]:
    """One emulated host, `ncf` only: {type: (gRPC port, HTTP port)}."""
    ports = {t: (free_port(), free_port()) for t in ("g4dn.xlarge", "t3.xlarge")}
    argv = [sys.executable, "-m", "kairosd", "emulated", "--model-repository", str(REPO / "model_repository"),
            "--models", "ncf=ncf", "--seed", "5", "--slots", "4"]
    for t, (g, h) in ports.items():
        argv += ["--instance", f"{t}:{g}:{h}"]
    child = ChildProcess(argv, name="emulated-host").start()
    try:
        for g, _ in ports.values():
            wait_ready_sync(f"127.0.0.1:{g}", 30, child)
        yield ports
    finally:
        assert child.stop(10) == 0, child.log_tail()


def _daemon(tmp: Path, host: dict[str, tuple[int, int]], env: dict[str, str]) -> RunningDaemon:
    g4dn_grpc, t3_http = host["g4dn.xlarge"][0], host["t3.xlarge"][1]
    endpoint = (f'[[fleet.endpoints]]\ntype = "g4dn.xlarge"\naddress = "127.0.0.1:{g4dn_grpc}"\n'
                f'http_address = "127.0.0.1:{t3_http}"\n')
    path = tmp / "kairosd.toml"
    ports = write_config(path, fleet={}, qos_ms={"ncf": 50.0}, types_toml=TYPES_TOML,
                         endpoints_toml=endpoint, profiles=REPO / "profiles" / "aws",
                         extra_toml='[emulation]\nmodels = { ncf = "ncf" }\n',
                         extra_scheduler='admission = "off"')
    return start_daemon(path, ports, timeout_s=60, env={**os.environ, **env})


@pytest.mark.parametrize("over_http", [True, False])
def test_grpc_queries_take_the_instances_http_endpoint_unless_switched_off(
        tmp_path: Path, host: dict[str, tuple[int, int]], over_http: bool) -> None:
    d = _daemon(tmp_path, host, {} if over_http else {"KAIROSD_BACKEND_HTTP": "0"})
    try:
        g = grpcclient.InferenceServerClient(d.grpc_url)
        outputs = [grpcclient.InferRequestedOutput("score")]
        for batch in (1, 7):
            r = g.infer("ncf", grpc_inputs(example_inputs("ncf", batch, seed=1)), request_id=f"q{batch}", outputs=outputs)
            resp = r.get_response()
            assert resp.parameters[TYPE_PARAM].string_param == ("t3.xlarge" if over_http else "g4dn.xlarge")
            assert resp.id == f"q{batch}" and resp.model_name == "ncf"
            assert r.as_numpy("score").shape == (batch, 1) and r.as_numpy("score").dtype == np.float32
        # no outputs named: every output comes back, as binary data converted to raw contents
        r = g.infer("ncf", grpc_inputs(example_inputs("ncf", 3, seed=1)))
        assert [o.name for o in r.get_response().outputs] == ["score"] and r.as_numpy("score").shape == (3, 1)
        # HTTP queries go to the HTTP endpoint either way
        h = httpclient.InferenceServerClient(d.http_url)
        rh = h.infer("ncf", http_inputs(example_inputs("ncf", 2, seed=1), binary=True))
        assert rh.get_response()["parameters"][TYPE_PARAM] == "t3.xlarge"
    finally:
        assert d.stop() == 0, d.child.log_tail()
