"""Start a real `kairosd serve` subprocess on free ports with a generated config, for tests and benchmarks."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kairosd.backends.process import ChildProcess, free_port, wait_ready_sync

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

    def stop(self, grace_s: float = 30.0) -> int | None:
        return self.child.stop(grace_s)


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
) -> dict[str, int]:
    """A config on free ports; `endpoints_toml` ([[fleet.endpoints]] tables) is appended after the static fleet."""
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

[scheduler]
policy = "{policy}"
{extra_scheduler}

[models]
repository = "{REPO / 'model_repository'}"
profiles = "{REPO / 'profiles' / 'local'}"

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


def start_daemon(config_path: Path, ports: Mapping[str, int], timeout_s: float = 240.0) -> RunningDaemon:
    child = ChildProcess(
        [sys.executable, "-m", "kairosd", "serve", "--config", str(config_path)], name="kairosd-serve"
    ).start()
    try:
        wait_ready_sync(f"127.0.0.1:{ports['grpc']}", timeout_s, child)
    except BaseException:
        child.stop(5)
        raise
    return RunningDaemon(
        child, f"127.0.0.1:{ports['grpc']}", f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['metrics']}", config_path
    )
