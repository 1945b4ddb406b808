"""`kairosd profile` against a real ONNX Runtime worker: each model's profile and its timed queries, which
`kairosd plan --profiles` then plans with."""

from __future__ import annotations

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
                 "--reps", str(REPS), "--out", str(out)]) == 0
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
