"""plan_reload: which changed keys a SIGHUP applies live and which need a restart (refusing the reload)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from kairosd import config
from kairosd.config import Config
from kairosd.reload import Change, flatten, plan_reload

REPO = Path(__file__).resolve().parents[2]


def make_config(**kw: object) -> Config:
    """configs/autoscale.toml with fields replaced: `section__field=value` (e.g. server__grpc_port=9001)."""
    c = config.load(REPO / "configs" / "autoscale.toml")
    for key, value in kw.items():
        section, name = key.split("__")
        c = replace(c, **{section: replace(getattr(c, section), **{name: value})})
    return c


def test_identical_configs_change_nothing() -> None:
    plan = plan_reload(make_config(), make_config())
    assert plan.changed == [] and plan.refused == [] and plan.applies


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"scheduler__tick_ms": 2.0}, "scheduler.tick_ms"),
        ({"scheduler__policy": "fcfs"}, "scheduler.policy"),
        ({"scheduler__policy_params": {"lookahead": 4}}, "scheduler.policy_params.lookahead"),
        ({"scheduler__default_timeout_s": 5.0}, "scheduler.default_timeout_s"),
        ({"scheduler__max_attempts": 1}, "scheduler.max_attempts"),
        ({"server__drain_timeout_s": 5.0}, "server.drain_timeout_s"),
        ({"autoscaler__budget_usd_per_hour": 0.2}, "autoscaler.budget_usd_per_hour"),
        ({"autoscaler__objective": "max_throughput"}, "autoscaler.objective"),
        ({"autoscaler__period_s": 1.0}, "autoscaler.period_s"),
        ({"autoscaler__down_periods": 2}, "autoscaler.down_periods"),
        ({"autoscaler__startup_grace_s": 60.0}, "autoscaler.startup_grace_s"),
    ],
)
def test_reloadable_settings_apply(kw: dict[str, object], key: str) -> None:
    plan = plan_reload(make_config(), make_config(**kw))
    assert plan.applies and plan.changed_keys == [key] and plan.refused == []


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"server__grpc_port": 9001}, "server.grpc_port"),
        ({"server__http_port": 9000}, "server.http_port"),
        ({"server__metrics_port": 0}, "server.metrics_port"),
        ({"server__host": "0.0.0.0"}, "server.host"),
        ({"server__max_request_bytes": 1024}, "server.max_request_bytes"),
        ({"autoscaler__enabled": False}, "autoscaler.enabled"),
        ({"autoscaler__provider": "ec2"}, "autoscaler.provider"),
        ({"autoscaler__fleet_name": "other"}, "autoscaler.fleet_name"),
        ({"autoscaler__window_s": 5.0}, "autoscaler.window_s"),
    ],
)
def test_settings_that_need_a_restart_refuse_the_reload(kw: dict[str, object], key: str) -> None:
    plan = plan_reload(make_config(), make_config(**kw))
    assert not plan.applies and plan.refused_keys == [key]


def test_qos_and_prices_apply_but_model_and_type_sets_need_a_restart() -> None:
    old = make_config()
    qos = replace(old, qos_s={**old.qos_s, "dlrm": 0.040})
    assert plan_reload(old, qos).changed == [Change("models.qos_ms.dlrm", 25.0, 40.0)]
    priced = replace(old, types={**old.types, "ort-1t": replace(old.types["ort-1t"], price_usd_per_hour=0.07)})
    assert plan_reload(old, priced).changed_keys == ["types.ort-1t.price_usd_per_hour"]
    threads = replace(old, types={**old.types, "ort-1t": replace(old.types["ort-1t"], threads=4)})
    assert plan_reload(old, threads).refused_keys == ["types.ort-1t.threads"]
    fewer_models = replace(old, qos_s={"dlrm": 0.025})
    assert "models.qos_ms" in plan_reload(old, fewer_models).refused_keys
    fewer_types = replace(old, types={k: v for k, v in old.types.items() if k != "triton"})
    assert "types" in plan_reload(old, fewer_types).refused_keys
    moved = replace(old, model_repository=Path("/elsewhere"), profiles_dir=Path("/p"))
    assert plan_reload(old, moved).refused_keys == ["models.profiles", "models.repository"]


def test_one_restart_key_refuses_the_whole_reload_and_names_each_key() -> None:
    old = make_config()
    new = make_config(server__grpc_port=9001, autoscaler__budget_usd_per_hour=0.2)
    new = replace(new, qos_s={**new.qos_s, "ncf": 0.02})
    plan = plan_reload(old, new)
    assert not plan.applies
    assert plan.refused_keys == ["server.grpc_port"]
    assert plan.changed_keys == ["autoscaler.budget_usd_per_hour", "models.qos_ms.ncf"]
    assert str(plan.refused[0]) == "server.grpc_port: 8001 → 9001"


def test_static_fleet_and_endpoints_need_a_restart() -> None:
    old = config.load(REPO / "configs" / "local.toml")
    new = replace(old, fleet={**old.fleet, "ort-1t": 3})
    assert plan_reload(old, new).refused_keys == ["fleet.static"]


def test_provider_tables_are_compared_but_never_shown() -> None:
    old = config.load(REPO / "configs" / "aws.toml")
    raw = dict(old.provider_raw)
    raw["ec2"] = {**raw["ec2"], "region": "eu-west-1"}
    plan = plan_reload(old, replace(old, provider_raw=raw))
    assert plan.refused_keys == ["provider.ec2.region"]
    assert str(plan.refused[0]) == "provider.ec2.region (changed)"


def test_every_setting_has_a_key() -> None:
    keys = dict(flatten(make_config()))
    assert {"server.drain_timeout_s", "scheduler.tick_ms", "models.qos_ms.dlrm", "types.ort-1t.price_usd_per_hour",
            "autoscaler.budget_usd_per_hour", "fleet.static", "fleet.endpoints"} <= set(keys)
