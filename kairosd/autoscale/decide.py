"""The autoscaler's pure decision: target, fleet, offerings, budget, now and memory → actions as data.

Core rule. Every member in the fleet is billed (LAUNCHING, READY, SUSPECT, DRAINING, TERMINATING) until
the provider lists it terminated, which the caller reflects by dropping it from `fleet`. The committed
cost is the sum of their prices, and a Launch is emitted only if committed + its price ≤ budget, counting
the members still draining or terminating. Removing members never lowers the committed cost at once, so
no prefix of the returned actions, and no later period, raises the committed cost above the budget.
Prices and the budget are compared in whole micro-dollars per hour (rounded), so sums such as
0.526 + 0.0961 + ... are exact and order-independent, and a fleet costing exactly the budget fits.

Worked example (budget $1.00/h, up_periods 1): the fleet is one READY a at $0.80/h with nothing in
flight; the planner now wants {B: 1} at $0.90/h. Period 1: {B: 1} costs more than {A: 1}, so it is an
"up" target and adopted at once; a is surplus → Drain(a); Launch(B) waits (0.80 + 0.90 > 1.00, a is
billed until the provider drops it) and a note says so. Period 2: a is DRAINING with nothing in flight →
Terminate(a); still billed, the launch still waits. First period after the provider stops listing a
(the caller drops it from `fleet`): committed is 0 → Launch(B, 1).

The steps (their actions appear in this order, except that launches come last):
1. Health (managed members only, by id): LAUNCHING longer than startup_grace_s → Terminate, and its type
   is unavailable until now + unavailable_s; SUSPECT longer than suspect_grace_s → Drain (Terminate if
   nothing is in flight); DRAINING with nothing in flight or longer than drain_timeout_s → Terminate.
2. Target (stability). A proposal differing from the acted target is "up" when it costs more (Σ count ×
   price) or asks for at least as many of every type; otherwise (same or lower cost, some type reduced:
   scale-in or a swap) it is "down". It is adopted once proposals in the same direction have been seen
   in up_periods / down_periods consecutive periods (the latest proposal is adopted); a proposal equal
   to the acted target, or in the other direction, restarts the count. Without memory (`started`
   False): with no managed member it is the start-up and the target is adopted at once; otherwise the
   fleet's current configuration becomes the acted target (a restarted daemon adopts what it finds). An
   acted target costing more than the budget is replaced at once by a cheaper proposal.
3. Surplus (per type, members counted = LAUNCHING + READY + SUSPECT, unmanaged included; a type absent
   from the acted target wants 0) is chosen in the order SUSPECT, LAUNCHING, READY (fewest in flight,
   newest, id). LAUNCHING and idle SUSPECT members serve nothing and are terminated at once; a SUSPECT
   with queries in flight is drained; READY ones wait for step 5.
4. Deficit (types of the acted target, by name): Launch(type, n) with n capped by the deficit, by
   max_concurrent_launches − managed LAUNCHING, and by the budget; types not offered, offered as
   unavailable, or unavailable in the memory are not launched. Launches come last in the list.
5. READY surplus is drained make-before-break: not while members of the acted target are launching (or
   launched this period), so a swap with budget to spare keeps serving until its replacements are
   READY; a swap whose launch the budget blocks drains first (the worked example). Drains are also held
   while the managed DRAINING + TERMINATING members number max(1, floor(max_disruption_fraction ×
   managed members)) or more; health actions and terminations of members that serve nothing are not
   held by this cap, but count toward it once DRAINING/TERMINATING.
6. Budget: if the counted members (those not already leaving) cost more than the budget, managed ones
   are taken out at once (LAUNCHING, then SUSPECT, then READY; fewest in flight, newest) until they fit;
   over budget, neither step 5 rule holds anything back, and no launch fits.
Unmanaged members are never drained or terminated; they count toward their type and the committed cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from kairosd.autoscale.types import (
    Action,
    AutoscaleParams,
    DecideState,
    Decision,
    Drain,
    Launch,
    Member,
    MemberState,
    Terminate,
)
from kairosd.providers.base import Offering

MICRO_PER_USD = 1_000_000

COUNTED = frozenset({MemberState.LAUNCHING, MemberState.READY, MemberState.SUSPECT})  # count toward the target
LEAVING = frozenset({MemberState.DRAINING, MemberState.TERMINATING})  # on their way out, still billed

# order in which surplus members are taken out: those that serve nothing first
_REMOVAL_RANK = {MemberState.SUSPECT: 0, MemberState.LAUNCHING: 1, MemberState.READY: 2}
# over budget, launches go first (billed, serving nothing, and possibly hours from READY)
_BUDGET_RANK = {MemberState.LAUNCHING: 0, MemberState.SUSPECT: 1, MemberState.READY: 2}


def micro_usd(usd_per_hour: float) -> int:
    """A price or budget in whole micro-dollars per hour (the unit every budget comparison uses)."""
    return round(usd_per_hour * MICRO_PER_USD)


def committed_usd_per_hour(fleet: Iterable[Member]) -> float:
    """What the fleet costs now: every member is billed until the provider lists it terminated."""
    return sum(micro_usd(m.price_usd_per_hour) for m in fleet) / MICRO_PER_USD


def unavailable_types(state: DecideState, now_s: float) -> frozenset[str]:
    """The types the memory keeps out of the plan at `now_s` (a failed start); the planner skips them."""
    return frozenset(t for t, until in state.unavailable_until_s.items() if until > now_s)


def configuration(fleet: Iterable[Member]) -> dict[str, int]:
    """Type → members counting toward a target (LAUNCHING, READY, SUSPECT; unmanaged included)."""
    out: dict[str, int] = {}
    for m in fleet:
        if m.state in COUNTED:
            out[m.type] = out.get(m.type, 0) + 1
    return dict(sorted(out.items()))


def _usd(micro: int) -> str:
    return f"${micro / MICRO_PER_USD:.4f}/h"


def _fmt(config: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{t}: {n}" for t, n in sorted(config.items())) + "}"


def _normal(config: Mapping[str, int]) -> dict[str, int]:
    return {t: n for t, n in sorted(config.items()) if n > 0}


def _prices_micro(fleet: Sequence[Member], offerings: Mapping[str, Offering]) -> dict[str, int]:
    """Type → price: the offering's, else the dearest member's of that type (types no longer offered)."""
    out: dict[str, int] = {}
    for m in fleet:
        out[m.type] = max(out.get(m.type, 0), micro_usd(m.price_usd_per_hour))
    out.update({t: micro_usd(o.price_usd_per_hour) for t, o in offerings.items()})
    return out


def _cost(config: Mapping[str, int], price: Mapping[str, int]) -> int:
    return sum(n * price.get(t, 0) for t, n in config.items())


def is_up(new: Mapping[str, int], cur: Mapping[str, int], price: Mapping[str, int]) -> bool:
    """Whether moving from `cur` to `new` adds capacity: `new` costs more, or has at least as many of
    every type. A same-or-cheaper swap of types counts as a scale-in (it takes serving members out)."""
    if _cost(new, price) > _cost(cur, price):
        return True
    return all(new.get(t, 0) >= n for t, n in cur.items())


def _stable_target(
    target: dict[str, int],
    fleet: Sequence[Member],
    price: Mapping[str, int],
    budget_micro: int,
    state: DecideState,
    params: AutoscaleParams,
    notes: list[str],
) -> tuple[dict[str, int], dict[str, int], int]:
    """(acted target, pending proposal, periods it has been held) after this period's proposal."""
    if not state.started and not state.acted_target:
        if not any(m.managed for m in fleet):
            return target, {}, 0  # start-up: nothing to disrupt
        acted = configuration(fleet)  # no memory, a fleet exists: build from what is there
    else:
        acted = _normal(state.acted_target)
    if target == acted:
        return acted, {}, 0
    if _cost(acted, price) > budget_micro and _cost(target, price) < _cost(acted, price):
        notes.append(f"acted target {_fmt(acted)} costs more than the budget: {_fmt(target)} adopted at once")
        return target, {}, 0
    up = is_up(target, acted, price)
    need = params.up_periods if up else params.down_periods
    same_direction = state.held_periods > 0 and is_up(state.proposed, acted, price) == up
    held = state.held_periods + 1 if same_direction else 1
    if held >= need:
        return target, {}, 0
    notes.append(f"target {_fmt(target)} ({'up' if up else 'down'}) held {held}/{need} periods; still building {_fmt(acted)}")
    return acted, target, held


