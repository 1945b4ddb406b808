"""Access control on a real `kairosd serve` (an emulated fleet) with unchanged tritonclient: TLS, mutual
TLS (no, an untrusted or the right client certificate), bearer tokens on both protocols, health
endpoints open by default and closed with auth_health, /metrics and /kairos/fleet on the admin port
only, tokens re-read on SIGHUP, and no token in the daemon's log, errors or metrics. Certificates are
generated here (tests/integration/tls_certs.py)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from kairosd.commands.check_config import summary
from kairosd.errors import ConfigError
from kairosd.modelgen import example_inputs
from tests.integration.daemon_harness import REPO, RunningDaemon, start_daemon, write_config
from tests.integration.tls_certs import Pki, make_pki

TOKEN = "k41r0s-test-token-" + "a1b2c3d4e5f6a7b8c9d0"
OTHER_TOKEN = "second-token-0123456789abcdef"
WRONG = "not-the-token-9f8e7d6c5b4a"
NEW_TOKEN = "rotated-token-fedcba9876543210"
EMULATED_TYPES = """
[types."g4dn.xlarge"]
backend = "emulated"
emulate = "g4dn.xlarge"
price_usd_per_hour = 0.5
slots = 32
"""
EMULATION = '[emulation]\nmodels = { dlrm = "rm2", ncf = "ncf" }\n'


def emulated_config(path: Path, server_toml: str, **kw: object) -> dict[str, int]:
    """One emulated g4dn.xlarge instance (32 slots: CPU-light, answers after the measured service time)."""
    return write_config(path, fleet={'"g4dn.xlarge"': 1}, policy="round_robin", qos_ms={"dlrm": 350.0, "ncf": 5.0},
                        types_toml=EMULATED_TYPES, extra_toml=EMULATION, profiles=REPO / "profiles" / "aws",
                        extra_scheduler='admission = "off"', server_toml=server_toml, **kw)  # type: ignore[arg-type]


def grpc_inputs(batch: int = 4) -> list[grpcclient.InferInput]:
    out = []
    for name, arr in example_inputs("dlrm", batch, seed=0).items():
        t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def http_inputs(batch: int = 4) -> list[httpclient.InferInput]:
    out = []
    for name, arr in example_inputs("dlrm", batch, seed=0).items():
        t = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr, binary_data=True)
        out.append(t)
    return out


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@dataclass
class Secured:
    daemon: RunningDaemon
    pki: Pki
    ports: dict[str, int]
    config: Path
    tokens: Path
    log: Path

    def grpc_client(self, cert: bool = True, rogue: bool = False) -> grpcclient.InferenceServerClient:
        p = self.pki
        key, chain = (p.rogue_key, p.rogue_cert) if rogue else (p.client_key, p.client_cert)
        return grpcclient.InferenceServerClient(
            self.daemon.grpc_url, ssl=True, root_certificates=str(p.ca_cert),
            private_key=str(key) if cert else None, certificate_chain=str(chain) if cert else None,
            # a channel of its own: grpc would otherwise share one connection between equal channels
            channel_args=[("grpc.use_local_subchannel_pool", 1)],
        )

    def http_client(self, cert: bool = True, rogue: bool = False) -> httpclient.InferenceServerClient:
        p = self.pki
        options: dict[str, str] = {"ca_certs": str(p.ca_cert)}
        if cert:
            key, chain = (p.rogue_key, p.rogue_cert) if rogue else (p.client_key, p.client_cert)
            options |= {"certfile": str(chain), "keyfile": str(key)}
        return httpclient.InferenceServerClient(self.daemon.http_url, ssl=True, ssl_options=options)

    def https(self, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        """GET over mutual TLS with urllib: (status, headers, body), 4xx/5xx included."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        req = urllib.request.Request(f"https://{self.daemon.http_url}{path}", headers=bearer(token) if token else {})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """kairosd with mutual TLS and two bearer tokens (health open: auth_health false by default)."""
    d = tmp_path_factory.mktemp("access")
    pki = make_pki(d / "pki")
    tokens = d / "tokens"
    tokens.write_text(f"# clients of team A\n{TOKEN}\n\n  # team B\n{OTHER_TOKEN}\n")
    config = d / "kairosd.toml"
    ports = emulated_config(config, f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
                                    f'tls_client_ca = "{pki.ca_cert}"\ntoken_file = "{tokens}"\n')
    log = d / "kairosd.log"
    daemon = start_daemon(config, ports, timeout_s=60, wait_ready=False, log_path=log, tls=True)
    yield Secured(daemon, pki, ports, config, tokens, log)
    assert daemon.stop() == 0, daemon.child.log_tail()


def wait_ready(s: Secured) -> None:
    client = s.grpc_client()
    deadline = time.monotonic() + 30
    while not client.is_server_ready():
        assert time.monotonic() < deadline, s.daemon.child.log_tail()
        time.sleep(0.1)
    client.close()


