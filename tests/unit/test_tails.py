"""Service-time tails from a profile's mean and p99 (`kairosd.planner.tails`), and the plans that use them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from kairosd.errors import ConfigError
from kairosd.planner import BoundModel, batch_pmf, queue_estimate, upper_bound
from kairosd.planner.tails import (
    MAX_P99_RATIO,
    Z99,
    lognormal_tails,
    profile_sigma,
    profile_tails,
    tails_from_relative,
)
from kairosd.profiles import ProfilePoint, ProfileTable, write_csv
from kairosd.sim import ServiceModel, SimSetup, evaluate_config, poisson_stream

MAX_BATCH = 64


def _table(p99_over_mean: dict[str, float], mean_ms: float = 2.0) -> ProfileTable:
    """One model "m" on types named as the keys: every batch at `mean_ms`, p99 that many times it."""
    pts = [ProfilePoint(t, b, mean_ms / 1e3, r * mean_ms / 1e3) for t, r in p99_over_mean.items() for b in (1, MAX_BATCH)]
    return ProfileTable.build({"m": pts})


@pytest.mark.parametrize("ratio", [1.0, 1.3, 2.0, 4.0, 10.0])
def test_the_fitted_lognormal_has_the_profile_mean_and_p99(ratio: float) -> None:
    sigma = profile_sigma(np.array([[0.002]]), np.array([[ratio * 0.002]]))
    z = np.random.default_rng(0).standard_normal(400_000)
    draws = 0.002 * np.exp(sigma[0, 0] * z - 0.5 * sigma[0, 0] ** 2)
    assert draws.mean() == pytest.approx(0.002, rel=0.02)
    assert np.quantile(draws, 0.99) == pytest.approx(ratio * 0.002, rel=0.02)
    # the closed-form tables agree with the draws: P(S > QoS), cv², the quantiles' spread
    t = lognormal_tails(np.array([[0.002]]), sigma, 1.5 * 0.002)
    assert t.miss[0, 0] == pytest.approx((draws > 0.003).mean(), abs=0.002)
    assert t.cv2[0, 0] == pytest.approx(draws.var() / draws.mean() ** 2, rel=0.1, abs=1e-9)
    assert t.quantiles.shape == (1, 1, 32)
    assert np.median(t.quantiles) == pytest.approx(np.median(draws), rel=0.05)
    if ratio == 1.0:
        assert sigma[0, 0] == 0.0 and t.miss[0, 0] == 0.0 and np.all(t.quantiles == 0.002)


def test_a_p99_beyond_what_a_lognormal_reaches_gets_the_widest_one() -> None:
    # exp(σ·z99 − σ²/2) peaks at MAX_P99_RATIO (σ = z99); a larger ratio is clipped to it, a p99 below the
    # mean gives σ = 0, and a mean over QoS without a tail misses it always
    sigma = profile_sigma(np.array([[1.0, 1.0, 1.0]]), np.array([[100.0, MAX_P99_RATIO, 0.5]]))
    assert sigma[0, 0] == pytest.approx(sigma[0, 1]) and sigma[0, 2] == 0.0
    assert np.exp(sigma[0, 0] * Z99 - sigma[0, 0] ** 2 / 2) == pytest.approx(MAX_P99_RATIO)
    assert lognormal_tails(np.array([[2.0, 0.5]]), np.zeros((1, 2)), 1.0).miss.tolist() == [[1.0, 0.0]]
    with pytest.raises(ConfigError, match="differ in shape"):
        profile_sigma(np.ones((1, 3)), np.ones((2, 3)))


def test_the_tables_follow_the_tail() -> None:
    """A heavier tail misses a target above both p99s more often, varies more, and spreads its quantiles."""
    profiles = _table({"steady": 1.2, "heavy": 3.0})
    tails = profile_tails(profiles, "m", ["steady", "heavy"], qos_s=0.0065)  # above both p99s (2.4, 6 ms)
    assert tails.miss.shape == tails.cv2.shape == (2, MAX_BATCH + 1)
    assert np.all(tails.miss[:, 1:] < 0.01)  # p99 within QoS: under 1% miss it alone
    assert np.all(tails.miss[0, 1:] < tails.miss[1, 1:]) and np.all(tails.cv2[0, 1:] < tails.cv2[1, 1:])
    assert tails.quantiles.shape[:2] == (2, MAX_BATCH + 1)
    assert np.allclose(tails.quantiles[:, 1:].mean(axis=2), 0.002, rtol=0.05)  # around the profile mean
    # from relative samples of a grid of 10 batches, as the authors' data has them: one cell each 10 batches
    rel = np.ones((1, 7, 4))
    rel[0, 3] = (0.5, 0.5, 1.5, 1.5)  # batches 31-40
    t = tails_from_relative(np.full((1, MAX_BATCH + 1), 0.004), rel, 0.005, 10)
    assert t.miss[0, 30] == 0.0 and t.miss[0, 31] == 0.5 and t.miss[0, 41] == 0.0
    assert t.cv2[0, 35] == pytest.approx(0.25) and t.cv2[0, 45] == 0.0


def test_with_the_tails_the_estimate_follows_the_simulator_on_a_heavy_tail() -> None:
    """Without its tail the estimate counts every query of a type as served at its p99 (its slack the
    QoS less the p99), far below what a heavy-tailed type serves; with the fitted log-normals it is
    within 10% of the simulator drawing the same log-normals, on fleets of either type and both."""
    profiles = _table({"steady": 1.2, "heavy": 3.0})
    types, qos = ("steady", "heavy"), 0.0065
    batches = np.random.default_rng(1).integers(1, MAX_BATCH + 1, 6000)
    pmf = batch_pmf(batches, MAX_BATCH)
    bare = BoundModel.from_profiles(profiles, "m", types, pmf, qos)
    t = profile_tails(profiles, "m", types, qos)
    tailed = BoundModel.from_profiles(profiles, "m", types, pmf, qos, miss=t.miss, svc_cv2=t.cv2, svc_quantiles=t.quantiles)
    service = ServiceModel("lognormal", sigma=profile_sigma(profiles.mean_s[0], profiles.p99_s[0]))
    setup = SimSetup(profiles, "m", types, "kairos", {"tail": True}, qos, poisson_stream(batches, 2), service, (1, 1))
    fleets = np.array([[3, 0], [0, 3], [2, 1]])
    sim = np.array([evaluate_config(setup, f, float(upper_bound(f[None], tailed)[0])).qps for f in fleets])
    plain, with_tails = queue_estimate(fleets, bare), queue_estimate(fleets, tailed)
    assert np.all(np.abs(np.log(with_tails / sim)) < 0.10), (with_tails, sim)
    # closer than the tables alone wherever the heavy type serves (on the steady fleet both are within 3%)
    assert np.all(np.abs(np.log(with_tails / sim))[1:] < np.abs(np.log(plain / sim))[1:]), (plain, with_tails, sim)
    assert plain[1] < 0.6 * sim[1]  # the heavy fleet, every query at its p99


def _write_profiles(directory: Path) -> None:
    write_csv(directory / "m.csv",
              [ProfilePoint(t, b, 0.002, r * 0.002) for t, r in (("steady", 1.2), ("heavy", 3.0)) for b in (1, 1000)])


def test_simulate_over_profiles_draws_each_batch_from_its_profile(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`kairosd simulate --profiles`: by default every service from its batch's log-normal of the
    profile's mean and p99, so a lightly loaded fleet's p99 is about the profile's; `--noise none`
    serves every query at its mean."""
    from kairosd.cli import main

    _write_profiles(tmp_path)
    args = ["simulate", "--profiles", str(tmp_path), "--model", "m", "--config", "heavy=3", "--qos-ms", "20",
            "--rate", "50", "--queries", "4000", "--mix", "kairos"]
    p99 = {}
    for noise in ("profile", "none"):
        assert main([*args, *(["--noise", noise] if noise == "none" else [])]) == 0
        found = re.search(r"p99 ([0-9.]+) ms", capsys.readouterr().out)
        assert found is not None
        p99[noise] = float(found.group(1))
    assert p99["profile"] == pytest.approx(6.0, rel=0.15) and p99["none"] == pytest.approx(2.0, rel=0.05), p99


