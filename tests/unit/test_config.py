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
        ("[scheduler.policy_params]\ntail = 'no'", r"scheduler.policy_params.tail = 'no': must be true.*or false"),
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


# ---- every kind of bad config is refused at load, naming the key, the value and what is allowed --------------

@pytest.mark.parametrize(
    "extra, match",
    [
        # unknown keys and sections, with the nearest valid name
        ("[scheduler]\ntick = 3", r"unknown key scheduler\.tick; did you mean tick_ms\? allowed"),
        ("[server]\ngrpc_prot = 9001", r"unknown key server\.grpc_prot; did you mean grpc_port\?"),
        ("[schedular]\ntick_ms = 3", r"unknown section \[schedular\]; did you mean scheduler\?"),
        ("[autoscaler]\nbudget = 1.0", r"unknown key autoscaler\.budget; did you mean budget_usd_per_hour\?"),
        ("[types.b]\nbackend = 'onnxruntime'\nprice = 0.1", r"unknown key types\.b\.price; did you mean price_usd_per_hour\?"),
        ("[models]\nrepo = 'x'", r"unknown key models\.repo; did you mean repository\?"),
        ("[[fleet.endpoints]]\ntype = 'a'\naddres = 'h:1'", r"unknown key fleet\.endpoints\[0\]\.addres; did you mean address\?"),
        ("[scheduler]\npolicy = 'kairoz'", r"scheduler\.policy = 'kairoz': unknown policy; did you mean 'kairos'\?"),
        # ranges
        ("[scheduler]\ntick_ms = 0", r"scheduler\.tick_ms = 0\.0: must be > 0"),
        ("[scheduler]\ndefault_timeout_s = 0", r"scheduler\.default_timeout_s = 0\.0: must be > 0"),
        ("[scheduler]\nmax_attempts = 0", r"scheduler\.max_attempts = 0: must be ≥ 1"),
        ("[server]\ngrpc_port = 70000", r"server\.grpc_port = 70000: must be in 1\.\.65535"),
        ("[server]\nhttp_port = 0", r"server\.http_port = 0: must be in 1\.\.65535"),
        ("[server]\nmetrics_port = 65536", r"server\.metrics_port = 65536: must be in 0\.\.65535"),
        ("[server]\ngrpc_port = 9000\nhttp_port = 9000",
         r"server\.http_port = 9000: already server\.grpc_port; the ports must be distinct"),
        ("[server]\nmax_request_bytes = 0", r"server\.max_request_bytes = 0: must be > 0"),
        ("[server]\ndrain_timeout_s = -1", r"server\.drain_timeout_s = -1: must be ≥ 0"),
        ("[types.b]\nbackend = 'onnxruntime'\nprice_usd_per_hour = -0.5", r"types\.b\.price_usd_per_hour = -0\.5: must be ≥ 0"),
        ("[types.b]\nbackend = 'onnxruntime'\nslots = 0", r"types\.b\.slots = 0: must be ≥ 1"),
        ("[autoscaler]\nperiod_s = 0", r"autoscaler\.period_s = 0\.0: must be > 0"),
        ("[autoscaler]\nup_periods = 0", r"autoscaler\.up_periods = 0: must be ≥ 1"),
        ("[autoscaler]\nmax_disruption_fraction = 2.0", r"autoscaler\.max_disruption_fraction = 2\.0: must be in \(0, 1\]"),
        # types
        ("[server]\ngrpc_port = 'x'", r"server\.grpc_port = 'x': must be an integer"),
        ("[server]\nhost = 1", r"server\.host = 1: must be a string"),
        ("[scheduler]\npolicy_params = 3", r"scheduler\.policy_params = 3: must be a table"),
        ("[types.b]\nbackend = 'tpu'", r"types\.b\.backend = 'tpu'; allowed"),
        # references inside the file
        ("[[fleet.endpoints]]\ntype = 'zz'\naddress = 'h:1'",
         r"fleet\.endpoints\[0\]\.type = 'zz': unknown instance type; defined types: \['a'\]"),
        ("[autoscaler]\nenabled = true\nbudget_usd_per_hour = 0", r"autoscaler\.budget_usd_per_hour = 0\.0: must be > 0"),
    ],
)
def test_bad_configs_are_refused_naming_key_value_and_allowed(tmp_path: Path, extra: str, match: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL + "\n" + extra + "\n")
    with pytest.raises(ConfigError, match=match):
        config.load(p)


