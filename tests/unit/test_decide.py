"""The autoscaler's `decide`: hand-built periods (start-up, budget, swap ordering, hysteresis, health,
unmanaged members, disruption cap) and a property test driving random fleets through `apply`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kairosd.autoscale.decide import apply, committed_usd_per_hour, decide, is_up, micro_usd, unavailable_types
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

R, L, S, D, T = MemberState.READY, MemberState.LAUNCHING, MemberState.SUSPECT, MemberState.DRAINING, MemberState.TERMINATING
PRICES = {"g4dn.xlarge": 0.526, "c5.xlarge": 0.17, "r5n.large": 0.149, "t3.xlarge": 0.1664}
OFFERINGS = {t: Offering(t, p) for t, p in PRICES.items()}
G, C = "g4dn.xlarge", "c5.xlarge"


def make_member(id: str, type: str = G, state: MemberState = R, **kw: object) -> Member:
    fields: dict[str, object] = {"price_usd_per_hour": PRICES.get(type, 0.5), "launched_at_s": 0.0, "state_since_s": 0.0}
    fields.update(kw)
    return Member(id, type, state, **fields)  # type: ignore[arg-type]


def started(acted: Mapping[str, int], **kw: object) -> DecideState:
    return DecideState(acted_target=dict(acted), started=True, **kw)  # type: ignore[arg-type]


def run(target: Mapping[str, int], fleet: Sequence[Member], state: DecideState, *, budget: float = 100.0,
        now_s: float = 1000.0, params: AutoscaleParams | None = None,
        offerings: Mapping[str, Offering] = OFFERINGS) -> Decision:
    return decide(target, fleet, offerings, budget, now_s, state, params or AutoscaleParams())


def step(fleet: list[Member], d: Decision, now_s: float) -> list[Member]:
    """The caller's next fleet: TERMINATING members already listed are gone (one period later), then the actions."""
    return apply([m for m in fleet if m.state is not T], d.actions, now_s, PRICES)


def kinds(actions: Sequence[Action]) -> list[tuple[str, str]]:
    return [(type(a).__name__, a.type if isinstance(a, Launch) else a.id) for a in actions]


def test_start_up_launches_at_once_and_remembers_the_target() -> None:
    d = run({G: 2, C: 3}, [], DecideState(), params=AutoscaleParams(up_periods=3))
    assert d.actions == (Launch(C, 3, d.actions[0].reason), Launch(G, 1, d.actions[1].reason))  # 4 launches at most
    assert dict(d.state.acted_target) == {G: 2, C: 3} and d.state.started
    assert any("max_concurrent_launches" in n for n in d.notes)


def test_restart_adopts_the_fleet_it_finds_instead_of_draining_it() -> None:
    fleet = [make_member(f"g{i}") for i in range(3)]
    d = run({G: 1}, fleet, DecideState(), params=AutoscaleParams(down_periods=2))
    assert d.actions == () and dict(d.state.acted_target) == {G: 3} and d.state.held_periods == 1


def test_launch_capped_by_budget_with_a_note() -> None:
    fleet = [make_member("g0")]
    d = run({G: 4}, fleet, started({G: 1}), budget=1.2)  # 0.526 + 0.526 ≤ 1.2 < 0.526 × 3
    assert kinds(d.actions) == [("Launch", G)] and d.actions[0].count == 1  # type: ignore[union-attr]
    assert any("waits for budget" in n for n in d.notes)
    assert committed_usd_per_hour(step(fleet, d, 1000.0)) <= 1.2


def test_budget_equal_to_the_cost_fits_exactly() -> None:
    # 0.526 + 0.17 + 0.1664 + 0.149 = 1.0114 in floats is not exactly 1.0114; micro-dollars are
    fleet = [make_member("g0"), make_member("c0", C), make_member("t0", "t3.xlarge")]
    d = run({G: 1, C: 1, "t3.xlarge": 1, "r5n.large": 1}, fleet, started({G: 1, C: 1, "t3.xlarge": 1}), budget=1.0114)
    assert kinds(d.actions) == [("Launch", "r5n.large")]
    assert micro_usd(committed_usd_per_hour(step(fleet, d, 1000.0))) == micro_usd(1.0114)


def test_swap_under_a_tight_budget_goes_drain_then_terminate_then_launch() -> None:
    fleet = [make_member("c0", C, in_flight=3)]
    state = started({C: 1})
    budget = 0.6  # c5 0.17 + g4dn 0.526 > 0.6: the g4dn waits until c0 is no longer billed
    seen: list[list[tuple[str, str]]] = []
    now = 0.0
    for _ in range(5):
        d = run({G: 1}, fleet, state, budget=budget, now_s=now)
        seen.append(kinds(d.actions))
        if seen[-1] and seen[-1][0][0] != "Launch":
            assert any("billed until the provider lists them terminated" in n for n in d.notes)
        fleet = step(fleet, d, now)
        assert committed_usd_per_hour(fleet) <= budget
        fleet = [replace(m, in_flight=0) for m in fleet]  # c0's queries finish
        state, now = d.state, now + 10.0
    assert seen == [[("Drain", "c0")], [("Terminate", "c0")], [], [("Launch", G)], []]