def test_grpc_mutual_tls_and_tokens(secured: Secured) -> None:
    wait_ready(secured)
    client = secured.grpc_client()
    # health is open without a token; everything else needs one
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("dlrm")
    result = client.infer("dlrm", grpc_inputs(), headers=bearer(TOKEN))
    assert result.as_numpy("click_probability").shape == (4, 1)
    assert client.get_model_metadata("dlrm", headers=bearer(OTHER_TOKEN)).name == "dlrm"  # any token of the file
    for headers, expected in ((None, "needs a bearer token"), (bearer(WRONG), "not valid"),
                              ({"authorization": TOKEN}, "needs a bearer token")):  # no "Bearer " scheme
        for call in (lambda h: client.infer("dlrm", grpc_inputs(), headers=h),
                     lambda h: client.get_model_metadata("dlrm", headers=h)):
            with pytest.raises(InferenceServerException) as err:
                call(headers)
            assert err.value.status() == "StatusCode.UNAUTHENTICATED"
            message = err.value.message()
            assert expected in message and "authorization: Bearer <token>" in message
            assert WRONG not in message and TOKEN not in message
    client.close()


@pytest.mark.parametrize("cert, rogue", [(False, False), (True, True)], ids=["no-client-cert", "untrusted-cert"])
def test_grpc_refuses_clients_without_a_trusted_certificate(secured: Secured, cert: bool, rogue: bool) -> None:
    client = secured.grpc_client(cert=cert, rogue=rogue)
    with pytest.raises(InferenceServerException) as err:
        client.is_server_live(client_timeout=10)
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    client.close()


def test_grpc_plaintext_client_fails_on_the_tls_port(secured: Secured) -> None:
    client = grpcclient.InferenceServerClient(secured.daemon.grpc_url,
                                              channel_args=[("grpc.use_local_subchannel_pool", 1)])
    with pytest.raises(InferenceServerException) as err:
        client.is_server_live(client_timeout=10)
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    client.close()


def test_http_mutual_tls_and_tokens(secured: Secured) -> None:
    wait_ready(secured)
    client = secured.http_client()
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("dlrm")
    result = client.infer("dlrm", http_inputs(), headers=bearer(TOKEN))
    assert result.as_numpy("click_probability").shape == (4, 1)
    with pytest.raises(InferenceServerException) as err:
        client.infer("dlrm", http_inputs(), headers=bearer(WRONG))
    assert err.value.status() == "401" and "not valid" in err.value.message() and WRONG not in err.value.message()
    client.close()
    # the status, WWW-Authenticate and body as any HTTP client sees them
    status, headers, body = secured.https("/v2/models/dlrm")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert "authorization: Bearer <token>" in json.loads(body)["error"]
    assert secured.https("/v2/models/dlrm", TOKEN)[0] == 200
    assert secured.https("/v2/health/ready")[0] == 200 and secured.https("/v2/models/dlrm/ready")[0] == 200
    # the admin endpoint is not on the client port
    assert secured.https("/kairos/fleet", TOKEN)[0] == 404


@pytest.mark.parametrize("cert, rogue", [(False, False), (True, True)], ids=["no-client-cert", "untrusted-cert"])
def test_http_refuses_clients_without_a_trusted_certificate(secured: Secured, cert: bool, rogue: bool) -> None:
    client = secured.http_client(cert=cert, rogue=rogue)
    with pytest.raises(Exception) as err:  # noqa: PT011 - the TLS alert surfaces as ssl or socket errors
        client.is_server_live()
    assert not isinstance(err.value, AssertionError)
    client.close()


def test_http_plaintext_client_fails_on_the_tls_port(secured: Secured) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{secured.daemon.http_url}/v2/health/live", timeout=5).read()


def test_metrics_and_fleet_on_the_admin_port(secured: Secured) -> None:
    admin = secured.daemon.metrics_url
    assert admin.startswith("127.0.0.1:")  # server.metrics_host's default: loopback
    fleet = secured.daemon.fleet()
    assert [i["type"] for i in fleet["instances"]] == ["g4dn.xlarge"]
    deadline = time.monotonic() + 2  # with several front-end processes their counts arrive within moments
    while True:
        values = secured.daemon.metric_values("kairos_unauthenticated_total")
        if values.get('{protocol="grpc"}', 0) >= 1 and values.get('{protocol="http"}', 0) >= 1:
            break
        assert time.monotonic() < deadline, values
        time.sleep(0.05)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://{admin}/v2/health/live", timeout=5)
    assert err.value.code == 404  # the admin port serves no KServe endpoint


def test_no_token_in_log_metrics_or_fleet(secured: Secured) -> None:
    client = secured.grpc_client()
    with pytest.raises(InferenceServerException):
        client.infer("dlrm", grpc_inputs(), headers=bearer(WRONG))
    client.close()
    texts = {"log": secured.log.read_text(), "metrics": secured.daemon.metrics(),
             "fleet": json.dumps(secured.daemon.fleet())}
    assert "bearer tokens" in texts["log"]  # the start-up line counts them
    for where, text in texts.items():
        for token in (TOKEN, OTHER_TOKEN, WRONG):
            assert token not in text, f"a token appears in the daemon's {where}"