def test_qos_must_be_positive(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL.replace("dlrm = 50", "dlrm = 0"))
    with pytest.raises(ConfigError, match=r"models\.qos_ms\.dlrm = 0\.0: must be > 0 \(ms\)"):
        config.load(p)


def test_static_fleet_naming_an_undefined_type_suggests_the_nearest(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL.replace("[types.a]", "[types.ort-1t]").replace("a = 1", "ort-2t = 1"))
    with pytest.raises(ConfigError, match=r"fleet\.static\.ort-2t = 1: unknown instance type; did you mean ort-1t\?"):
        config.load(p)


# ---- references outside the file: repository, profiles, policy parameters (config.resolve) -------------------

RESOLVABLE = f"""
[models]
repository = "{REPO / 'model_repository'}"
profiles = "{REPO / 'profiles' / 'local'}"
[models.qos_ms]
dlrm = 50
ncf = 20
[types.ort-1t]
backend = "onnxruntime"
price_usd_per_hour = 0.05
[fleet.static]
ort-1t = 1
"""


def _resolve(tmp_path: Path, text: str) -> config.Resolved:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return config.load_checked(p)


def test_a_valid_config_resolves_to_its_models_profiles_and_policy(tmp_path: Path) -> None:
    r = _resolve(tmp_path, RESOLVABLE)
    assert sorted(r.repository) == ["dlrm", "ncf"] and "ort-1t" in r.profiles.types and r.policy.name == "kairos"


def test_a_served_model_missing_from_the_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\.qos_ms names \['bert'\], which models\.repository = .* does not hold"):
        _resolve(tmp_path, RESOLVABLE.replace("ncf = 20", "ncf = 20\nbert = 30"))


def test_a_missing_repository_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\.repository = '.*nowhere': .*not a directory"):
        _resolve(tmp_path, RESOLVABLE.replace(str(REPO / "model_repository"), str(tmp_path / "nowhere")))


def test_a_type_without_a_latency_profile_is_refused(tmp_path: Path) -> None:
    text = RESOLVABLE.replace("[fleet.static]", "[types.big]\nbackend = \"onnxruntime\"\nthreads = 8\n[fleet.static]")
    with pytest.raises(ConfigError, match=r"types \['big'\]: no latency profile in models\.profiles"):
        _resolve(tmp_path, text.replace("ort-1t = 1", "ort-1t = 1\nbig = 1"))


def test_policy_parameters_the_policy_does_not_take_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scheduler\.policy_params = \{'bogus': 1\}"):
        _resolve(tmp_path, RESOLVABLE + "[scheduler.policy_params]\nbogus = 1\n")


def test_every_shipped_config_passes_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    from kairosd.cli import main

    for name in ("local.toml", "autoscale.toml", "aws.toml", "emulated.toml"):
        assert main(["check-config", str(REPO / "configs" / name)]) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and f"{name}: ok: models " in out, out


def test_check_config_exits_2_with_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kairosd.cli import main

    p = tmp_path / "c.toml"
    p.write_text(RESOLVABLE + "[scheduler]\ntick_ms = 0\n")
    assert main(["check-config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "kairosd check-config: scheduler.tick_ms = 0.0: must be > 0" in err, err
    p.write_text(RESOLVABLE)
    assert main(["check-config", str(p)]) == 0
    assert "ok: models dlrm 50 ms, ncf 20 ms; policy kairos; static fleet of 1 instances (1×ort-1t)" in capsys.readouterr().out
