"""The Kairos data loader: profiles and samples match the CSVs, the QoS targets reproduce the authors'
allocator inputs, and the batch mix has the distribution the data's README describes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from kairosd import workload
from kairosd.errors import ConfigError
from kairosd.planner import BoundModel, batch_pmf

DATA = workload.default_data_dir()


def _summary_rows() -> list[dict[str, str]]:
    with (DATA / workload.SUMMARY_FILE).open(newline="") as f:
        return list(csv.DictReader(f))


def test_profiles_are_the_summary_in_seconds(wl: workload.KairosWorkload) -> None:
    p = wl.profiles
    assert set(p.models) == set(workload.MODELS)
    assert set(p.types) == set(wl.types)
    assert p.max_batch == 1000
    rows = _summary_rows()
    for r in rows[:: len(rows) // 57]:  # a spread of cells
        mi, ti, b = p.model_index(r["model"]), p.type_index(r["instance"]), int(r["batch_size"])
        assert p.mean_s[mi, ti, b] == pytest.approx(float(r["total_mean_ms"]) / 1e3)
        assert p.p99_s[mi, ti, b] == pytest.approx(max(float(r["total_p99_ms"]), float(r["total_mean_ms"])) / 1e3)
    # below the first measured batch the latency is clamped to batch 10's
    assert p.mean_s[0, 0, 3] == p.mean_s[0, 0, 10]


def test_samples_pair_inference_and_load_and_drop_the_largest(wl: workload.KairosWorkload) -> None:
    s = wl.samples
    assert s.samples_s.shape == (5, 4, 100, 99)
    model, inst, batch = "wnd", "r5n.large", 370
    raw = []
    with (DATA / workload.SAMPLES_FILE).open(newline="") as f:
        for r in csv.DictReader(f):
            if r["model"] == model and r["instance"] == inst and int(r["batch_size"]) == batch:
                raw.append(float(r["inference_ms"]) + float(r["load_ms"]))
    raw.sort()
    got = np.sort(s.samples_s[s.models.index(model), s.types.index(inst), s.grid_index(np.array([batch]))[0]]) * 1e3
    np.testing.assert_allclose(got, raw[:-1])


def test_summary_is_consistent_with_samples(wl: workload.KairosWorkload) -> None:
    p, s = wl.profiles, wl.samples
    for mi, model in enumerate(s.models):
        pm = p.model_index(model)
        for ti, t in enumerate(s.types):
            mean_from_samples = s.samples_s[mi, ti].mean(axis=1)
            np.testing.assert_allclose(p.mean_s[pm, p.type_index(t), s.batches], mean_from_samples, rtol=2e-3, atol=1e-6)


def test_relative_noise_has_mean_one(wl: workload.KairosWorkload) -> None:
    rel = wl.samples.relative("ncf", wl.profiles.types)
    np.testing.assert_allclose(rel.mean(axis=2), 1.0)
    # t3.xlarge has the slow tail the issue talks about; the others do not
    spread = rel.std(axis=2).mean(axis=1)
    t3 = wl.profiles.types.index("t3.xlarge")
    assert spread[t3] > 3 * np.delete(spread, t3).max()


def test_qos_targets_reproduce_the_authors_vio_batch() -> None:
    """`vio_batch` is the first batch whose median total latency exceeds QoS (data README)."""
    alloc = json.loads((DATA / "allocator_profile.json").read_text())
    med: dict[tuple[str, str], dict[int, float]] = {}
    for r in _summary_rows():
        med.setdefault((r["model"], r["instance"]), {})[int(r["batch_size"])] = float(r["total_median_ms"])
    checked = 0
    for model, types in alloc.items():
        for inst, d in types.items():
            if "vio_batch" not in d:
                continue
            cells = med[(model, inst)]
            first_bad = min(b for b, v in cells.items() if v > workload.QOS_MS[model])
            assert first_bad == d["vio_batch"], (model, inst)
            checked += 1
    assert checked == 15


def test_budget_types_and_prices_come_from_instance_json(wl: workload.KairosWorkload) -> None:
    inst = json.loads((DATA / "instance.json").read_text())
    assert wl.budget_usd_per_hour == inst["cost"]
    assert list(wl.types) == inst["ins_types"] and list(wl.prices_usd_per_hour) == inst["price"]
    assert wl.qos_s == {m: workload.QOS_MS[m] / 1e3 for m in workload.MODELS}


def test_kairos_mix_matches_the_readme() -> None:
    b = workload.kairos_batch_mix(400_000, np.random.default_rng(5))
    assert b.min() >= 10 and b.max() <= 1000 and np.all(b % 10 == 0)
    assert b.mean() == pytest.approx(243, rel=0.01)
    assert np.median(b) == 180
    # bands: r ∈ 1..8 of 1..99 → U{1..99} (≤ 90 after rounding up: 90 of its 99 values);
    # r ∈ 31..35 → U{600..999} (> 600: 399 of 400 values); nothing else reaches below 100 or above 600
    assert np.mean(b <= 90) == pytest.approx(8 / 99 * 90 / 99, abs=0.003)
    assert np.mean(b > 600) == pytest.approx(5 / 99 * 399 / 400, abs=0.002)
    same = workload.kairos_batch_mix(1000, np.random.default_rng(1))
    np.testing.assert_array_equal(same, workload.kairos_batch_mix(1000, np.random.default_rng(1)))


def test_mix_rates_match_the_authors_allocator_profile(wl: workload.KairosWorkload) -> None:
    """g4dn's `qps` ≈ 1000/E[latency] over the mix; our rate from the same mix agrees within 2%."""
    alloc = json.loads((DATA / "allocator_profile.json").read_text())
    pmf = batch_pmf(workload.kairos_batch_mix(400_000, np.random.default_rng(2)), wl.profiles.max_batch)
    for model in workload.MODELS:
        bm = BoundModel.from_profiles(wl.profiles, model, wl.types, pmf, wl.qos_s[model], tail=False)
        g = wl.types.index("g4dn.xlarge")
        assert bm.rate_qps[g] == pytest.approx(alloc[model]["g4dn.xlarge"]["qps"], rel=0.02)


