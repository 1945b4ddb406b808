"""Synthetic workloads (kairosd.synth): shapes, determinism, tails, prices, budgets and the authors' file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kairosd import synth
from kairosd.planner import BoundModel, enumerate_configs, miss_from_samples
from kairosd.workload import GRID_STEP, load_kairos, mix_pmf


@pytest.fixture(scope="module")
def workloads() -> list[synth.SynthWorkload]:
    return [synth.synth_workload(s) for s in (3, 4, 5, 6, 7, 8)]


def test_seed_ranges_are_disjoint() -> None:
    assert not set(synth.TUNING_SEEDS) & set(synth.HELDOUT_SEEDS)


def test_shapes_and_types(workloads: list[synth.SynthWorkload]) -> None:
    for sw in workloads:
        wl = sw.workload
        k = len(sw.types)
        assert 3 <= k <= 5
        assert wl.types == tuple(t.name for t in sw.types)
        assert wl.profiles.models == (sw.model,)
        assert wl.samples.samples_s.shape == (1, k, 100, 99)  # 100 batches × 100 samples, the largest dropped
        assert sw.inference_ms.shape == sw.load_ms.shape == (k, 100, 100)
        assert wl.qos_s == {sw.model: sw.qos_s}
        assert all(p > 0 for p in wl.prices_usd_per_hour)
        assert 0 < len(enumerate_configs(wl.prices_usd_per_hour, sw.budget_usd_per_hour)) <= synth.MAX_CONFIGS
        assert any(t.tail_share == 0 for t in sw.types)
        assert sum(t.parent == synth.GPU_PARENT for t in sw.types) <= 1


def test_deterministic() -> None:
    a, b = synth.synth_workload(11), synth.synth_workload(11)
    assert a.types == b.types and a.qos_s == b.qos_s and a.budget_usd_per_hour == b.budget_usd_per_hour
    np.testing.assert_array_equal(a.workload.samples.samples_s, b.workload.samples.samples_s)
    c = synth.synth_workload(12)
    assert c.types != a.types


def test_both_fleet_kinds_and_tails_present() -> None:
    many = [synth.synth_workload(s) for s in range(20)]
    assert any(any(t.parent == synth.GPU_PARENT for t in sw.types) for sw in many)
    assert any(all(t.parent != synth.GPU_PARENT for t in sw.types) for sw in many)
    tailed = [(sw, i) for sw in many for i, t in enumerate(sw.types) if t.tail_share >= 0.01]
    assert tailed
    sw, i = tailed[0]
    t = sw.types[i]
    total = sw.inference_ms[i] + sw.load_ms[i]
    med = np.median(total, axis=1, keepdims=True)
    share = np.mean(total >= 0.99 * t.tail_factor * med)  # samples put at the tail factor × the cell median
    assert share == pytest.approx(t.tail_share, abs=0.01)


def test_the_best_type_meets_qos_on_the_mix(workloads: list[synth.SynthWorkload]) -> None:
    """Every workload can be served: some type's p99 meets QoS on ≥ 99.5% of the batch mix."""
    for sw in workloads:
        wl = sw.workload
        pmf = mix_pmf(sw.mix, wl.profiles.max_batch, n=200_000)
        p99 = wl.profiles.p99_s[0][:, : len(pmf)]
        assert max(float(pmf[: p99.shape[1]] @ (row <= sw.qos_s)) for row in p99) >= 0.99
        mean = wl.profiles.mean_s[0]
        miss = miss_from_samples(mean, wl.samples.relative(sw.model, wl.profiles.types), sw.qos_s, GRID_STEP)
        bm = BoundModel.build(mean, wl.profiles.p99_s[0], pmf, sw.qos_s, wl.profiles.types, miss=miss)
        assert bm.coverage.max() >= 0.99


def test_written_files_load_with_load_kairos(tmp_path: Path) -> None:
    sw = synth.synth_workload(1003)
    out = synth.write_workload(sw, tmp_path / "w")
    wl = load_kairos(out)
    assert wl.types == sw.workload.types
    assert wl.prices_usd_per_hour == sw.workload.prices_usd_per_hour
    assert wl.budget_usd_per_hour == sw.budget_usd_per_hour
    np.testing.assert_allclose(wl.profiles.mean_s, sw.workload.profiles.mean_s, rtol=1e-5)
    np.testing.assert_allclose(wl.profiles.p99_s, sw.workload.profiles.p99_s, rtol=1e-5)
    np.testing.assert_allclose(wl.samples.samples_s, sw.workload.samples.samples_s, rtol=1e-5)
    back = synth.load_workload(out)
    assert back.types == sw.types and back.qos_s == sw.qos_s and back.mix == sw.mix
    assert back.workload.qos_s == {sw.model: sw.qos_s}


def test_plan_over_a_workload_in_the_authors_layout_uses_its_types_prices_and_tails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`kairosd plan --data DIR` on a workload of types of its own (not in the catalogue): it plans over
    its instance.json's types at their prices, with each type's tail from its samples, on the population
    mix, and chooses what the planner library chooses from the same inputs."""
    from kairosd.cli import main
    from kairosd.planner import make_candidates, select_kairos
    from kairosd.planner.tails import tails_from_relative

    sw = synth.synth_workload(1003, max_configs=20)
    out = synth.write_workload(sw, tmp_path / "w")
    # the QoS target and the mix from the workload's own synth.json
    args = ["plan", "--data", str(out), "--model", sw.model, "--budget", str(sw.budget_usd_per_hour), "--selector",
            "kairos", "--no-eval", "--top", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"QoS {sw.qos_s * 1e3:g} ms" in text
    wl = load_kairos(out)
    ti = [wl.profiles.type_index(t) for t in wl.types]
    mean = wl.profiles.mean_s[wl.profiles.model_index(sw.model)][ti]
    t = tails_from_relative(mean, wl.samples.relative(sw.model, wl.types), sw.qos_s, GRID_STEP)
    bm = BoundModel.from_profiles(wl.profiles, sw.model, wl.types, mix_pmf(sw.mix, wl.profiles.max_batch, n=200_000),
                                  sw.qos_s, miss=t.miss, svc_cv2=t.cv2, svc_quantiles=t.quantiles)
    cands = make_candidates(bm, wl.prices_usd_per_hour, sw.budget_usd_per_hour)
    chosen = select_kairos(cands).config
    assert f"\nkairos: {cands.label(chosen)}  cost {float(chosen @ cands.prices_usd_per_hour):.3f} $/h" in text, text
    assert f"{len(cands)} maximal configurations" in text and "service-time tails: the measured samples" in text
    (out / synth.META_FILE).write_text("{}")
    assert main(args) == 2  # a description without its fields is refused, naming the file
