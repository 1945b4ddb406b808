"""Config parsing: the shipped example loads; every error names the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairosd import config
from kairosd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_local_example_loads() -> None:
    cfg = config.load(REPO / "configs" / "local.toml")
    assert cfg.server.grpc_port == 8001 and cfg.server.http_port == 8000 and cfg.server.metrics_port == 8002
    assert cfg.scheduler.policy == "kairos"
    assert cfg.model_repository == REPO / "model_repository"
    assert set(cfg.qos_s) == {"dlrm", "ncf"}
    assert {t.backend for t in cfg.types.values()} == {"onnxruntime", "triton"}
    assert sum(cfg.fleet.values()) >= 3


MINIMAL = """
[models.qos_ms]
dlrm = 50
[types.a]
backend = "onnxruntime"
[fleet.static]
a = 1
"""


@pytest.mark.parametrize(
    "extra, match",
    [
        ("[scheduler]\npolicy = 'fifo'", "allowed.*kairos"),
        ("[scheduler]\ntick = 3", "scheduler.tick.*allowed"),
        ("[server]\ngrpc_port = 'x'", "server.grpc_port.*integer"),
        ("[server]\nhttp_port = -1", "server.http_port.*≥ 0"),
        ("[bogus]\nx = 1", r"unknown section \[bogus\]"),
        ("[types.b]\nbackend = 'tpu'", "types.b.backend.*allowed"),
        ("[types.c]\nthreads = 2", "types.c.backend is required"),
        ("[[fleet.endpoints]]\ntype = 'zz'\naddress = 'h:1'", r"fleet.endpoints\[0\].type.*unknown"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, extra: str, match: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL + "\n" + extra + "\n")
    with pytest.raises(ConfigError, match=match):
        config.load(p)


def test_fleet_referencing_unknown_type(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL.replace("a = 1", "a = 1\nb = 2"))
    with pytest.raises(ConfigError, match="fleet.static.b = 2: unknown instance type"):
        config.load(p)


def test_missing_qos(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL.replace("[models.qos_ms]\ndlrm = 50", ""))
    with pytest.raises(ConfigError, match="qos_ms"):
        config.load(p)


def test_not_toml(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(p)