def test_lognormal_batches() -> None:
    b = workload.lognormal_batches(200_000, np.random.default_rng(0))
    assert b.min() >= 1 and b.max() <= 1000
    assert np.median(b) == pytest.approx(180, rel=0.02)
    assert b.mean() == pytest.approx(180 * np.exp(0.75**2 / 2), rel=0.03)
    r = workload.lognormal_batches(1000, np.random.default_rng(0), round_to=10, max_batch=500)
    assert np.all(r % 10 == 0) and r.max() <= 500
    with pytest.raises(ConfigError):
        workload.lognormal_batches(10, np.random.default_rng(0), median=-1)
    with pytest.raises(ConfigError, match="allowed"):
        workload.sample_batches("zipf", 10, np.random.default_rng(0))


def test_missing_data_names_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(workload.ENV_VAR, str(tmp_path))
    assert workload.default_data_dir() == tmp_path
    with pytest.raises(ConfigError, match=workload.ENV_VAR):
        workload.load_profiles()
    with pytest.raises(ConfigError, match="latency_summary.csv"):
        workload.load_kairos(tmp_path)


def test_env_var_points_at_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (workload.SUMMARY_FILE, workload.INSTANCE_FILE):
        (tmp_path / name).write_bytes((DATA / name).read_bytes())
    monkeypatch.setenv(workload.ENV_VAR, str(tmp_path))
    wl = workload.load_kairos(with_samples=False)
    assert wl.profiles.mean_s.shape == (5, 4, 1001)
    with pytest.raises(ConfigError, match="no rows for models"):
        workload.load_profiles(models=["bert"])


def _small_mix(directory: Path) -> str:
    """A mix file within `_own_workload`'s batches (up to 512)."""
    path = directory / "mix.csv"
    path.write_text("batch\n1\n8\n64\n256\n512\n")
    return str(path)


