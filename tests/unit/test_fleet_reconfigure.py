"""A reload applied to a built fleet: budget, decide parameters, period, prices and the planner swap; the
observed load window is kept, no plan from before is reused."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from kairosd import config
from kairosd.autoscale.target import PlannerTarget
from kairosd.fleet_setup import build_fleet, reconfigure_fleet
from kairosd.planner.joint import FleetPlan
from kairosd.providers.base import ProviderInstance, ProviderState
from kairosd.registry import Registry

REPO = Path(__file__).resolve().parents[2]


def test_reconfigure_swaps_fleet_settings_and_rebuilds_the_planner() -> None:
    old = config.load(REPO / "configs" / "autoscale.toml")
    profiles = config.load_profiles(old)
    types = {**old.types, "ort-1t": replace(old.types["ort-1t"], price_usd_per_hour=0.08)}
    new = replace(old, types=types, qos_s={**old.qos_s, "dlrm": 0.04},
                  autoscaler=replace(old.autoscaler, budget_usd_per_hour=0.2, down_periods=2, period_s=1.0))

    async def run() -> None:
        fleet = build_fleet(old, Registry(), profiles)
        target = fleet.target_fn
        assert isinstance(target, PlannerTarget)
        target.last_plan = FleetPlan.__new__(FleetPlan)  # a plan made under the old settings
        # one billed instance, launched at the old price
        fleet.listing = [ProviderInstance(id="i-1", type="ort-1t", state=ProviderState.RUNNING, address=None,
                                          price_usd_per_hour=0.05)]
        await reconfigure_fleet(fleet, new, profiles)
        assert fleet.budget_usd_per_hour == 0.2 and fleet.params.down_periods == 2 and fleet.period_s == 1.0
        swapped = fleet.target_fn
        assert isinstance(swapped, PlannerTarget) and swapped is not target
        assert swapped.window is target.window and swapped.last_plan is None and swapped.planner is not target.planner
        assert fleet.committed_usd_per_hour() == 0.08 and [m.price_usd_per_hour for m in fleet.members()] == [0.08]
        assert fleet.stats.committed_usd_per_hour == 0.08
        offered = {o.type: o.price_usd_per_hour for o in await fleet.providers[0].offerings()}
        assert offered["ort-1t"] == 0.08 and offered["triton"] == 0.12

    asyncio.run(run())


def test_a_static_fleets_budget_follows_its_prices() -> None:
    old = config.load(REPO / "configs" / "local.toml")
    profiles = config.load_profiles(old)
    new = replace(old, types={n: replace(t, price_usd_per_hour=t.price_usd_per_hour * 2) for n, t in old.types.items()})

    async def run() -> None:
        fleet = build_fleet(old, Registry(), profiles)
        before = fleet.budget_usd_per_hour
        await reconfigure_fleet(fleet, new, profiles)
        assert abs(fleet.budget_usd_per_hour - 2 * before) < 1e-9

    asyncio.run(run())
