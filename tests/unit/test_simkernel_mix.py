"""The compiled loop for several models (`kairosd.simkernel.run_mix`) against the Python one
(`sim._run_mix` with a real `KairosPolicy`): the same decisions, bit for bit, on mixes of two and three
models with QoS targets from 5 ms to 350 ms, and the same `simulate_mix` and `max_multiple` results."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kairosd import sim, simkernel, workload
from kairosd.dispatch import FcfsPolicy, KairosPolicy, make_policy

pytestmark = pytest.mark.skipif(not simkernel.ENABLED, reason="compiled loop switched off (KAIROSD_SIM_KERNEL=0)")

N_QUERIES = 500
# (models, demand shares, QoS s): a model may appear twice with two QoS targets (two groups)
MIXES: tuple[tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...]], ...] = (
    (("rm2", "ncf"), (0.9, 0.1), (0.35, 0.005)),
    (("rm2", "ncf", "wnd"), (0.6, 0.1, 0.3), (0.35, 0.005, 0.025)),
    (("rm2", "dien", "rm2"), (0.5, 0.3, 0.2), (0.35, 0.035, 0.1)),
)
# counts of the workload's types (g4dn, c5n, r5n, t3): 3, 10 and 35 columns (beyond the scalar path)
FLEETS = ((1, 0, 1, 1), (2, 1, 4, 3), (1, 0, 18, 16))
RULES: tuple[dict[str, Any], ...] = (
    {},
    {"margin_s": 0.002, "lookahead": 2},
    {"sure_miss": "finish"},
    {"sure_miss": "cheapest", "hold": False},
    {"tiers": False},
    {"tail": False},
    {"lookahead": 0},  # rows (the oldest 2n) may outnumber the columns
    {"lookahead": 0, "hold": False, "tiers": False, "tail": False},  # the paper's rule
)
# (load as a share of the fleet's raw capacity, abort on the percentile's violations)
LOADS = ((0.05, True), (0.8, True), (1.4, True), (1.4, False))


class Tweaked(KairosPolicy):
    """The same rule, which the compiled loop does not take: it runs in `sim._run_mix`."""


class Mix:
    """A mix's stream with measured-sample noise, its service times and what the loops take of it."""

    def __init__(self, wl: workload.KairosWorkload, k: int, n: int = N_QUERIES) -> None:
        models, shares, qos = MIXES[k]
        self.models, self.qos = list(models), np.array(qos)
        batches = [workload.kairos_batch_mix(n, np.random.default_rng([k, g])) for g in range(len(models))]
        self.stream = sim.poisson_mix_stream(batches, shares, 20 + k)
        self.services = [sim.ServiceModel("samples", wl.samples.relative(m, wl.profiles.types), workload.GRID_STEP)
                         for m in models]
        self.svc = sim.mix_service_times(wl.profiles, self.models, self.services, self.stream)
        self.expected = sim.mix_service_times(wl.profiles, self.models, None, self.stream)
        self.model_idx = np.array([wl.profiles.model_index(m) for m in models])

    def capacity(self, cols: np.ndarray) -> float:
        """The fleet's raw capacity on the stream, as a multiple of its demand (as `max_multiple`'s scale)."""
        return float(np.sum(1.0 / self.svc[:, cols].mean(axis=0))) / self.stream.total_rate_qps


@pytest.fixture(scope="module")
def mixes(wl: workload.KairosWorkload) -> list[Mix]:
    return [Mix(wl, k) for k in range(len(MIXES))]


def _both(wl: workload.KairosWorkload, mix: Mix, fleet: tuple[int, ...], params: dict[str, Any], load: float,
          abort: bool) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    cols = sim.fleet_columns(wl.profiles, wl.types, fleet)
    arr = mix.stream.arrivals(load * mix.capacity(cols))
    n = len(arr)
    measure_from = n // 10
    n_measured = np.bincount(mix.stream.group[measure_from:], minlength=len(mix.models))
    max_viol = (np.floor(0.01 * (n_measured - 1)).astype(np.int64) + 1 if abort
                else np.full(len(mix.models), n + 1, dtype=np.int64))
    policy = KairosPolicy(wl.profiles, **params)
    rule = simkernel.mix_rule_for(policy, mix.model_idx)
    assert rule is not None
    batches = mix.stream.stream.batches
    ref = sim._run_mix(arr, mix.svc, mix.expected, batches, cols, policy, mix.stream.group, mix.model_idx, mix.qos,
                       measure_from, max_viol)
    got = simkernel.run_mix(arr, mix.svc, mix.expected, batches, cols, rule, mix.stream.group, mix.qos, measure_from,
                            max_viol)
    return ref, got


@pytest.mark.parametrize("rule", range(len(RULES)),
                         ids=[",".join(f"{k}={v}" for k, v in p.items()) or "default" for p in RULES])
def test_compiled_mix_loop_makes_the_python_loops_decisions(wl: workload.KairosWorkload, mixes: list[Mix],
                                                            rule: int) -> None:
    """Every finish and hand-out time, the abort, the number of policy calls and the work handed out are
    equal, on every mix at a light load, near capacity and in overload (with and without the early
    abort), each mix on one of the fleets (in turn over the rules, so that every rule meets every fleet
    size and every mix every fleet)."""
    outcomes = set()
    for k, mix in enumerate(mixes):
        fleet = FLEETS[(rule + k) % len(FLEETS)]
        for load, abort in LOADS:
            (f1, s1, a1, c1, w1), (f2, s2, a2, c2, w2) = _both(wl, mix, fleet, RULES[rule], load, abort)
            np.testing.assert_array_equal(f1, f2)
            np.testing.assert_array_equal(s1, s2)
            assert (a1, c1, w1) == (a2, c2, w2), (mix.models, fleet, load, abort)
            assert c1 > 0
            outcomes.add(a1)
    assert outcomes == {True, False}  # runs that aborted and runs that ran to the end


