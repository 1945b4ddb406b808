"""Build the fleet a config describes: its providers, its target (static counts or the planner's), its budget."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from kairosd.autoscale.types import AutoscaleParams
from kairosd.config import Config
from kairosd.fleet import Fleet, TargetFn, budget_for, static_target
from kairosd.profiles import ProfileTable
from kairosd.providers.base import Provider
from kairosd.providers.local import LocalProvider
from kairosd.providers.static import StaticProvider
from kairosd.registry import Registry

if TYPE_CHECKING:
    from kairosd.scheduler import Scheduler


def config_base_dir(config: Config) -> Path | None:
    """The directory relative paths in the config are read from (as `kairosd.config.load` resolves them)."""
    if config.path is None:
        return None
    base = config.path.resolve().parent
    return base.parent if base.name == "configs" else base


def autoscale_params(config: Config) -> AutoscaleParams:
    a = config.autoscaler
    return AutoscaleParams(
        up_periods=a.up_periods, down_periods=a.down_periods, max_concurrent_launches=a.max_concurrent_launches,
        max_disruption_fraction=a.max_disruption_fraction, startup_grace_s=a.startup_grace_s,
        suspect_grace_s=a.suspect_grace_s, drain_timeout_s=a.drain_timeout_s, unavailable_s=a.unavailable_s,
    )


def build_provider(config: Config) -> Provider:
    """The managed provider the config names (`local` unless `[autoscaler] provider = "ec2"`)."""
    a = config.autoscaler
    if a.enabled and a.provider == "ec2":
        from kairosd.providers.ec2 import Ec2Provider  # boto3 only where EC2 is used
        from kairosd.providers.ec2_config import parse_ec2

        settings = parse_ec2(config.provider_raw["ec2"], config.types, base_dir=config_base_dir(config))
        return Ec2Provider(settings, a.fleet_name, config.types)
    types = config.types if a.enabled else {t: config.types[t] for t in config.fleet}
    return LocalProvider(types, str(config.model_repository), fleet_name=a.fleet_name)


def budget_and_params(config: Config) -> tuple[float, AutoscaleParams]:
    """The fleet's budget ($/h: the autoscaler's, or a static fleet's own cost at the configured prices)
    and `decide`'s parameters (a static fleet starts whole: every instance at once)."""
    a = config.autoscaler
    params = autoscale_params(config)
    if a.enabled:
        return a.budget_usd_per_hour, params
    counts = Counter(config.fleet) + Counter(ep.type for ep in config.endpoints)
    prices = {t.name: t.price_usd_per_hour for t in config.types.values()}
    return budget_for(counts, prices), replace(params, max_concurrent_launches=max(sum(config.fleet.values()), 1))


def build_fleet(config: Config, registry: Registry, profiles: ProfileTable, scheduler: Scheduler | None = None) -> Fleet:
    a = config.autoscaler
    providers: list[Provider] = []
    if a.enabled or sum(config.fleet.values()) > 0:
        providers.append(build_provider(config))
    if config.endpoints:
        providers.append(StaticProvider(config.endpoints, config.types, fleet_name=a.fleet_name))
    endpoint_counts = Counter(ep.type for ep in config.endpoints)
    target: TargetFn
    if a.enabled:
        from kairosd.autoscale.target import PlannerTarget

        target = PlannerTarget.from_config(config, profiles, scheduler, extra=endpoint_counts)
    else:
        target = static_target(Counter(config.fleet) + endpoint_counts)
    budget, params = budget_and_params(config)
    return Fleet(
        registry, profiles, providers, target, budget, params,
        models=sorted(config.qos_s), fleet_name=a.fleet_name, period_s=a.period_s,
        slots={t.name: t.slots for t in config.types.values()}, max_message_bytes=config.server.max_request_bytes,
        terminate_on_stop=a.terminate_on_stop,
    )


async def reconfigure_fleet(fleet: Fleet, config: Config, profiles: ProfileTable) -> None:
    """Apply a reloaded config to a running fleet built by `build_fleet` from a config that differs only
    in reloadable settings (`kairosd.reload`): budget, decide's parameters, period, prices, and the
    planner (new prices, QoS targets, budget, objective; the observed load window is kept)."""
    from kairosd.autoscale.target import PlannerTarget

    budget, params = budget_and_params(config)
    target = fleet.target_fn
    if isinstance(target, PlannerTarget):
        target = target.reconfigured(config, profiles)
    await fleet.reconfigure(
        budget, params, target, period_s=config.autoscaler.period_s,
        prices={t.name: t.price_usd_per_hour for t in config.types.values()},
        terminate_on_stop=config.autoscaler.terminate_on_stop,
    )