def _own_workload(root: Path, *, grid: tuple[int, ...] = (1, 8, 64, 512), short_cell: int | None = 64,
                  instance: dict[str, object] | None = None, names: tuple[str, str] = ("fast", "slow")) -> Path:
    """A user's own workload in the authors' layout: model "bert" (no paper QoS), types `names` (a fast and a
    slow one), samples on `grid` (10 per cell; the cell at batch `short_cell` of the fast type holds 6), and
    the summary from them."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    rows, summary = [], []
    for t, ms_per_item in ((names[0], 0.05), (names[1], 0.2)):
        for b in grid:
            n = 6 if (t == names[0] and b == short_cell) else 10
            total = (1.0 + ms_per_item * b) * rng.lognormal(0.0, 0.2, n)
            rows += [["bert", t, b, k, f"{0.6 * v:.6f}", f"{0.4 * v:.6f}"] for k, v in enumerate(total)]
            kept = np.delete(total, total.argmax())
            summary.append(["bert", t, b, f"{kept.mean():.6f}", f"{np.percentile(kept, 99):.6f}"])
    with (root / workload.SAMPLES_FILE).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "instance", "batch_size", "sample_idx", "inference_ms", "load_ms"])
        w.writerows(rows)
    with (root / workload.SUMMARY_FILE).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "instance", "batch_size", "total_mean_ms", "total_p99_ms"])
        w.writerows(summary)
    inst = instance if instance is not None else {"ins_types": list(names), "price": [0.5, 0.1]}
    (root / workload.INSTANCE_FILE).write_text(json.dumps(inst))
    return root


def test_a_users_own_workload_loads_on_any_grid_with_cells_of_any_size(tmp_path: Path) -> None:
    """Samples on an uneven grid (1, 8, 64, 512), one cell short: read on the grid 10, 20, … up to the largest
    batch, grid batch g from the measured batches in (g − 10, g] (several: pooled relative to their own
    means, at the level of the largest), else from the first measured above it; every cell cut to the
    smallest size. No max_num or cost in instance.json, and a model the paper did not measure (no QoS)."""
    root = _own_workload(tmp_path / "w")
    wl = workload.load_kairos(root)
    s = wl.samples
    np.testing.assert_array_equal(s.batches, np.arange(10, 530, 10))
    assert s.samples_s.shape == (1, 2, 52, 5)  # the short cell: 6 samples, the largest dropped
    raw: dict[tuple[str, int], list[float]] = {}
    with (root / workload.SAMPLES_FILE).open(newline="") as f:
        for r in csv.DictReader(f):
            raw.setdefault((r["instance"], int(r["batch_size"])), []).append(float(r["inference_ms"]) + float(r["load_ms"]))
    fast, slow = s.types.index("fast"), s.types.index("slow")
    kept = {k: np.sort(v)[:-1] / 1e3 for k, v in raw.items()}
    five = [0, 2, 4, 6, 8]  # a 9-sample cell (10, the largest dropped) cut to 5 by evenly spaced order statistics

    def cell(t: int, b: int) -> np.ndarray:
        return np.sort(s.samples_s[0, t, s.grid_index(np.array([b]))[0]])

    for b in (20, 60, 70):  # grid batches 20-70 read the cells measured at 64, 80-520 those at 512
        np.testing.assert_allclose(cell(fast, b), kept[("fast", 64)])
        np.testing.assert_allclose(cell(slow, b), kept[("slow", 64)][five])
    for b in (80, 520, 1000):
        np.testing.assert_allclose(cell(slow, b), kept[("slow", 512)][five])
    # grid batch 10 pools batches 1 and 8 (18 samples, cut to 5) at batch 8's level
    pooled = np.sort(np.concatenate([kept[("slow", 1)] / kept[("slow", 1)].mean(), kept[("slow", 8)] / kept[("slow", 8)].mean()]))
    np.testing.assert_allclose(cell(slow, 10), pooled[[1, 5, 9, 12, 16]] * kept[("slow", 8)].mean())
    assert wl.max_counts is None and wl.budget_usd_per_hour is None
    # the same samples with one total_ms column: the same cells
    with (root / workload.SAMPLES_FILE).open(newline="") as f:
        rows = list(csv.DictReader(f))
    other = tmp_path / "total" / workload.SAMPLES_FILE
    other.parent.mkdir()
    with other.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "instance", "batch_size", "total_ms"])
        w.writerows([r["model"], r["instance"], r["batch_size"], float(r["inference_ms"]) + float(r["load_ms"])]
                    for r in rows)
    np.testing.assert_allclose(workload.load_samples(other.parent).samples_s, s.samples_s)
    assert wl.qos_s == {} and wl.prices_usd_per_hour == (0.5, 0.1)
    with pytest.raises(ConfigError, match="no QoS target for model 'bert'"):
        workload.sim_setup(wl, "bert")
    assert workload.sim_setup(wl, "bert", qos_s=0.05).qos_s == 0.05


def test_plan_over_a_users_own_workload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`kairosd plan --data` on a model of the user's own, over their instance.json's types at its prices: one
    type the catalogue lists (at another price there, 0.34 $/h) and one it does not."""
    from kairosd.cli import main

    root = _own_workload(tmp_path / "w", names=("c5.2xlarge", "slow"))
    args = ["plan", "--data", str(root), "--model", "bert", "--budget", "1.0", "--selector", "kairos", "--no-eval",
            "--all-configs", "--top", "100", "--mix", _small_mix(tmp_path)]
    # the named mixes draw batches up to 1,000, past the workload's largest, 512
    assert main([*args[:-2], "--qos-ms", "40"]) == 2
    assert "beyond the largest profiled batch, 512" in capsys.readouterr().err
    assert main(args) == 2  # no QoS target for a model of the user's own
    assert main([*args, "--qos-ms", "40"]) == 0
    text = capsys.readouterr().out
    assert "model bert, QoS 40 ms" in text and "\nkairos: " in text
    # every configuration within 1 $/h at 0.5 and 0.1 $/h (at 0.34, 2 × c5.2xlarge would leave room for 3 × slow)
    rows = [r for r in (ln.split() for ln in text.splitlines()) if len(r) > 3 and r[0].isdigit() and r[1].isdigit()]
    costs = {(int(r[1]), int(r[2])): float(r[3]) for r in rows}
    assert costs[(2, 0)] == pytest.approx(1.0) and costs[(0, 10)] == pytest.approx(1.0)
    assert all(c * 0.5 + s * 0.1 <= 1.0 + 1e-9 for c, s in costs) and (1, 5) in costs and len(costs) == 17


