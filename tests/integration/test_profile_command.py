"""`kairosd profile` against a real ONNX Runtime worker: each model's profile and its timed queries, which
`kairosd plan --profiles` then plans with."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from kairosd.profiles import SAMPLES_SUFFIX, ProfileTable, read_csv, read_samples_csv
from tests.integration.daemon_harness import REPO

REPS = 8


def test_profile_writes_the_timed_queries_and_plan_reads_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kairosd.cli import main

    out = tmp_path / "profiles"
    assert main(["profile", "--config", str(REPO / "configs/local.toml"), "--types", "ort-1t", "--batches", "1,4",
                 "--reps", str(REPS), "--refine-rounds", "0", "--out", str(out)]) == 0
    for model in ("dlrm", "ncf"):
        rows = {p.batch: p for p in read_csv(out / f"{model}.csv")}
        timed = read_samples_csv(out / f"{model}{SAMPLES_SUFFIX}")["ort-1t"]
        # the batches asked for, and the model's max_batch_size (its config.pbtxt), past which nothing is extrapolated
        assert set(rows) == set(timed) == {1, 4, 1024} and all(len(v) == REPS for v in timed.values())
        # batch 1's row is its queries' mean and p99; a larger batch is at least as slow (`monotone`)
        assert rows[1].mean_s == pytest.approx(float(np.mean(timed[1])), rel=1e-6)
        assert rows[1].p99_s == pytest.approx(float(np.percentile(timed[1], 99)), rel=1e-6)
        assert rows[4].mean_s >= float(np.mean(timed[4])) * (1 - 1e-6)
    assert ProfileTable.load_dir(out).samples["ncf"]["ort-1t"][4].shape == (REPS,)
    capsys.readouterr()

    (tmp_path / "types.toml").write_text('[types.ort-1t]\nprice_usd_per_hour = 0.05\ngpu = false\n'
                                         'backend = "onnxruntime"\nslots = 1\n')
    assert main(["plan", "--profiles", str(out), "--catalogue", str(tmp_path / "types.toml"), "--model", "ncf",
                 "--qos-ms", "10", "--budget", "0.1", "--selector", "kairos_plus", "--queries", "1000",
                 "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "service-time tails: the profile's timed queries" in text.splitlines()[0], text
    assert "kairos_plus: 2×ort-1t" in text, text


def test_profile_times_more_batches_where_the_p99_crosses_the_models_qos(tmp_path: Path) -> None:
    """A QoS target for ncf between its latency at batch 64 and at its max_batch_size (1024), from a first profile:
    `--refine-rounds 2` then times, in each of up to two rounds, the midpoint of every two neighbouring timed
    batches whose p99s lie on either side of the target (`refine_batches`), and no other batch (checked against
    the run's own timed queries)."""
    from kairosd.cli import main
    from kairosd.profiler import refine_batches

    first = tmp_path / "first"
    assert main(["profile", "--config", str(REPO / "configs/local.toml"), "--types", "ort-1t", "--batches", "1,64",
                 "--reps", str(REPS), "--refine-rounds", "0", "--out", str(first)]) == 0
    # between the medians: a slow query or two in the first profile does not move it
    median = {b: float(np.median(v)) for b, v in read_samples_csv(first / f"ncf{SAMPLES_SUFFIX}")["ort-1t"].items()}
    qos_s = float(np.sqrt(median[64] * median[1024]))
    (tmp_path / "configs").mkdir()
    text = (REPO / "configs/local.toml").read_text()
    text, n_repo = re.subn(r'(?m)^repository = "model_repository"', f'repository = "{REPO / "model_repository"}"', text)
    text, n_qos = re.subn(r"(?m)^ncf = [0-9.]+", f"ncf = {qos_s * 1e3:.6f}", text)
    assert (n_repo, n_qos) == (1, 1)
    (tmp_path / "configs/local.toml").write_text(text)

    out = tmp_path / "refined"
    assert main(["profile", "--config", str(tmp_path / "configs/local.toml"), "--types", "ort-1t", "--batches", "1,64",
                 "--reps", str(REPS), "--refine-rounds", "2", "--out", str(out)]) == 0
    timed = read_samples_csv(out / f"ncf{SAMPLES_SUFFIX}")["ort-1t"]
    p99 = {b: float(np.percentile(v, 99)) for b, v in timed.items()}
    first_round = refine_batches({b: p99[b] for b in (1, 64, 1024)}, qos_s, added=0)
    second_round = refine_batches({b: p99[b] for b in (1, 64, 1024, *first_round)}, qos_s, added=len(first_round))
    # (a slow query at a small batch on a busy host can put every p99 over the target: then none is added)
    assert set(timed) == {1, 64, 1024, *first_round, *second_round}, (qos_s, p99)
    assert ProfileTable.load_dir(out).samples["ncf"]["ort-1t"].keys() == timed.keys()