def decide(
    target: Mapping[str, int],
    fleet: Sequence[Member],
    offerings: Mapping[str, Offering],
    budget_usd_per_hour: float,
    now_s: float,
    state: DecideState,
    params: AutoscaleParams,
) -> Decision:
    """One period's actions toward `target` (type → count) under the budget; see the module docstring."""
    members: dict[str, Member] = {}
    for m in sorted(fleet, key=lambda m: m.id):
        if m.id in members:
            raise ValueError(f"decide: member id {m.id!r} appears twice in the fleet")
        members[m.id] = m
    actions: list[Action] = []
    notes: list[str] = []
    until = {t: u for t, u in sorted(state.unavailable_until_s.items()) if u > now_s}

    def take_out(m: Member, reason: str) -> None:
        """Terminate what serves nothing (LAUNCHING, DRAINING, idle SUSPECT), drain the rest."""
        if m.state in (MemberState.LAUNCHING, MemberState.DRAINING) or (m.state is MemberState.SUSPECT and m.in_flight == 0):
            actions.append(Terminate(m.id, reason))
            members[m.id] = replace(m, state=MemberState.TERMINATING, state_since_s=now_s)
        else:
            actions.append(Drain(m.id, reason))
            members[m.id] = replace(m, state=MemberState.DRAINING, state_since_s=now_s)

    # 1. health
    for m in list(members.values()):
        if not m.managed:
            continue
        age_s = now_s - m.state_since_s
        if m.state is MemberState.LAUNCHING and age_s > params.startup_grace_s:
            take_out(m, f"not ready after {age_s:.0f} s (startup_grace_s {params.startup_grace_s:g})")
            until[m.type] = max(until.get(m.type, now_s), now_s + params.unavailable_s)
        elif m.state is MemberState.SUSPECT and age_s > params.suspect_grace_s:
            take_out(m, f"suspect for {age_s:.0f} s (suspect_grace_s {params.suspect_grace_s:g})")
        elif m.state is MemberState.DRAINING and (m.in_flight == 0 or age_s > params.drain_timeout_s):
            late = f"{m.in_flight} in flight after drain_timeout_s {params.drain_timeout_s:g}"
            take_out(m, "drained" if m.in_flight == 0 else late)

    # 2. target
    price = _prices_micro(fleet, offerings)
    budget_micro = micro_usd(budget_usd_per_hour)
    acted, proposed, held = _stable_target(_normal(target), fleet, price, budget_micro, state, params, notes)

    def counted() -> list[Member]:
        return [m for m in members.values() if m.state in COUNTED]

    def counted_micro() -> int:
        return sum(micro_usd(m.price_usd_per_hour) for m in counted())

    # 3. surplus that serves nothing goes at once; READY surplus is set aside for step 5
    over_budget = counted_micro() > budget_micro
    ready_surplus: list[tuple[Member, str]] = []
    for t, n in configuration(members.values()).items():
        surplus = n - acted.get(t, 0)
        if surplus <= 0:
            continue
        victims = sorted(
            (m for m in counted() if m.type == t and m.managed),
            key=lambda m: (_REMOVAL_RANK[m.state], m.in_flight, -m.launched_at_s, m.id),
        )[:surplus]
        for v in victims:
            why = f"{t}: {n} counted, target {acted.get(t, 0)}"
            if v.state is MemberState.READY:
                ready_surplus.append((v, why))
            else:
                take_out(v, why)
        if surplus > len(victims):
            notes.append(f"{surplus - len(victims)} surplus {t} are unmanaged (never drained)")

    # 4. deficit (the launches are appended last; removals never lower the committed cost they check)
    launches: list[Launch] = []
    committed = sum(micro_usd(m.price_usd_per_hour) for m in members.values())
    unaffordable: list[tuple[int, str, str]] = []  # (count, type, why), noted once removals are known
    launching = sum(m.managed and m.state is MemberState.LAUNCHING for m in members.values())
    have = configuration(members.values())
    for t, want in acted.items():
        deficit = want - have.get(t, 0)
        if deficit <= 0:
            continue
        offering = offerings.get(t)
        if offering is None:
            notes.append(f"launch of {deficit} {t} not possible: not offered by the provider")
            continue
        if not offering.available:
            notes.append(f"launch of {deficit} {t} not possible: the provider offers it as unavailable")
            continue
        if t in until:
            notes.append(f"launch of {deficit} {t} not possible: unavailable until {until[t]:.0f} s (failed start)")
            continue
        p = price[t]
        slots = max(0, params.max_concurrent_launches - launching)
        afford = deficit if p <= 0 else max(0, (budget_micro - committed) // p)
        k = min(deficit, slots, afford)
        if k > 0:
            launches.append(Launch(t, k, f"{t}: {have.get(t, 0)} counted, target {want}"))
            committed += k * p
            launching += k
        if k < deficit and afford < min(deficit, slots):
            unaffordable.append((deficit - k, t, f"committed {_usd(committed)} + {_usd(p)} > budget {_usd(budget_micro)}"))
        elif k < deficit:
            notes.append(f"launch of {deficit - k} {t} waits: {launching} launching, max_concurrent_launches "
                         f"{params.max_concurrent_launches}")

    # 5. READY surplus: make before break, then the disruption cap (neither holds when over budget)
    if ready_surplus and not over_budget:
        coming = sum(m.managed and m.state is MemberState.LAUNCHING and m.type in acted for m in members.values())
        coming += sum(a.count for a in launches)
        if coming:
            notes.append(f"{len(ready_surplus)} surplus READY member(s) kept until {coming} launching member(s) are ready")
            ready_surplus = []
    managed_n = sum(m.managed for m in members.values())
    cap = max(1, math.floor(params.max_disruption_fraction * managed_n))
    disrupted = sum(m.managed and m.state in LEAVING for m in members.values())
    held_back = 0
    for v, why in ready_surplus:
        if disrupted >= cap and not over_budget:
            held_back += 1
            continue
        disrupted += 1
        take_out(v, why)
    if held_back:
        notes.append(f"{held_back} surplus READY member(s) not drained yet: {disrupted} managed members "
                     f"draining/terminating, disruption cap {cap}")

    # 6. budget below what the fleet (not counting members already leaving) costs
    remaining = counted_micro()
    if remaining > budget_micro:
        notes.append(f"over budget: {_usd(remaining)} serving or launching > budget {_usd(budget_micro)}: scaling in at once")
        for v in sorted(
            (m for m in counted() if m.managed),
            key=lambda m: (_BUDGET_RANK[m.state], m.in_flight, -m.launched_at_s, m.id),
        ):
            if remaining <= budget_micro:
                break
            take_out(v, f"budget {_usd(budget_micro)}")
            remaining -= micro_usd(v.price_usd_per_hour)
        if remaining > budget_micro:
            notes.append(f"unmanaged members alone cost {_usd(remaining)} > budget {_usd(budget_micro)}")
    leaving = [m for m in members.values() if m.state in LEAVING]
    for n, t, why in unaffordable:
        if leaving:
            leaving_micro = sum(micro_usd(m.price_usd_per_hour) for m in leaving)
            why += (f"; {len(leaving)} draining/terminating member(s) ({_usd(leaving_micro)})"
                    " are billed until the provider lists them terminated")
        notes.append(f"launch of {n} {t} waits for budget: {why}")
    actions.extend(launches)

    new_state = DecideState(acted_target=acted, proposed=proposed, held_periods=held, unavailable_until_s=until, started=True)
    return Decision(tuple(actions), new_state, tuple(notes))


def apply(fleet: Sequence[Member], actions: Sequence[Action], now_s: float, prices: Mapping[str, float]) -> list[Member]:
    """The fleet after `actions`, as a provider and registry would make it: Launch → new LAUNCHING members
    (ids "new:TYPE:N", unique in the fleet), Drain → DRAINING, Terminate → TERMINATING (still billed; the
    caller drops it once the provider lists it terminated). Raises ValueError on an action `decide` must
    never emit: an unknown id, touching an unmanaged member, draining what is not READY/SUSPECT,
    terminating a READY member."""
    out = {m.id: m for m in fleet}
    for a in actions:
        if isinstance(a, Launch):
            if a.type not in prices:
                raise ValueError(f"apply: no price for type {a.type!r}")
            n = 0
            for _ in range(a.count):
                while f"new:{a.type}:{n}" in out:
                    n += 1
                mid = f"new:{a.type}:{n}"
                out[mid] = Member(mid, a.type, MemberState.LAUNCHING, prices[a.type], now_s, now_s)
            continue
        m = out.get(a.id)
        if m is None:
            raise ValueError(f"apply: no member {a.id!r}")
        if not m.managed:
            raise ValueError(f"apply: {a!r} on unmanaged member {m.id!r}")
        if isinstance(a, Drain):
            if m.state not in (MemberState.READY, MemberState.SUSPECT):
                raise ValueError(f"apply: cannot drain {m.id!r} in state {m.state.value}")
            out[m.id] = replace(m, state=MemberState.DRAINING, state_since_s=now_s)
        else:
            if m.state not in (MemberState.LAUNCHING, MemberState.SUSPECT, MemberState.DRAINING):
                raise ValueError(f"apply: cannot terminate {m.id!r} in state {m.state.value}")
            out[m.id] = replace(m, state=MemberState.TERMINATING, state_since_s=now_s)
    return list(out.values())