def test_malformed_workload_files_are_refused_naming_file_and_line(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    root = _own_workload(tmp_path / "bad")
    lines = (root / workload.SUMMARY_FILE).read_text().splitlines()
    assert lines[4].startswith("bert,fast,512,")
    lines[4] = lines[4].replace("bert,fast,512,", "bert,fast,512,abc")
    (root / workload.SUMMARY_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"latency_summary.csv, line 5: could not convert"):
        workload.load_kairos(root)
    root = _own_workload(tmp_path / "lengths", instance={"ins_types": ["fast", "slow"], "price": [0.5]})
    with pytest.raises(ConfigError, match="same length"):
        workload.load_kairos(root)
    root = _own_workload(tmp_path / "extra", instance={"ins_types": ["fast", "gpu", "slow"], "price": [0.5, 1.0, 0.1]})
    with caplog.at_level("WARNING", logger="kairosd.workload"):
        wl = workload.load_kairos(root)
    assert wl.types == ("fast", "slow") and wl.prices_usd_per_hour == (0.5, 0.1)
    assert "['gpu'] with no rows in latency_summary.csv" in caplog.text
    root = _own_workload(tmp_path / "unpriced", instance={"ins_types": ["slow"], "price": [0.1]})
    with caplog.at_level("WARNING", logger="kairosd.workload"):
        assert workload.load_kairos(root).types == ("slow",)
    assert "latency rows for ['fast']" in caplog.text
    root = _own_workload(tmp_path / "empty")
    (root / workload.SAMPLES_FILE).write_text("model,instance,batch_size,sample_idx,inference_ms,load_ms\n")
    with pytest.raises(ConfigError, match="latency_samples.csv: no samples"):
        workload.load_kairos(root)
    (root / workload.SAMPLES_FILE).unlink()
    with pytest.raises(ConfigError, match="latency_samples.csv not found: a workload in the Kairos authors' layout"):
        workload.load_kairos(root)


def test_a_batch_mix_from_a_file_of_observed_batches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mix file (a `batch` column, one row per query): the planner's mix is the share of each batch among
    its rows, streams draw from them; `kairosd plan --mix FILE` plans on it (small batches: a fleet serves
    more than on the Kairos mix), and a file with batches past the profiles is refused."""
    from kairosd.cli import main
    from kairosd.planner import batch_pmf

    log_file = tmp_path / "requests.csv"
    log_file.write_text("arrival_s,batch\n" + "".join(f"{0.01 * i:.2f},{b}\n" for i, b in enumerate([20, 20, 40, 100])))
    pmf = workload.mix_pmf(str(log_file), 1000)
    assert pmf[20] == 0.5 and pmf[40] == 0.25 and pmf[100] == 0.25 and pmf.sum() == pytest.approx(1.0)
    drawn = workload.sample_batches(str(log_file), 4000, np.random.default_rng(0))
    assert set(drawn.tolist()) == {20, 40, 100}
    np.testing.assert_allclose(batch_pmf(drawn, 1000), pmf, atol=0.03)
    args = ["plan", "--model", "rm2", "--budget", "2.5", "--selector", "kairos", "--no-eval", "--top", "1"]
    chosen = {}
    for mix in ("kairos", str(log_file)):
        assert main([*args, "--mix", mix]) == 0
        out = capsys.readouterr().out
        assert f"batch mix {mix}," in out
        line = next(ln for ln in out.splitlines() if ln.startswith("kairos: "))
        chosen[mix] = float(line.split(" UB ")[1].split(" qps")[0])
    assert chosen[str(log_file)] > 2 * chosen["kairos"]  # batches of 20-100 against a mean of some 240
    big = tmp_path / "big.csv"
    big.write_text("batch\n10\n2048\n")
    assert main([*args, "--mix", str(big)]) == 2
    with pytest.raises(ConfigError, match="beyond the largest profiled batch, 1000"):
        workload.check_mix(str(big), 1000)
    # a named mix draws batches up to 1,000: a profile timed to 512 cannot plan it (the rest would count as 512)
    workload.check_mix("kairos", 1000)
    for named in workload.BATCH_MIXES:
        with pytest.raises(ConfigError, match=f"{named}: batches up to 1000, beyond the largest profiled batch, 512"):
            workload.check_mix(named, 512)
    (tmp_path / "nobatch.csv").write_text("size\n10\n")
    with pytest.raises(ConfigError, match="needs a 'batch' column"):
        workload.mix_pmf(str(tmp_path / "nobatch.csv"), 1000)
    with pytest.raises(ConfigError, match="or a readable CSV file"):
        workload.sample_batches("zipf", 10, np.random.default_rng(0))


def test_plan_keeps_the_instance_limits_of_instance_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """instance.json's max_num caps each type's count in `kairosd plan --data` (a user's quota: at most 1 fast
    and 3 slow instances), unless `--no-caps`."""
    from kairosd.cli import main

    root = _own_workload(tmp_path / "w", instance={"ins_types": ["fast", "slow"], "price": [0.5, 0.1], "max_num": [1, 3]})
    args = ["plan", "--data", str(root), "--model", "bert", "--budget", "1.0", "--qos-ms", "40", "--selector", "kairos",
            "--no-eval", "--all-configs", "--top", "100", "--mix", _small_mix(tmp_path)]

    def configs(extra: list[str]) -> set[tuple[int, int]]:
        assert main([*args, *extra]) == 0
        out = capsys.readouterr().out
        assert ("capped by instance.json (max_num)" in out) == (not extra)
        rows = [r for r in (ln.split() for ln in out.splitlines()) if len(r) > 3 and r[0].isdigit() and r[1].isdigit()]
        return {(int(r[1]), int(r[2])) for r in rows}

    capped = configs([])
    assert capped == {(f, s) for f in (0, 1) for s in range(4)} - {(0, 0)}
    assert len(configs(["--no-caps"])) == 17


def test_a_model_is_loaded_alone_beside_others_measured_on_other_types(tmp_path: Path) -> None:
    """A workload with a second model measured on the fast type only: loading every model is refused (each
    must be measured on the same types), loading the one a plan is for is not."""
    root = _own_workload(tmp_path / "w")
    for name in (workload.SAMPLES_FILE, workload.SUMMARY_FILE):
        lines = (root / name).read_text().splitlines()
        extra = [ln.replace("bert,", "gpt,", 1) for ln in lines[1:] if ln.startswith("bert,fast,")]
        (root / name).write_text("\n".join([*lines, *extra]) + "\n")
    with pytest.raises(ConfigError, match="profile every model on the same instance types"):
        workload.load_kairos(root)
    wl = workload.load_kairos(root, models=["bert"])
    assert wl.profiles.models == ("bert",) and wl.samples.models == ("bert",) and wl.types == ("fast", "slow")
    gpt = workload.load_kairos(root, models=["gpt"])
    assert gpt.types == ("fast",) and gpt.samples.samples_s.shape[:2] == (1, 1)
