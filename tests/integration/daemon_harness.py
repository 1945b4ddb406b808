"""Start a real `kairosd serve` subprocess on free ports with a generated config, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kairosd.backends.process import ChildProcess, free_port, wait_ready_sync
from kairosd.errors import Unavailable

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningDaemon:
    child: ChildProcess
    grpc_url: str
    http_url: str
    metrics_url: str
    config_path: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics_url}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric_values(self, name: str) -> dict[str, float]:
        """{label string: value} for every sample of `name` (label string '' when none)."""
        out = {}
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                key, value = line.rsplit(" ", 1)
                out[key[len(name):]] = float(value)
        return out

    def fleet(self) -> dict[str, Any]:
        """The daemon's /kairos/fleet on its admin (metrics) port (what `kairosd fleet status --json` prints)."""
        with urllib.request.urlopen(f"http://{self.metrics_url}/kairos/fleet", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def stop(self, grace_s: float = 30.0) -> int | None:
        return self.child.stop(grace_s)


def children(pid: int) -> dict[int, list[bytes]]:
    """The live child processes of `pid` (read from /proc), each with its command line."""
    out: dict[int, list[bytes]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == pid:
            out[int(p.name)] = argv
    return out


def workers_toml() -> str:
    """`workers = N` for [server] when KAIROSD_TEST_WORKERS=N (N > 1): the suite run with several
    front-end processes under one dispatcher (`KAIROSD_TEST_WORKERS=2 python -m pytest tests/integration`)."""
    n = int(os.environ.get("KAIROSD_TEST_WORKERS", "1"))
    return f"workers = {n}" if n > 1 else ""


def write_config(
    path: Path,
    *,
    fleet: Mapping[str, int],
    policy: str = "kairos",
    qos_ms: Mapping[str, float] | None = None,
    max_request_bytes: int = 64 * 1024 * 1024,
    extra_scheduler: str = "",
    types_toml: str | None = None,
    endpoints_toml: str = "",
    extra_toml: str = "",
    profiles: Path | None = None,
    server_toml: str = "",
) -> dict[str, int]:
    """A config on free ports; `endpoints_toml` ([[fleet.endpoints]] tables) is appended after the static fleet.
    `profiles` is the profile directory (default: profiles/local); `server_toml` is appended to [server]."""
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    qos = qos_ms or {"dlrm": 60.0, "ncf": 30.0}
    local = (REPO / "configs" / "local.toml").read_text()
    types = types_toml if types_toml is not None else local[local.index("[types."):local.index("[fleet.static]")]
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
http_port = {ports['http']}
grpc_port = {ports['grpc']}
metrics_port = {ports['metrics']}
max_request_bytes = {max_request_bytes}
{workers_toml()}
{server_toml}

[scheduler]
policy = "{policy}"
{extra_scheduler}

[models]
repository = "{REPO / 'model_repository'}"
profiles = "{profiles or REPO / 'profiles' / 'local'}"

[models.qos_ms]
{chr(10).join(f'{m} = {v}' for m, v in qos.items())}

{types}

{"[fleet.static]" if fleet else ""}
{chr(10).join(f'{t} = {n}' for t, n in fleet.items())}

{endpoints_toml}
{extra_toml}
"""
    )
    return ports


def wait_http_live(url: str, timeout_s: float, child: ChildProcess, path: str = "/v2/health/live") -> None:
    """Poll HTTP `path` at `url` ("host:port") until it answers 200; Unavailable on timeout or exit."""
    deadline = time.monotonic() + timeout_s
    while True:
        if child.returncode is not None:
            raise Unavailable(f"{child.name} exited with code {child.returncode}; its output:\n{child.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://{url}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise Unavailable(f"{url} not live after {timeout_s:.0f} s; its output:\n{child.log_tail()}")
        time.sleep(0.05)


def start_daemon(
    config_path: Path,
    ports: Mapping[str, int],
    timeout_s: float = 240.0,
    *,
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    log_path: Path | None = None,
    tls: bool = False,
) -> RunningDaemon:
    """`kairosd serve` on the config (with `env`, default: this process's environment); waits for gRPC
    ServerReady, or with `wait_ready=False` only for HTTP liveness and the admin port (an autoscaled fleet
    that may have no READY instance yet), or with `tls=True` (client ports need certificates or tokens) for the admin
    port's /metrics, which opens after the client ports. Its output goes to `log_path` (kept) or a
    temporary file."""
    child = ChildProcess(
        [sys.executable, "-m", "kairosd", "serve", "--config", str(config_path)], name="kairosd-serve", env=env,
        log_path=log_path,
    ).start()
    try:
        if tls:
            wait_http_live(f"127.0.0.1:{ports['metrics']}", timeout_s, child, path="/metrics")
        elif wait_ready:
            wait_ready_sync(f"127.0.0.1:{ports['grpc']}", timeout_s, child)
        else:
            wait_http_live(f"127.0.0.1:{ports['http']}", timeout_s, child)
            # the admin port opens after the client ports: /kairos/fleet and /metrics answer from here on
            wait_http_live(f"127.0.0.1:{ports['metrics']}", timeout_s, child, path="/metrics")
    except BaseException:
        child.stop(5)
        raise
    return RunningDaemon(
        child, f"127.0.0.1:{ports['grpc']}", f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['metrics']}", config_path
    )


def wait_until(what: str, pred: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> Any:
    """`pred()`'s first true value, polled every `interval_s`; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(interval_s)