def test_swap_with_budget_to_spare_launches_before_it_drains() -> None:
    fleet = [make_member("c0", C), make_member("c1", C, launched_at_s=1.0)]
    state, now = started({C: 2}), 0.0
    seen = []
    for period in range(6):
        d = run({G: 1}, fleet, state, budget=5.0, now_s=now)
        seen.append(kinds(d.actions))
        if period == 0:
            assert any("kept until 1 launching" in n for n in d.notes)
        fleet = [replace(m, state=R) if m.state is L else m for m in step(fleet, d, now)]  # ready by next period
        state, now = d.state, now + 10.0
    # one at a time (disruption cap 1 of 3): c1 is billed as TERMINATING for one period, holding c0's drain
    assert seen == [[("Launch", G)], [("Drain", "c1")], [("Terminate", "c1")], [], [("Drain", "c0")], [("Terminate", "c0")]]


def test_scale_in_waits_down_periods_then_drains() -> None:
    fleet = [make_member(f"g{i}", launched_at_s=float(i)) for i in range(4)]
    params = AutoscaleParams(down_periods=3, max_disruption_fraction=0.5)
    state = started({G: 4})
    for period in range(3):
        d = run({G: 2}, fleet, state, params=params, now_s=100.0 + period)
        if period < 2:
            assert d.actions == () and d.state.held_periods == period + 1
            assert any("held" in n for n in d.notes)
        state = d.state
    assert kinds(d.actions) == [("Drain", "g3"), ("Drain", "g2")]  # newest first
    assert dict(state.acted_target) == {G: 2} and state.held_periods == 0


def test_oscillating_target_causes_no_flapping() -> None:
    fleet = [make_member("g0"), make_member("g1")]
    # up/down around the acted {G: 2}: neither direction holds long enough
    state = started({G: 2})
    params = AutoscaleParams(up_periods=2, down_periods=2)
    for period in range(12):
        d = run({G: 3} if period % 2 == 0 else {G: 1}, fleet, state, params=params, now_s=float(period))
        assert d.actions == ()
        state = d.state
    # with up_periods 1 the higher target is built once; the way back down never holds for down_periods
    state, all_actions = started({G: 2}), []
    for period in range(12):
        d = run({G: 3} if period % 2 == 0 else {G: 2}, fleet, state, now_s=float(period))
        fleet, state = step(fleet, d, float(period)), d.state
        all_actions += kinds(d.actions)
    assert all_actions == [("Launch", G)]


def test_lower_budget_scales_in_at_once_and_in_order() -> None:
    fleet = [make_member("l0", state=L, launched_at_s=50.0, state_since_s=50.0),
             make_member("g0", in_flight=5), make_member("g1", in_flight=1), make_member("g2", in_flight=9)]
    d = run({G: 4}, fleet, started({G: 4}), budget=1.1, params=AutoscaleParams(down_periods=100))
    # 4 × 0.526 = 2.104 → without l0 1.578 → without g1 (fewest in flight) 1.052 ≤ 1.1
    assert kinds(d.actions) == [("Terminate", "l0"), ("Drain", "g1")]
    assert not any(isinstance(a, Launch) for a in d.actions)
    assert any("over budget" in n for n in d.notes)


def test_startup_grace_terminates_and_marks_the_type_unavailable() -> None:
    params = AutoscaleParams(startup_grace_s=300.0, unavailable_s=600.0)
    fleet = [make_member("l0", state=L, launched_at_s=0.0, state_since_s=0.0), make_member("g0")]
    d = run({G: 2}, fleet, started({G: 2}), now_s=301.0, params=params)
    assert kinds(d.actions) == [("Terminate", "l0")]  # no replacement of an unavailable type
    assert d.state.unavailable_until_s == {G: 901.0}
    assert unavailable_types(d.state, 900.0) == frozenset({G})
    assert unavailable_types(d.state, 901.0) == frozenset()
    assert any("unavailable until" in n for n in d.notes)
    later = run({G: 2}, step(fleet, d, 301.0), d.state, now_s=1000.0, params=params)
    assert kinds(later.actions) == [("Launch", G)] and later.state.unavailable_until_s == {}


