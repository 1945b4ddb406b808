"""A real EC2 API on loopback for tests: moto's server over HTTP, and a fault-injecting proxy in front of it.

moto answers every RunInstances (it has no capacity errors); `FaultProxy` forwards each request to it
unchanged, except the RunInstances calls its `fail` predicate picks, which get EC2's own error answer
(`<Response><Errors><Error><Code>…`), so a client sees what EC2 sends when capacity runs out.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moto.server import ThreadedMotoServer

# the environment of a test: dummy credentials, no profile or config file of the developer's
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
CLEARED_AWS_ENV = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on 127.0.0.1 (a free port) for the block; yields its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def reset(url: str) -> None:
    """Forget every resource the server holds (moto's `POST /moto-api/reset`)."""
    with urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10) as answer:
        answer.read()


def ec2_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    ).encode()


class FaultProxy:
    """An HTTP proxy to `upstream` on 127.0.0.1 that answers the RunInstances calls `fail(params)` picks
    (params: the form-decoded EC2 query, e.g. {"InstanceMarketOptions.MarketType": "spot"}) with `code`."""

    def __init__(self, upstream: str, code: str = "InsufficientInstanceCapacity") -> None:
        self.upstream = upstream
        self.code = code
        self.fail: Callable[[Mapping[str, str]], bool] = lambda params: False
        self.refused: list[Mapping[str, str]] = []  # the RunInstances calls answered with `code`
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                params = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}
                if params.get("Action") == "RunInstances" and proxy.fail(params):
                    proxy.refused.append(params)
                    answer = ec2_error(proxy.code, "We currently do not have sufficient capacity in the Availability Zone.")
                    self._answer(500, {"Content-Type": "text/xml"}, answer)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                request = urllib.request.Request(proxy.upstream + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=30) as up:
                        self._answer(up.status, dict(up.headers), up.read())
                except urllib.error.HTTPError as err:
                    self._answer(err.code, dict(err.headers), err.read())

            def _answer(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def loopback_subnet(client: Any) -> str:
    """A VPC and subnet on 127.0.0.0/24 in the moto server `client` talks to; returns the subnet id.

    moto gives an instance launched there a private IP such as 127.0.0.4, which Linux routes to the
    loopback interface: a KServe v2 server listening on 0.0.0.0:PORT on this machine answers for every
    such instance at `ip:PORT`, so instances can become READY (real EC2 would never accept this CIDR).
    """
    vpc = client.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    return str(client.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/24")["Subnet"]["SubnetId"])
