"""The fleet's status as data (JSON for /kairos/fleet and `kairosd fleet status`) and as a table."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from kairosd.autoscale.decide import committed_usd_per_hour
from kairosd.autoscale.types import Action, Drain, Launch, Terminate
from kairosd.config import Config
from kairosd.fleet import Fleet


def action_dict(a: Action) -> dict[str, Any]:
    if isinstance(a, Launch):
        return {"kind": "launch", "type": a.type, "count": a.count, "reason": a.reason}
    if isinstance(a, Drain):
        return {"kind": "drain", "id": a.id, "reason": a.reason}
    assert isinstance(a, Terminate)
    return {"kind": "terminate", "id": a.id, "reason": a.reason}


def fleet_status(fleet: Fleet, config: Config) -> dict[str, Any]:
    now_unix = time.time()
    members = {m.id: m for m in fleet.members()}
    instances = []
    for p in fleet.listing:
        m = members.get(p.id)
        inst = fleet.registry.get(p.id)
        instances.append({
            "id": p.id, "type": p.type, "pool": m.type if m is not None else p.type,
            "state": m.state.value if m is not None else p.state.value,
            "provider_state": p.state.value, "price_usd_per_hour": p.price_usd_per_hour,
            "age_s": round(now_unix - p.launched_at_s, 1) if p.launched_at_s else None,
            "address": p.address, "http_address": p.http_address, "in_flight": inst.in_flight if inst is not None else 0,
            "served": inst.served_total if inst is not None else 0, "managed": m.managed if m is not None else True,
        })
    target = getattr(fleet.target_fn, "last_plan", None)
    demand = getattr(fleet.target_fn, "last_demand", [])
    decision = fleet.last_decision
    return {
        "autoscaler": config.autoscaler.enabled,
        "provider": fleet.managed.name if fleet.managed is not None else "static",
        "fleet_name": fleet.fleet_name,
        "budget_usd_per_hour": fleet.budget_usd_per_hour,
        "committed_usd_per_hour": committed_usd_per_hour(members.values()),
        "target": dict(fleet.stats.target),
        "acted_target": dict(fleet.state.acted_target),
        "objective": config.autoscaler.objective if config.autoscaler.enabled else "static",
        "plan": None if target is None else {"counts": target.counts, "cost_usd_per_hour": target.cost_usd_per_hour,
                                             "multiple": target.multiple, "reason": target.reason},
        "observed": [{"model": d.model, "rate_qps": round(d.rate_qps, 3)} for d in demand],
        "instances": instances,
        "last_actions": [action_dict(a) for a in decision.actions] if decision is not None else [],
        "notes": list(decision.notes) if decision is not None else [],
        "actions_total": dict(fleet.stats.actions),
    }


def render_status(status: Mapping[str, Any]) -> str:
    """A table of the instances, then committed $/h against the budget, target and the last plan."""
    rows: Sequence[Mapping[str, Any]] = status.get("instances", [])
    lines = [f"{'instance':34s} {'pool':22s} {'state':12s} {'$/h':>8s} {'age':>8s} {'in flight':>9s}"]
    for r in sorted(rows, key=lambda r: (r.get("pool", r["type"]), r["id"])):
        age = f"{r['age_s']:.0f}s" if r.get("age_s") is not None else "-"
        lines.append(f"{r['id']:34s} {r.get('pool', r['type']):22s} {r['state']:12s} {r['price_usd_per_hour']:8.4f} {age:>8s} "
                     f"{r.get('in_flight', 0):9d}")
    lines.append("")
    lines.append(f"committed {status['committed_usd_per_hour']:.4f} $/h of budget {status['budget_usd_per_hour']:.4f} $/h "
                 f"({status['provider']} provider, fleet {status['fleet_name']!r}, objective {status['objective']})")
    lines.append("target: " + (", ".join(f"{n}×{t}" for t, n in sorted(status["target"].items()) if n) or "(empty)"))
    if status.get("observed"):
        lines.append("observed: " + ", ".join(f"{o['model']} {o['rate_qps']:.1f} q/s" for o in status["observed"]))
    plan = status.get("plan")
    if plan:
        lines.append(f"plan: {plan['reason']}")
    for n in status.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)