def test_mix_rule_is_only_the_kairos_policy_itself(wl: workload.KairosWorkload, monkeypatch: pytest.MonkeyPatch) -> None:
    profiles = wl.profiles
    assert simkernel.mix_rule_for(make_policy("kairos", profiles), [1, 0]) is not None
    assert simkernel.mix_rule_for(FcfsPolicy(profiles), [1, 0]) is None
    assert simkernel.mix_rule_for(Tweaked(profiles), [1, 0]) is None
    rule = simkernel.mix_rule_for(make_policy("kairos", profiles), [1, 0, 1])
    assert rule is not None and rule.mean.shape == (3, *profiles.mean_s.shape[1:])
    np.testing.assert_array_equal(rule.check[1], profiles.p99_s[0])
    monkeypatch.setattr(simkernel, "ENABLED", False)
    assert simkernel.mix_rule_for(make_policy("kairos", profiles), [1, 0]) is None


@pytest.mark.parametrize("k", range(len(MIXES)))
def test_simulate_mix_gives_the_same_result_either_way(wl: workload.KairosWorkload, mixes: list[Mix], k: int) -> None:
    """`simulate_mix` with `KairosPolicy` (the compiled loop) and with a subclass (`_run_mix`): the same
    result at every load, with and without the abort."""
    mix = mixes[k]
    cols = sim.fleet_columns(wl.profiles, wl.types, FLEETS[1])
    for load, abort in LOADS:
        kw: dict[str, Any] = {"qos_s": mix.qos.tolist(), "stream": mix.stream, "svc": mix.svc, "abort": abort}
        x = load * mix.capacity(cols)
        compiled = sim.simulate_mix(wl.profiles, mix.models, cols, KairosPolicy(wl.profiles), x, **kw)
        python = sim.simulate_mix(wl.profiles, mix.models, cols, Tweaked(wl.profiles), x, **kw)
        assert (compiled.p99_s, compiled.violations, compiled.ok, compiled.aborted, compiled.lagging,
                compiled.policy_calls) == (python.p99_s, python.violations, python.ok, python.aborted, python.lagging,
                                           python.policy_calls)


@pytest.mark.parametrize(("k", "fleet", "params"), [
    (0, (1, 0, 2, 2), {}),
    (1, (2, 1, 4, 3), {"margin_s": 0.002}),
], ids=["rm2+ncf", "rm2+ncf+wnd,margin"])
def test_max_multiple_is_the_same_either_way(wl: workload.KairosWorkload, mixes: list[Mix], k: int,
                                             fleet: tuple[int, ...], params: dict[str, Any]) -> None:
    """The bisection for the largest multiple probes the same multiples with the same verdicts."""
    mix = mixes[k]
    cols = sim.fleet_columns(wl.profiles, wl.types, fleet)
    kw: dict[str, Any] = {"qos_s": mix.qos.tolist(), "stream": mix.stream, "services": mix.services}
    compiled = sim.max_multiple(wl.profiles, mix.models, cols, lambda: KairosPolicy(wl.profiles, **params), **kw)
    python = sim.max_multiple(wl.profiles, mix.models, cols, lambda: Tweaked(wl.profiles, **params), **kw)
    assert (compiled.multiple, compiled.probes, compiled.exceeds_bound) == (
        python.multiple, python.probes, python.exceeds_bound)
    assert compiled.multiple > 0 and len(compiled.probes) >= 4


@pytest.mark.parametrize("rule", [0, 1, 7], ids=["default", "margin,lookahead", "paper"])
def test_the_mix_loop_on_one_group_is_the_single_model_loop(wl: workload.KairosWorkload, rule: int) -> None:
    """The two compiled loops price a row each their own way (by group, or on one model's tables): on a
    stream of one model they make the same decisions, at every load, with and without the abort."""
    stream = sim.poisson_stream(workload.kairos_batch_mix(N_QUERIES, np.random.default_rng(5)), 6)
    service = sim.ServiceModel("samples", wl.samples.relative("wnd", wl.profiles.types), workload.GRID_STEP)
    svc = service.times(wl.profiles, "wnd", stream)
    expected = sim.ServiceModel().times(wl.profiles, "wnd", stream)
    qos = 0.025
    policy = KairosPolicy(wl.profiles, **RULES[rule])
    mi = wl.profiles.model_index("wnd")
    single, mixed = simkernel.rule_for(policy, mi), simkernel.mix_rule_for(policy, [mi])
    assert single is not None and mixed is not None
    cols = sim.fleet_columns(wl.profiles, wl.types, FLEETS[1])
    capacity = float(np.sum(1.0 / svc[:, cols].mean(axis=0)))
    outcomes = set()
    for load, abort in LOADS:
        arr = stream.arrivals(load * capacity)
        cap = int(np.floor(0.01 * (len(arr) - 50 - 1))) + 1 if abort else len(arr) + 1
        one = simkernel.run(arr, svc, expected, stream.batches, cols, single, qos, 50, cap, qos)
        grouped = simkernel.run_mix(arr, svc, expected, stream.batches, cols, mixed, np.zeros(len(arr), dtype=np.int64),
                                    np.array([qos]), 50, np.array([cap]))
        np.testing.assert_array_equal(one[0], grouped[0])
        np.testing.assert_array_equal(one[1], grouped[1])
        assert one[2:] == grouped[2:], (load, abort)
        outcomes.add(one[2])
    assert outcomes == {True, False}