def test_plan_over_profiles_plans_and_simulates_with_their_tails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`kairosd plan --profiles`: `kairos` ranks the steady type's fleet first and each heavy instance
    for a steady one lower, and Kairos+ simulates each query's service from its batch's fitted log-normal."""
    from kairosd.cli import main

    _write_profiles(tmp_path / "profiles")
    (tmp_path / "types.toml").write_text(
        "".join(f'[types.{t}]\nprice_usd_per_hour = 0.1\ngpu = false\nbackend = "onnxruntime"\nslots = 1\n\n'
                for t in ("steady", "heavy")))
    base = ["plan", "--profiles", str(tmp_path / "profiles"), "--catalogue", str(tmp_path / "types.toml"),
            "--model", "m", "--qos-ms", "6.5", "--budget", "0.3", "--top", "4"]
    assert main([*base, "--selector", "kairos", "--no-eval"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    steady, heavy = int(rows[0][1]), int(rows[0][2])  # columns: rank, then the types in the catalogue's order
    assert "service-time tails: each batch's log-normal of the profile's mean and p99" in out.splitlines()[0]
    assert (steady, heavy) == (3, 0) and out.splitlines()[2].endswith("<- chosen"), out
    assert [int(r[2]) for r in rows] == [0, 1, 2, 3]  # each heavy instance for a steady one ranks lower
    assert main([*base, "--selector", "kairos_plus", "--queries", "1000", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "kairos_plus: 3×steady" in out, out


def test_tails_from_cells_are_the_cells_an_emulated_instance_draws() -> None:
    """Each batch takes its cell's samples (the smallest measured batch at or above it, else the
    largest), equally likely, times the cells' means interpolated at the batch over its cell's mean:
    P(> QoS), cv², and the mid-quantiles."""
    from kairosd.emulation import ServiceCells
    from kairosd.planner.tails import QUANTILES, tails_from_cells

    cell = ServiceCells("m", np.array([10, 20]), np.array([[0.002, 0.004, 0.006, 0.008], [0.010, 0.010, 0.010, 0.010]]))
    t = tails_from_cells([cell], 25, 0.005)
    np.testing.assert_allclose(t.miss[0, [1, 10, 11, 20, 24]], [0.5, 0.5, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(t.cv2[0, [1, 10, 15]], [0.2, 0.2, 0.0], atol=1e-12)
    assert t.quantiles.shape == (1, 25, QUANTILES)
    np.testing.assert_allclose(t.quantiles[0, 5, [0, QUANTILES - 1]], [0.002, 0.008])
    assert (t.quantiles[0, 5] == 0.002).sum() == QUANTILES // 4
    # batch 15: the batch-20 cell (10 ms) at the means' interpolation, 7.5 ms; batch 20: 10 ms
    np.testing.assert_allclose(t.quantiles[0, [15, 20]], [[0.0075] * QUANTILES, [0.010] * QUANTILES])
    assert cell.scale_at(15) == pytest.approx(0.75) and cell.quantile_s(15, 0.5) == pytest.approx(0.0075)
    assert cell.scale_at(5) == cell.scale_at(10) == cell.scale_at(20) == cell.scale_at(500) == 1.0


def test_tails_from_batch_samples_take_the_nearest_measured_batchs_shape() -> None:
    """Batch b takes the shape (samples over their mean) of the measured batch nearest it on a log scale,
    times the profile mean at b; a type without samples takes the fallback's rows."""
    from kairosd.planner.tails import QUANTILES, tails_from_batch_samples

    mean = np.tile(np.arange(65) * 1e-3, (2, 1))  # 1 ms per unit of batch
    timed = {1: np.array([0.5, 1.5]) * 1e-3, 64: np.array([45e-3, 45e-3, 45e-3, 105e-3])}
    fallback = lognormal_tails(mean, np.full_like(mean, 0.3), 0.050)
    t = tails_from_batch_samples(mean, [timed, {}], 0.050, fallback=fallback)
    # batch 4 (nearer 1 than 64 on a log scale): 2 and 6 ms; batch 40 (nearer 64): 30, 30, 30, 70 ms
    np.testing.assert_allclose(t.quantiles[0, 4, [0, QUANTILES - 1]], [2e-3, 6e-3])
    np.testing.assert_allclose(t.quantiles[0, 40, [0, QUANTILES - 1]], [30e-3, 70e-3])
    assert t.miss[0, 4] == 0.0 and t.miss[0, 40] == 0.25 and t.cv2[0, 40] == pytest.approx(0.1875)
    np.testing.assert_allclose(t.miss[1], fallback.miss[1])
    np.testing.assert_allclose(t.quantiles[1], fallback.quantiles[1])
    with pytest.raises(ConfigError, match="no measured samples and no fallback"):
        tails_from_batch_samples(mean, [timed, {}], 0.050)