def test_offering_unavailable_or_missing_is_not_launched() -> None:
    offerings = {**OFFERINGS, C: Offering(C, 0.17, available=False)}
    d = run({C: 1, "x.large": 1}, [], started({C: 1, "x.large": 1}), offerings=offerings)
    assert d.actions == () and len(d.notes) == 2


def test_suspect_grace_drains_or_terminates_and_is_replaced() -> None:
    fleet = [make_member("s0", state=S, in_flight=2), make_member("s1", state=S), make_member("s2", state=S, state_since_s=990.0)]
    d = run({G: 3}, fleet, started({G: 3}), now_s=1000.0)
    assert kinds(d.actions) == [("Drain", "s0"), ("Terminate", "s1"), ("Launch", G)]
    assert d.actions[2].count == 2  # type: ignore[union-attr]


def test_draining_terminates_when_idle_or_after_timeout() -> None:
    fleet = [make_member("d0", state=D, in_flight=0, state_since_s=999.0),
             make_member("d1", state=D, in_flight=3, state_since_s=999.0),
             make_member("d2", state=D, in_flight=3, state_since_s=900.0)]
    d = run({}, fleet, started({}))
    assert kinds(d.actions) == [("Terminate", "d0"), ("Terminate", "d2")]


def test_unmanaged_members_are_untouched_and_count() -> None:
    static = make_member("static0", "edge", managed=False, price_usd_per_hour=0.5, state=S, state_since_s=0.0)
    fleet = [static, make_member("g0")]
    # 'edge' is not in the target nor offered: surplus, but unmanaged; its 0.5 counts against the budget
    d = run({G: 3}, fleet, started({G: 3}), budget=1.6)
    assert kinds(d.actions) == [("Launch", G)] and d.actions[0].count == 1  # type: ignore[union-attr]
    assert any("unmanaged" in n for n in d.notes)
    over = run({}, fleet, started({}), budget=0.1)
    assert kinds(over.actions) == [("Drain", "g0")]  # never the static endpoint
    assert any("unmanaged members alone" in n for n in over.notes)


def test_surplus_order_suspect_then_launching_then_least_busy_ready() -> None:
    fleet = [make_member("r0", in_flight=0, launched_at_s=1.0), make_member("r1", in_flight=0, launched_at_s=2.0),
             make_member("r2", in_flight=4, launched_at_s=3.0), make_member("l0", state=L, state_since_s=999.0),
             make_member("s0", state=S, state_since_s=999.0, in_flight=1)]
    d = run({G: 1}, fleet, started({G: 1}), params=AutoscaleParams(max_disruption_fraction=1.0))
    assert kinds(d.actions) == [("Drain", "s0"), ("Terminate", "l0"), ("Drain", "r1"), ("Drain", "r0")]


def test_disruption_cap() -> None:
    fleet = [make_member(f"g{i}", in_flight=2, launched_at_s=float(i)) for i in range(8)]
    params = AutoscaleParams(down_periods=1, max_disruption_fraction=0.25)
    d = run({G: 2}, fleet, started({G: 8}), params=params)
    assert kinds(d.actions) == [("Drain", "g7"), ("Drain", "g6")]  # floor(0.25 × 8) = 2
    assert any("disruption cap 2" in n for n in d.notes)
    fleet = step(fleet, d, 1000.0)
    again = run({G: 2}, fleet, d.state, params=params, now_s=1001.0)
    assert again.actions == ()  # both still draining with queries in flight
    # the cap is at least one member
    small = run({}, [make_member("g0"), make_member("g1")], started({G: 2}), params=params)
    assert len(small.actions) == 1


def test_up_and_down_definition() -> None:
    price = {G: 526_000, C: 170_000}
    assert is_up({G: 1, C: 1}, {G: 1}, price)
    assert is_up({G: 1}, {C: 3}, price)  # costs more
    assert not is_up({C: 3}, {G: 1}, price)  # a cheaper swap is a scale-in
    assert not is_up({G: 1}, {G: 2}, price)


def test_deterministic_and_duplicate_ids_refused() -> None:
    fleet = [make_member(f"g{i}", in_flight=i % 2) for i in range(6)]
    a = run({C: 2}, fleet, started({G: 6}), params=AutoscaleParams(down_periods=1))
    b = run({C: 2}, list(reversed(fleet)), started({G: 6}), params=AutoscaleParams(down_periods=1))
    assert a == b
    with pytest.raises(ValueError, match="twice"):
        run({}, [make_member("g0"), make_member("g0")], started({}))


