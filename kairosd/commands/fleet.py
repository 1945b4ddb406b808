"""`kairosd fleet status|plan`: the running fleet, and the target and actions for a given load (a dry run)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

HELP = "the fleet: `status` (instances, committed $/h vs budget) and `plan` (target and actions for a load; dry run)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="fleet_command", required=True, metavar="SUBCOMMAND")
    st = sub.add_parser("status", help="instances, type, state, $/h, age; committed $/h against the budget")
    st.add_argument("--config", default="configs/autoscale.toml")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    pl = sub.add_parser("plan", help="the target for the observed (or given) load and the actions it would take")
    pl.add_argument("--config", default="configs/autoscale.toml")
    pl.add_argument("--rate", action="append", default=[], metavar="MODEL=QPS",
                    help="the load to plan for, per model (repeatable); default: what the running daemon observes")
    pl.add_argument("--batch-median", type=float, default=None,
                    help="median of the log-normal batch mix for --rate (default: [autoscaler] prior_batch_median)")
    pl.add_argument("--budget", type=float, default=None, help="plan for another budget ($/h)")
    pl.add_argument("--objective", choices=["max_throughput", "min_cost"], default=None)
    pl.add_argument("--selector", choices=["kairos", "kairos_plus"], default=None,
                    help="kairos_plus: refine a max_throughput plan by the Kairos+ walk, as the "
                    "daemon does (default: the config's autoscaler.selector)")


def admin_address(cfg: Any) -> str:
    """host:port of the daemon's admin endpoints ([server] metrics_host:metrics_port; a wildcard host
    is reached on loopback)."""
    host = cfg.server.metrics_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{cfg.server.metrics_port}" if ":" in host else f"{host}:{cfg.server.metrics_port}"


def _daemon_status(cfg: Any) -> dict[str, Any] | None:
    """The running daemon's /kairos/fleet (on the admin port), or None when no daemon answers there."""
    if not cfg.server.metrics_port:
        return None
    url = f"http://{admin_address(cfg)}/kairos/fleet"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _provider_status(cfg: Any) -> dict[str, Any] | None:
    """Without a daemon: the EC2 fleet as the provider lists it (local fleets live only with their daemon)."""
    if not (cfg.autoscaler.enabled and cfg.autoscaler.provider == "ec2"):
        return None
    from kairosd.fleet_setup import build_provider

    async def listing() -> list[Any]:
        provider = build_provider(cfg)
        try:
            return await provider.list()
        finally:
            await provider.close()

    now = time.time()
    instances = [
        {"id": p.id, "type": p.type, "state": p.state.value, "provider_state": p.state.value,
         "price_usd_per_hour": p.price_usd_per_hour, "age_s": now - p.launched_at_s if p.launched_at_s else None,
         "address": p.address, "in_flight": 0, "managed": True}
        for p in asyncio.run(listing())
    ]
    billed = [i for i in instances if i["state"] != "terminated"]
    return {"autoscaler": True, "provider": "ec2", "fleet_name": cfg.autoscaler.fleet_name,
            "budget_usd_per_hour": cfg.autoscaler.budget_usd_per_hour,
            "committed_usd_per_hour": sum(i["price_usd_per_hour"] for i in billed), "target": {},
            "objective": cfg.autoscaler.objective, "instances": instances, "observed": [], "plan": None,
            "notes": ["no kairosd answers on this config's admin port (server.metrics_port): the provider's list, "
                      "without target or load"]}


def run(args: argparse.Namespace) -> int:
    from kairosd import config as config_mod
    from kairosd.errors import KairosError, Unavailable

    cfg = config_mod.load(args.config)
    status = _daemon_status(cfg)
    if status is None:
        try:
            status = _provider_status(cfg)
        except KairosError as exc:
            if args.fleet_command == "status":
                raise
            print(f"(the provider's list is not available: {exc}; planning from an empty fleet)")
    if args.fleet_command == "status":
        if status is None:
            if not cfg.server.metrics_port:
                raise Unavailable(f"{args.config}: server.metrics_port = 0, so kairosd serves no admin endpoints and "
                                  "its fleet cannot be read; set a metrics_port (and restart kairosd)")
            raise Unavailable(f"no kairosd answers on its admin port {admin_address(cfg)} (server.metrics_host:"
                              f"metrics_port; start it with `kairosd serve --config {args.config}`); a local fleet "
                              "exists only while its daemon runs")
        from kairosd.fleet_status import render_status

        print(json.dumps(status, indent=2) if args.json else render_status(status))
        return 0
    return _plan(args, cfg, status)