def test_profile_tails_read_the_timed_queries_where_a_lognormal_would_not(tmp_path: Path) -> None:
    """A type whose rare far mode the p99 lands in: its timed queries miss a 10 ms target on 2% of them
    (two of 100 at 30 ms), which the profile's tails then say, while the log-normal through the same
    mean and p99 puts a wide body over the target far more often; a type without samples keeps its
    log-normal."""
    from kairosd.profiles import SAMPLES_SUFFIX, write_samples_csv

    timed = np.array([2e-3] * 98 + [30e-3] * 2)
    write_csv(tmp_path / "m.csv", [ProfilePoint(t, b, float(timed.mean()), float(np.percentile(timed, 99)))
                                   for t in ("rare", "plain") for b in (1, 64)])
    write_samples_csv(tmp_path / f"m{SAMPLES_SUFFIX}", {"rare": {1: timed, 64: timed}})
    with_samples = ProfileTable.load_dir(tmp_path)
    write_samples_csv(tmp_path / f"m{SAMPLES_SUFFIX}", {})
    without = ProfileTable.load_dir(tmp_path)
    t = profile_tails(with_samples, "m", ("rare", "plain"), 0.010)
    log = profile_tails(without, "m", ("rare", "plain"), 0.010)
    np.testing.assert_allclose(t.miss[0, 1:], 0.02)
    assert log.miss[0, 1] > 0.04
    np.testing.assert_allclose(t.miss[1], log.miss[1])
    np.testing.assert_allclose(t.quantiles[1], log.quantiles[1])


def test_a_named_mix_past_a_models_own_profile_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two models in one profile directory, one timed to 1,000 and one to 512: the table runs to 1,000 for
    both, but the named mix (batches up to 1,000) is refused for the second, whose latencies past 512 would be
    extrapolated."""
    from kairosd.cli import main

    _write_profiles(tmp_path)
    write_csv(tmp_path / "short.csv",
              [ProfilePoint(t, b, 0.002, 0.0024) for t in ("steady", "heavy") for b in (1, 512)])
    args = ["simulate", "--profiles", str(tmp_path), "--config", "steady=1", "--qos-ms", "20", "--rate", "50",
            "--queries", "200", "--mix", "kairos"]
    assert main([*args, "--model", "m"]) == 0
    capsys.readouterr()
    assert main([*args, "--model", "short"]) == 2
    assert "kairos: batches up to 1000, beyond the largest profiled batch, 512" in capsys.readouterr().err