def test_apply_refuses_what_decide_must_never_do() -> None:
    with pytest.raises(ValueError, match="terminate"):
        apply([make_member("g0")], [Terminate("g0")], 0.0, PRICES)
    with pytest.raises(ValueError, match="unmanaged"):
        apply([make_member("g0", managed=False)], [Drain("g0")], 0.0, PRICES)
    out = apply([make_member("new:c5.xlarge:0", C)], [Launch(C, 2)], 5.0, PRICES)
    assert [m.id for m in out] == ["new:c5.xlarge:0", "new:c5.xlarge:1", "new:c5.xlarge:2"]
    assert out[1].state is L and out[1].launched_at_s == 5.0


# --- property: budget, READY never terminated, launch cap ---------------------------------------------

TYPES = sorted(PRICES)
state_st = st.sampled_from([R, R, R, L, S, D, T])


@st.composite
def member_st(draw: st.DrawFn, i: int) -> Member:
    managed = draw(st.integers(0, 7)) > 0
    return Member(
        id=f"m{i:02d}",
        type=draw(st.sampled_from([*TYPES, "static"])),
        state=draw(state_st) if managed else draw(st.sampled_from([R, S])),
        price_usd_per_hour=draw(st.sampled_from([0.05, 0.149, 0.17, 0.526, 1.0])),
        launched_at_s=draw(st.floats(0, 100)),
        state_since_s=draw(st.floats(0, 100)),
        in_flight=draw(st.integers(0, 3)),
        managed=managed,
    )


Scenario = tuple[list[Member], list[dict[str, int]], dict[str, Offering], list[float], AutoscaleParams, int]


@st.composite
def scenario_st(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(0, 10))
    fleet = [draw(member_st(i)) for i in range(n)]
    config_st = st.dictionaries(st.sampled_from([*TYPES, "static"]), st.integers(0, 6), max_size=4)
    targets = draw(st.lists(config_st, min_size=1, max_size=4))
    offered = draw(st.lists(st.sampled_from(TYPES), unique=True, min_size=1))
    offerings = {t: Offering(t, PRICES[t], available=draw(st.booleans()) or draw(st.booleans())) for t in offered}
    budgets = draw(st.lists(st.sampled_from([0.0, 0.3, 0.7, 1.0114, 1.5, 2.5, 5.0, 10.0]), min_size=1, max_size=3))
    params = AutoscaleParams(
        up_periods=draw(st.integers(1, 3)), down_periods=draw(st.integers(1, 4)),
        max_concurrent_launches=draw(st.integers(1, 4)), max_disruption_fraction=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
        startup_grace_s=draw(st.sampled_from([20.0, 300.0])), suspect_grace_s=30.0, drain_timeout_s=25.0, unavailable_s=50.0,
    )
    return fleet, targets, offerings, budgets, params, draw(st.integers(0, 2**16))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario_st())
def test_property_budget_ready_and_launch_cap(scn: Scenario) -> None:
    import random

    fleet, targets, offerings, budgets, params, seed = scn
    rng = random.Random(seed)
    prices = {**PRICES, "static": 0.5}
    state = DecideState()
    now = 100.0
    ready_at: dict[str, float] = {}
    for period in range(12):
        budget = budgets[period % len(budgets)]
        target = targets[period % len(targets)]
        launching_before = sum(m.managed and m.state is L for m in fleet)
        d = decide(target, fleet, offerings, budget, now, state, params)
        before = micro_usd(committed_usd_per_hour(fleet))
        limit = max(micro_usd(budget), before)
        by_id = {m.id: m for m in fleet}
        cur = fleet
        for a in d.actions:
            if isinstance(a, Terminate):
                assert by_id[a.id].state is not R, "a READY member is terminated without a drain"
            if isinstance(a, Drain | Terminate):
                assert by_id[a.id].managed
            if isinstance(a, Launch):
                assert micro_usd(budget) >= before, "a launch while over budget"
                assert offerings[a.type].available
            cur = apply(cur, [a], now, prices)
            assert micro_usd(committed_usd_per_hour(cur)) <= limit
            by_id = {m.id: m for m in cur}
        launches = sum(a.count for a in d.actions if isinstance(a, Launch))
        if launches:
            assert sum(m.managed and m.state is L for m in cur) <= params.max_concurrent_launches
        else:
            assert sum(m.managed and m.state is L for m in cur) <= max(launching_before, params.max_concurrent_launches)
        # the provider's next list: terminated members gone, launches become READY after a random delay
        now += 10.0
        nxt = []
        for m in cur:
            if m.state is T and m.state_since_s < now - 5.0:
                continue
            if m.state is L and m.managed:
                at = ready_at.setdefault(m.id, m.state_since_s + rng.choice([5.0, 15.0, 40.0]))
                if at <= now:
                    m = replace(m, state=R, state_since_s=now)
            elif m.state in (R, D) and m.in_flight and rng.random() < 0.5:
                m = replace(m, in_flight=m.in_flight - 1)
            nxt.append(m)
        fleet, state = nxt, d.state
