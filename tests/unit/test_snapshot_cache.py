"""The cached one-query round: its snapshot equals a fresh build, is reused, read-only and bounded;
every policy is classified stateless or stateful, and the stateless ones really keep no state."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kairosd.dispatch import POLICIES, Snapshot, make_policy
from kairosd.profiles import ProfileTable
from kairosd.snapshot_cache import STATEFUL_POLICIES, STATELESS_POLICIES, FreshRounds

PROFILES = Path(__file__).resolve().parents[2] / "profiles" / "local"


def test_snapshot_equal_to_a_fresh_build_and_reused() -> None:
    cache = FreshRounds()
    fresh = cache.get(1, 7, 0.03, [2, 0, 2])
    snap = fresh.snap
    assert snap.q_model.tolist() == [1] and snap.q_batch.tolist() == [7]
    assert snap.q_waited_s.tolist() == [0.0] and snap.q_qos_s.tolist() == [0.03]
    assert snap.i_type.tolist() == [2, 0, 2] and snap.i_type.dtype == np.intp
    assert snap.i_busy_s.tolist() == [0.0] * 3 and snap.i_free.tolist() == [True] * 3
    assert fresh.decision is None
    assert cache.get(1, 7, 0.03, [2, 0, 2]) is fresh
    assert cache.get(1, 8, 0.03, [2, 0, 2]) is not fresh and len(cache) == 2


def test_arrays_are_read_only() -> None:
    snap = FreshRounds().get(0, 1, 0.01, [0]).snap
    with pytest.raises(ValueError):
        snap.i_free[0] = False


def test_bounded() -> None:
    cache = FreshRounds(limit=4)
    for b in range(10):
        cache.get(0, b, 0.01, [0])
    assert len(cache) <= 4


def test_every_policy_is_classified() -> None:
    assert STATELESS_POLICIES | STATEFUL_POLICIES == set(POLICIES)
    assert not STATELESS_POLICIES & STATEFUL_POLICIES


def _state(policy: Any) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in vars(policy).items()}) if hasattr(policy, "__dict__") else {}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a
        if not isinstance(a[k], ProfileTable)
    )


@pytest.mark.parametrize("name", sorted(STATELESS_POLICIES))
def test_stateless_policies_keep_no_state_and_repeat_their_answer(name: str) -> None:
    """A decision is reused for an identical snapshot only if the policy would give it again."""
    profiles = ProfileTable.load_dir(PROFILES, models=["dlrm", "ncf"])
    policy = make_policy(name, profiles)
    rng = np.random.default_rng(0)
    n_types = len(profiles.types)
    before = _state(policy)
    for _ in range(50):
        m, n = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        busy = np.where(rng.random(n) < 0.5, 0.0, rng.random(n) * 0.01)
        snap = Snapshot(
            q_model=rng.integers(0, 2, m).astype(np.intp), q_batch=rng.integers(1, 300, m).astype(np.intp),
            q_waited_s=rng.random(m) * 0.005, q_qos_s=np.full(m, 0.03),
            i_type=rng.integers(0, n_types, n).astype(np.intp), i_busy_s=busy, i_free=busy == 0.0,
        )
        first, second = policy(snap), policy(snap)
        assert first.pairs() == second.pairs()
    assert _same(before, _state(policy)), f"{name} changed its own state while deciding"


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_reads_a_cached_read_only_snapshot(name: str) -> None:
    """Cached snapshots are shared between rounds, so no policy may write one (it would raise here)."""
    profiles = ProfileTable.load_dir(PROFILES, models=["dlrm", "ncf"])
    policy = make_policy(name, profiles)
    cache = FreshRounds()
    for batch in (1, 64, 1000):
        snap = cache.get(1, batch, 0.03, list(range(len(profiles.types))) * 2).snap
        assignment = policy(snap)
        assert len(assignment) <= 1