def test_sighup_rereads_tokens_and_auth_health(secured: Secured) -> None:
    """Runs last in this module: it rotates the tokens and closes the health endpoints."""
    secured.tokens.write_text(f"{NEW_TOKEN}\n")
    secured.config.write_text(secured.config.read_text().replace("[server]\n", "[server]\nauth_health = true\n", 1))
    mark = len(secured.log.read_text())
    os.kill(secured.daemon.child.pid or 0, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while "reload read server.token_file tokens=1 auth_health=True" not in secured.log.read_text()[mark:]:
        assert time.monotonic() < deadline, secured.log.read_text()[mark:]
        time.sleep(0.05)
    client = secured.grpc_client()
    assert client.get_model_metadata("dlrm", headers=bearer(NEW_TOKEN)).name == "dlrm"
    assert client.is_server_live(headers=bearer(NEW_TOKEN))
    for call in (lambda: client.get_model_metadata("dlrm", headers=bearer(TOKEN)),  # the old token is gone
                 lambda: client.is_server_live(), lambda: client.is_model_ready("dlrm")):  # health closed
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    client.close()
    assert secured.https("/v2/health/live")[0] == 401 and secured.https("/v2/health/live", NEW_TOKEN)[0] == 200
    assert NEW_TOKEN not in secured.log.read_text()


def test_tls_without_client_ca_and_no_tokens(tmp_path: Path) -> None:
    """Plain TLS: any client that trusts the server's CA is served, with no certificate and no token."""
    pki = make_pki(tmp_path / "pki")
    config = tmp_path / "kairosd.toml"
    ports = emulated_config(config, f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n')
    daemon = start_daemon(config, ports, timeout_s=60, wait_ready=False, tls=True)
    try:
        g = grpcclient.InferenceServerClient(daemon.grpc_url, ssl=True, root_certificates=str(pki.ca_cert),
                                             channel_args=[("grpc.use_local_subchannel_pool", 1)])
        deadline = time.monotonic() + 30
        while not g.is_server_ready():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert g.infer("dlrm", grpc_inputs()).as_numpy("click_probability").shape == (4, 1)
        g.close()
        h = httpclient.InferenceServerClient(daemon.http_url, ssl=True, ssl_options={"ca_certs": str(pki.ca_cert)})
        np.testing.assert_equal(h.infer("dlrm", http_inputs()).as_numpy("click_probability").shape, (4, 1))
        h.close()
        plain = grpcclient.InferenceServerClient(daemon.grpc_url, channel_args=[("grpc.use_local_subchannel_pool", 1)])
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=10)
        plain.close()
    finally:
        assert daemon.stop() == 0, daemon.child.log_tail()


# ---- files checked at start and by check-config ---------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("server_toml, key, says", [
    ('tls_cert = "{d}/missing.pem"\ntls_key = "{p.server_key}"', "server.tls_cert", "no such file"),
    ('tls_cert = "{p.server_cert}"\ntls_key = "{p.client_key}"', "server.tls_key", "key belongs to the certificate"),
    ('tls_cert = "{p.server_key}"\ntls_key = "{p.server_key}"', "server.tls_cert", "no PEM certificate"),
    ('tls_cert = "{p.server_cert}"\ntls_key = "{p.server_key}"\ntls_client_ca = "{d}/empty"', "server.tls_client_ca",
     "not a PEM CA bundle"),
    ('token_file = "{d}/empty"', "server.token_file", "holds no token"),
    ('token_file = "{d}"', "server.token_file", "is a directory"),
], ids=["cert-missing", "key-mismatch", "cert-not-pem", "ca-empty", "tokens-empty", "tokens-directory"])
def test_bad_access_files_are_config_errors(tmp_path: Path, pki: Pki, server_toml: str, key: str, says: str) -> None:
    (tmp_path / "empty").write_text("# nothing yet\n")
    config = tmp_path / "kairosd.toml"
    emulated_config(config, server_toml.format(d=tmp_path, p=pki))
    with pytest.raises(ConfigError) as err:
        summary(str(config))
    assert key in str(err.value) and says in str(err.value)


def test_check_config_and_serve_name_the_bad_file(tmp_path: Path) -> None:
    config = tmp_path / "kairosd.toml"
    (tmp_path / "tokens").write_text("\n# no token yet\n")
    emulated_config(config, 'token_file = "tokens"')  # relative: to the config file's directory
    for command in ("check-config", "serve --config"):
        out = subprocess.run([sys.executable, "-m", "kairosd", *command.split(), str(config)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode != 0
        assert f"server.token_file = '{tmp_path / 'tokens'}': holds no token" in out.stderr + out.stdout, out.stderr
    (tmp_path / "tokens").write_text(f"{TOKEN}\n")
    line = summary(str(config))
    assert "plaintext, 1 bearer tokens (health open)" in line and TOKEN not in line