def _plan(args: argparse.Namespace, cfg: Any, status: dict[str, Any] | None) -> int:
    import dataclasses

    from kairosd.autoscale.decide import configuration, decide
    from kairosd.autoscale.target import PRIOR_SIGMA, config_planner, config_refiner, lognormal_pmf
    from kairosd.autoscale.types import DecideState, Member, MemberState
    from kairosd.daemon import load_profiles
    from kairosd.errors import ConfigError, KairosError
    from kairosd.fleet_setup import autoscale_params
    from kairosd.planner.demand import ModelDemand
    from kairosd.pools import pool_offerings
    from kairosd.providers.base import Offering

    a = cfg.autoscaler
    if args.budget is not None or args.objective is not None or args.selector is not None or not a.enabled:
        a = dataclasses.replace(a, enabled=True, budget_usd_per_hour=args.budget or a.budget_usd_per_hour,
                                objective=args.objective or a.objective, selector=args.selector or a.selector)
        if a.budget_usd_per_hour <= 0:
            raise ConfigError("give --budget: the config has no [autoscaler] budget_usd_per_hour")
        cfg = dataclasses.replace(cfg, autoscaler=a)
    profiles = load_profiles(cfg)
    pmf = lognormal_pmf(args.batch_median or a.prior_batch_median, PRIOR_SIGMA, profiles.max_batch)
    rates = {m: 0.0 for m in profiles.models}
    if args.rate:
        for item in args.rate:
            model, _, qps = item.partition("=")
            if model not in rates or not qps:
                raise ConfigError(f"--rate {item!r}: give MODEL=QPS with MODEL one of {list(rates)}")
            rates[model] = float(qps)
    elif status is not None and status.get("observed"):
        rates.update({o["model"]: float(o["rate_qps"]) for o in status["observed"]})
    demand = [ModelDemand(m, r, pmf) for m, r in rates.items()]
    plan = config_planner(cfg, profiles)(demand, frozenset())
    by = "the queue-aware estimate"
    refiner = config_refiner(cfg, profiles)
    print("load: " + ", ".join(f"{m} {r:g} q/s" for m, r in rates.items()))
    if refiner is not None and refiner.applies(demand, plan):
        try:
            plan = refiner.refine_now(demand, frozenset(), plan)
            by = "the Kairos+ walk's simulation"
        except KairosError as exc:
            print(f"kairos_plus gave no choice ({exc}): the one-shot plan stands")
    print(f"target: {', '.join(f'{n}×{t}' for t, n in plan.pools.items() if n) or '(empty)'} "
          f"({plan.cost_usd_per_hour:.4f} $/h of {a.budget_usd_per_hour:.4f}; serves {plan.multiple:.2f}× the load by "
          f"{by}, ≤ {plan.bound_multiple:.2f}× by the bound)")
    print(f"why: {plan.reason}")
    members = []
    now = time.monotonic()
    for i in (status or {}).get("instances", []):
        if i["state"] == "terminated":
            continue
        state = MemberState(i["state"]) if i["state"] in {s.value for s in MemberState} else MemberState.TERMINATING
        launched = now - (i.get("age_s") or 0.0)
        members.append(Member(i["id"], i.get("pool", i["type"]), state, i["price_usd_per_hour"], launched, now,
                              i.get("in_flight", 0), i.get("managed", True)))
    offerings = pool_offerings({t.name: Offering(t.name, t.price_usd_per_hour) for t in cfg.types.values()}, plan.pools)
    params = dataclasses.replace(autoscale_params(cfg), up_periods=1, down_periods=1)
    current = configuration(members)
    decision = decide(plan.pools, members, offerings, a.budget_usd_per_hour, now,
                      DecideState(acted_target=current, started=bool(members)), params)
    print(f"current fleet: {', '.join(f'{n}×{t}' for t, n in sorted(current.items())) or '(empty)'}"
          + ("" if status is not None else " (no daemon running)"))
    print("actions this period (once the target has held; later periods continue):" if decision.actions else "actions: none")
    for act in decision.actions:
        print(f"  {type(act).__name__.lower():9s} {getattr(act, 'type', '') or getattr(act, 'id', '')}"
              f"{' × ' + str(act.count) if hasattr(act, 'count') else ''}  ({act.reason})")
    for note in decision.notes:
        print(f"  note: {note}")
    return 0
