"""The simulator's event loops with kairosd's Kairos matching, compiled: `sim._run` (one model) and
`sim._run_mix` (several models in one stream) driving a `KairosPolicy` (the daemon's rule, or the
paper's), decision for decision the same.

`sim._run` calls the policy through a `Snapshot` once per round; with the small matrices of a
round (a few queries over a few dozen slots) numpy's per-call overhead, not arithmetic, is most of
a simulated run, and the planner's Kairos+ spends most of its time in such runs. This module runs the
same loops and the same rule in compiled code (numba), with every floating-point operation in the order
`_run`, `_run_mix`, `KairosPolicy` and scipy's `linear_sum_assignment` perform it, so that a run gives
the same finish times, the same number of policy calls and the same verdict (tests/unit/test_simkernel.py
and tests/unit/test_simkernel_mix.py compare them). Other policies run in `sim._run` and `sim._run_mix`.

The mix loop's rule (`_mix_decide` and its `_mix_*` helpers) prices a row of the matching on its query's
group (a model with its QoS), as `KairosPolicy` prices a snapshot row on its `q_model` and `q_qos_s`, and a
lone query by `_one_column` on its group's tables; the single-model loop keeps the rule on one model's
tables (`_cells`, `_one_column`, `_gather_row`): its rounds are most of a Kairos+ walk, and they are
cheaper there than priced by group (tests/unit/test_simkernel_mix.py checks that the two loops agree on a
stream of one group).

`_lsap` is the shortest augmenting path algorithm for the rectangular assignment problem (Crouse,
"On implementing 2D rectangular assignment algorithms", IEEE TAES 52(4), 2016) as scipy implements
it, with its tie-breaking (columns scanned from the last, a free column preferred among equal
reduced costs); `_assign` solves a matrix with more rows than columns transposed and returns the
matched rows in order, as scipy's `linear_sum_assignment` does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np

from kairosd.dispatch import INFEASIBLE_PENALTY_QOS, SCALAR_MAX_COLUMNS, KairosPolicy, Policy

_njit: Callable[..., Any] | None
try:
    from numba import njit as _njit
except ImportError:  # numba is a dependency; without it `sim._run` and `sim._run_mix` run every simulation
    _njit = None

# set KAIROSD_SIM_KERNEL=0 to run every simulation in the Python event loops (`sim._run`, `sim._run_mix`)
ENABLED = os.environ.get("KAIROSD_SIM_KERNEL", "1") != "0" and _njit is not None

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class KairosRule:
    """A `KairosPolicy`'s tables and switches for one model, as the compiled loop takes them."""

    mean: np.ndarray  # [type, batch] profile mean
    cmean: np.ndarray  # [type, batch] C_type · mean
    check: np.ndarray  # [type, batch] the latency feasibility is judged on (p99 or mean)
    coef: np.ndarray  # [type] heterogeneity coefficient C_type
    margin_s: float
    lookahead: int
    hold: float  # `KairosPolicy.hold_level`: a forced match costing this many penalties or more waits
    tiers: bool
    sure_miss_by_finish: bool
    sure_miss_bound: float


@dataclass(frozen=True)
class MixRule:
    """A `KairosPolicy`'s tables and switches for the groups of a mix run, as the compiled mix loop takes
    them: group g is a model, its tables the policy's for that model."""

    mean: np.ndarray  # [group, type, batch] profile mean
    cmean: np.ndarray  # [group, type, batch] C_type · mean
    check: np.ndarray  # [group, type, batch] the latency feasibility is judged on (p99 or mean)
    coef: np.ndarray  # [group, type] heterogeneity coefficient C_type
    margin_s: float
    lookahead: int
    hold: float  # `KairosPolicy.hold_level`: a forced match costing this many penalties or more waits
    tiers: bool
    sure_miss_by_finish: bool
    sure_miss_bound: float


def rule_for(policy: Policy, model_idx: int) -> KairosRule | None:
    """The compiled loop's form of `policy`, or None when `sim._run` must run it (another policy, a
    subclass, or the kernel switched off or unavailable)."""
    if not ENABLED or type(policy) is not KairosPolicy:
        return None
    return KairosRule(
        mean=np.ascontiguousarray(policy.mean[model_idx]), cmean=np.ascontiguousarray(policy.cmean[model_idx]),
        check=np.ascontiguousarray(policy.check[model_idx]), coef=np.ascontiguousarray(policy.coef[model_idx]),
        margin_s=float(policy.margin_s), lookahead=policy.lookahead, hold=policy.hold_level, tiers=bool(policy.tiers),
        sure_miss_by_finish=bool(policy.sure_miss_by_finish), sure_miss_bound=float(policy.sure_miss_bound))


def mix_rule_for(policy: Policy, model_idx: Sequence[int] | np.ndarray) -> MixRule | None:
    """The compiled loop's form of `policy` with group g for model `model_idx[g]` (ProfileTable indices),
    or None when `sim._run_mix` must run it (as `rule_for`)."""
    if not ENABLED or type(policy) is not KairosPolicy:
        return None
    idx = np.asarray(model_idx, dtype=np.intp)
    return MixRule(
        mean=np.ascontiguousarray(policy.mean[idx]), cmean=np.ascontiguousarray(policy.cmean[idx]),
        check=np.ascontiguousarray(policy.check[idx]), coef=np.ascontiguousarray(policy.coef[idx]),
        margin_s=float(policy.margin_s), lookahead=policy.lookahead, hold=policy.hold_level, tiers=bool(policy.tiers),
        sure_miss_by_finish=bool(policy.sure_miss_by_finish), sure_miss_bound=float(policy.sure_miss_bound))


def run(arr: np.ndarray, svc: np.ndarray, expected: np.ndarray, batches: np.ndarray, cols: np.ndarray,
        rule: KairosRule, qos_s: float, measure_from: int, max_violations: int,
        deadline_s: float) -> tuple[np.ndarray, np.ndarray, bool, int, float]:
    """`sim._run` for `rule`: the same arguments (the policy as its `KairosRule`) and the same result
    (finish times, hand-out times, aborted, policy calls, instance-seconds handed out)."""
    finish, start, aborted, calls, work = _run_kairos(
        np.ascontiguousarray(arr, dtype=np.float64), np.ascontiguousarray(svc, dtype=np.float64),
        np.ascontiguousarray(expected, dtype=np.float64), np.ascontiguousarray(batches, dtype=np.int64),
        np.ascontiguousarray(cols, dtype=np.int64), rule.mean, rule.cmean, rule.check, rule.coef,
        float(qos_s), rule.margin_s, int(rule.lookahead), rule.hold, rule.tiers, rule.sure_miss_by_finish,
        rule.sure_miss_bound, int(measure_from), int(max_violations), float(deadline_s))
    return finish, start, bool(aborted), int(calls), float(work)


def run_mix(arr: np.ndarray, svc: np.ndarray, expected: np.ndarray, batches: np.ndarray, cols: np.ndarray,
            rule: MixRule, group: np.ndarray, group_qos_s: np.ndarray, measure_from: int,
            max_violations: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, int, float]:
    """`sim._run_mix` for `rule` (`mix_rule_for` the groups' models): the same arguments (the policy and the
    groups' models as the rule) and the same result."""
    if rule.mean.shape[0] != len(group_qos_s) or len(max_violations) != len(group_qos_s):
        raise ValueError(f"{rule.mean.shape[0]} groups' tables, {len(group_qos_s)} QoS targets and "
                         f"{len(max_violations)} violation caps")
    finish, start, aborted, calls, work = _run_kairos_mix(
        np.ascontiguousarray(arr, dtype=np.float64), np.ascontiguousarray(svc, dtype=np.float64),
        np.ascontiguousarray(expected, dtype=np.float64), np.ascontiguousarray(batches, dtype=np.int64),
        np.ascontiguousarray(cols, dtype=np.int64), np.ascontiguousarray(group, dtype=np.int64), rule.mean,
        rule.cmean, rule.check, rule.coef, np.ascontiguousarray(group_qos_s, dtype=np.float64), rule.margin_s,
        int(rule.lookahead), rule.hold, rule.tiers, rule.sure_miss_by_finish, rule.sure_miss_bound,
        int(measure_from), np.ascontiguousarray(max_violations, dtype=np.int64))
    return finish, start, bool(aborted), int(calls), float(work)


def _jit(fn: _F) -> _F:
    """`fn` compiled in nopython mode, cached on disk beside this module (or left as Python without numba)."""
    return fn if _njit is None else cast(_F, _njit(cache=True, nogil=True)(fn))


def _jit_inlined(fn: _F) -> _F:
    """`_jit`, with `fn`'s body inlined where it is called (numba's inline="always"): no call with its
    arrays passed field by field, once per round."""
    return fn if _njit is None else cast(_F, _njit(cache=True, nogil=True, inline="always")(fn))


@_jit
def _lsap(cost: np.ndarray, nr: int, nc: int, col4row: np.ndarray) -> bool:
    """Minimum-cost assignment of rows 0..nr-1 of `cost` (nr <= nc) to distinct columns of 0..nc-1,
    into `col4row`; False if the matrix is infeasible (scipy's `linear_sum_assignment`)."""
    u = np.zeros(nr)
    v = np.zeros(nc)
    spc = np.empty(nc)
    path = np.full(nc, -1, dtype=np.int64)
    row4col = np.full(nc, -1, dtype=np.int64)
    sr = np.zeros(nr, dtype=np.bool_)
    sc = np.zeros(nc, dtype=np.bool_)
    remaining = np.empty(nc, dtype=np.int64)
    for i in range(nr):
        col4row[i] = -1
    for cur in range(nr):
        min_val = 0.0
        n_rem = nc
        for it in range(nc):
            remaining[it] = nc - it - 1
        sr[:] = False
        sc[:] = False
        spc[:] = math.inf
        sink = -1
        i = cur
        while sink == -1:
            index = -1
            lowest = math.inf
            sr[i] = True
            for it in range(n_rem):
                j = remaining[it]
                r = min_val + cost[i, j] - u[i] - v[j]
                if r < spc[j]:
                    path[j] = i
                    spc[j] = r
                if spc[j] < lowest or (spc[j] == lowest and row4col[j] == -1):
                    lowest = spc[j]
                    index = it
            min_val = lowest
            if index < 0 or min_val == math.inf:
                return False
            j = remaining[index]
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            sc[j] = True
            n_rem -= 1
            remaining[index] = remaining[n_rem]
        u[cur] += min_val
        for i in range(nr):
            if sr[i] and i != cur:
                u[i] += min_val - spc[col4row[i]]
        for j in range(nc):
            if sc[j]:
                v[j] -= min_val - spc[j]
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            prev = col4row[i]
            col4row[i] = j
            j = prev
            if i == cur:
                break
    return True


@_jit
def _assign(cost: np.ndarray, nr: int, nc: int, col4row: np.ndarray, out_rows: np.ndarray,
            out_cols: np.ndarray) -> int:
    """scipy's `linear_sum_assignment` on cost[:nr, :nc]: the matched rows in increasing order and their
    columns into `out_rows`, `out_cols`; returns how many (min(nr, nc)). A matrix with more rows than
    columns is solved transposed, as scipy does."""
    if nr <= nc:
        _lsap(cost, nr, nc, col4row)
        for i in range(nr):
            out_rows[i] = i
            out_cols[i] = col4row[i]
        return nr
    tall = np.empty((nc, nr))
    for i in range(nr):
        for j in range(nc):
            tall[j, i] = cost[i, j]
    row4col = np.empty(nc, dtype=np.int64)
    _lsap(tall, nc, nr, row4col)
    order = np.argsort(row4col)
    for k in range(nc):
        out_rows[k] = row4col[order[k]]
        out_cols[k] = order[k]
    return nc


@_jit
def _cells(cost: np.ndarray, rows: int, slots: int, n: int, slot_busy: np.ndarray, waited: np.ndarray, qos_s: float,
           margin_s: float, smean: np.ndarray, scm: np.ndarray, sck: np.ndarray, scoef: np.ndarray, tiers: bool,
           by_finish: bool, bound: float) -> None:
    """`KairosPolicy._slot_costs` into cost[:rows, :slots·n] (slot-major): the edge of row r and slot k
    of column j at busy time slot_busy[k, j]; `smean`, `scm`, `sck` [row, column] the row's mean,
    C·mean and check latency on the column's type, `scoef` [column] its coefficient."""
    budget = qos_s - margin_s
    any_infeasible = False
    for r in range(rows):
        for k in range(slots):
            for j in range(n):
                b = slot_busy[k, j]
                cost[r, k * n + j] = scoef[j] * b + scm[r, j]
                if waited[r] + b + sck[r, j] > budget:
                    any_infeasible = True
    if not any_infeasible:
        return
    penalty = INFEASIBLE_PENALTY_QOS * qos_s
    for r in range(rows):
        for k in range(slots):
            for j in range(n):
                start = waited[r] + slot_busy[k, j]
                cost[r, k * n + j] = _penalised(cost[r, k * n + j], start, sck[r, j], smean[r, j], qos_s, budget,
                                                penalty, tiers, by_finish, bound)


@_jit
def _penalised(x: float, start: float, check: float, mean: float, qos_s: float, budget: float, penalty: float,
               tiers: bool, by_finish: bool, bound: float) -> float:
    """`KairosPolicy._slot_costs`'s penalties on one edge of cost `x` (the row's query starting at `start` on
    a column whose check latency is `check` and mean `mean`; `budget` QoS less the margin): infeasible on
    its p99 test, then, with `tiers`, the tier of its finish (late, or past `bound`·QoS)."""
    if start + check > budget:
        x = x + penalty
    else:
        x = x + 0.0
    if tiers:
        finish = start + mean
        late = finish > budget
        if by_finish:
            sure = 2.0 * penalty + finish if late else x
        else:
            sure = x + penalty if late else x + 0.0
            if bound < math.inf and finish > bound * qos_s:
                sure = 3.0 * penalty + finish
        x = 1.5 * penalty + finish if late and finish <= qos_s else sure
    return x


@_jit
def _one_column(b: int, waited: float, qos_s: float, margin_s: float, cols: np.ndarray, busy: np.ndarray,
                mean: np.ndarray, cmean: np.ndarray, check: np.ndarray, coef: np.ndarray, tiers: bool, by_finish: bool,
                bound: float) -> int:
    """`KairosPolicy.one_column`: the first column of least cost for a single query of batch `b`."""
    budget = qos_s - margin_s - waited
    on_time = budget + margin_s
    beyond = bound * qos_s - waited
    penalty = INFEASIBLE_PENALTY_QOS * qos_s
    best = math.inf
    best_j = 0
    for j in range(len(cols)):
        t = cols[j]
        t_j = busy[j]
        c = coef[t] * t_j + cmean[t, b]
        if t_j + check[t, b] > budget:
            c += penalty
            finish = t_j + mean[t, b]
            if tiers and finish > budget:
                if finish <= on_time:
                    c = 1.5 * penalty + finish
                elif by_finish:
                    c = 2.0 * penalty + finish
                elif finish > beyond:
                    c = 3.0 * penalty + finish
                else:
                    c += penalty
        if c < best:
            best = c
            best_j = j
    return best_j


@_jit
def _late_in_queue(arr: np.ndarray, queue: np.ndarray, qhead: int, qlen: int, now: float, deadline_s: float,
                   measure_from: int) -> int:
    """`sim._late_in_queue` on queue[qhead:qhead + qlen]."""
    cutoff = np.searchsorted(arr, now - deadline_s)
    waiting = queue[qhead:qhead + qlen]
    late = int(np.searchsorted(waiting, cutoff) - np.searchsorted(waiting, measure_from))
    return late if late > 0 else 0


@_jit
def _gather_row(r: int, q: int, now: float, arr: np.ndarray, batches: np.ndarray, cols: np.ndarray, mean: np.ndarray,
                cmean: np.ndarray, check: np.ndarray, waited: np.ndarray, smean: np.ndarray, scm: np.ndarray,
                sck: np.ndarray) -> None:
    """Row `r` of the matching for query `q`: its wait, and its mean, C·mean and check latency on every
    column's type (`_service`'s lookups, the batch clamped to the tables)."""
    b = min(batches[q], mean.shape[1] - 1)
    waited[r] = now - arr[q]
    for j in range(cols.shape[0]):
        t = cols[j]
        smean[r, j] = mean[t, b]
        scm[r, j] = cmean[t, b]
        sck[r, j] = check[t, b]


@_jit_inlined
def _held(cost: np.ndarray, r: int, c: int, n_cols: int, hold: float, penalty: float) -> bool:
    """`KairosPolicy.__call__`'s hold: whether the match of row r to column c waits rather than being carried
    out, i.e. it costs `hold` penalties or more while the row has a feasible edge (below one penalty)."""
    if cost[r, c] < hold * penalty:
        return False
    low = math.inf
    for jj in range(n_cols):
        if cost[r, jj] < low:
            low = cost[r, jj]
    return low < penalty


@_jit
def _run_kairos(arr: np.ndarray, svc: np.ndarray, expected: np.ndarray, batches: np.ndarray, cols: np.ndarray,
                mean: np.ndarray, cmean: np.ndarray, check: np.ndarray, coef: np.ndarray, qos_s: float, margin_s: float,
                lookahead: int, hold: float, tiers: bool, by_finish: bool, bound: float, measure_from: int,
                max_violations: int, deadline_s: float) -> tuple[np.ndarray, np.ndarray, bool, int, float]:
    """`sim._run` with `KairosPolicy.__call__` inlined (see the module docstring); `run` calls it."""
    n_q = arr.shape[0]
    n_i = cols.shape[0]
    window = 2 * n_i
    n_b = mean.shape[1]
    slots = lookahead + 1
    free_at = np.zeros(n_i)
    expect_at = np.zeros(n_i)
    pending = np.zeros(n_i, dtype=np.bool_)  # a completion not yet taken (sim._run's heap)
    n_busy = 0  # columns pending (len of sim._run's heap)
    free = np.zeros(n_i, dtype=np.bool_)
    busy = np.zeros(n_i)
    queue = np.empty(n_q, dtype=np.int64)  # the waiting queries are queue[qhead:qhead + qlen]
    qhead = 0
    qlen = 0
    finish = np.full(n_q, math.inf)
    start = np.full(n_q, math.inf)
    max_rows = n_i if lookahead else window  # the matching's rows (`KairosPolicy.__call__`)
    smean = np.empty((max_rows, n_i))
    scm = np.empty((max_rows, n_i))
    sck = np.empty((max_rows, n_i))
    scoef = np.empty(n_i)
    for j in range(n_i):
        scoef[j] = coef[cols[j]]
    waited = np.empty(max_rows)
    slot_busy = np.empty((slots, n_i))
    cost = np.empty((max_rows, slots * n_i))
    col4row = np.empty(max_rows, dtype=np.int64)
    match_r = np.empty(max_rows, dtype=np.int64)
    match_c = np.empty(max_rows, dtype=np.int64)
    take_r = np.empty(n_i, dtype=np.int64)
    take_c = np.empty(n_i, dtype=np.int64)
    removed = np.zeros(window, dtype=np.bool_)
    penalty = INFEASIBLE_PENALTY_QOS * qos_s
    viol = 0
    calls = 0
    work = 0.0
    i = 0
    while True:
        t_arr = arr[i] if i < n_q else math.inf
        t_done = math.inf
        for c in range(n_i):
            if pending[c] and free_at[c] < t_done:
                t_done = free_at[c]
        if n_busy and t_done <= t_arr:
            now = t_done
            for c in range(n_i):
                if pending[c] and free_at[c] <= now:
                    pending[c] = False
                    n_busy -= 1
        elif i < n_q:
            now = t_arr
            queue[qhead + qlen] = i
            qlen += 1
            i += 1
            if (now - arr[queue[qhead]] > deadline_s and i > measure_from
                    and viol + _late_in_queue(arr, queue, qhead, qlen, now, deadline_s, measure_from)
                    > max_violations):
                return finish, start, True, calls, work
        else:
            break
        if qlen == 0 or n_busy == n_i:
            continue
        calls += 1
        for c in range(n_i):
            free[c] = free_at[c] <= now
            busy[c] = 0.0 if free[c] else max(expect_at[c] - now, 1e-6)
        m = min(window, qlen)
        n_take = 0
        if m == 1:
            q = queue[qhead]
            b = min(batches[q], n_b - 1)
            if n_i <= SCALAR_MAX_COLUMNS:
                j = _one_column(b, now - arr[q], qos_s, margin_s, cols, busy, mean, cmean, check, coef, tiers,
                                by_finish, bound)
            else:
                _gather_row(0, q, now, arr, batches, cols, mean, cmean, check, waited, smean, scm, sck)
                for jj in range(n_i):
                    slot_busy[0, jj] = busy[jj]
                _cells(cost, 1, 1, n_i, slot_busy, waited, qos_s, margin_s, smean, scm, sck, scoef, tiers,
                       by_finish, bound)
                j = 0
                for jj in range(1, n_i):
                    if cost[0, jj] < cost[0, j]:
                        j = jj
            if free[j]:
                take_r[0] = 0
                take_c[0] = j
                n_take = 1
        else:
            rows = min(m, max_rows)
            for r in range(rows):
                _gather_row(r, queue[qhead + r], now, arr, batches, cols, mean, cmean, check, waited, smean, scm, sck)
            for j in range(n_i):
                slot_busy[0, j] = busy[j]
                if lookahead:
                    total = 0.0
                    for r in range(rows):
                        total += smean[r, j]
                    step = total / rows
                    for k in range(slots):
                        slot_busy[k, j] = busy[j] + k * step
            _cells(cost, rows, slots, n_i, slot_busy, waited, qos_s, margin_s, smean, scm, sck, scoef, tiers,
                   by_finish, bound)
            n_cols = slots * n_i
            n_match = _assign(cost, rows, n_cols, col4row, match_r, match_c)
            for k in range(n_match):
                r = match_r[k]
                c = match_c[k]
                if c >= n_i or not free[c]:
                    continue
                if _held(cost, r, c, n_cols, hold, penalty):
                    continue
                take_r[n_take] = r
                take_c[n_take] = c
                n_take += 1
        if n_take == 0:
            if n_busy == 0 and i >= n_q:
                break  # nothing running, nothing arriving, and the policy serves no one: stuck for good
            continue
        last = 0
        for k in range(n_take):
            r = take_r[k]
            c = take_c[k]
            q = queue[qhead + r]
            t = cols[c]
            s_qt = svc[q, t]
            work += s_qt
            f = now + s_qt
            free_at[c] = f
            expect_at[c] = now + expected[q, t]
            pending[c] = True
            n_busy += 1
            finish[q] = f
            start[q] = now
            if f - arr[q] > deadline_s and q >= measure_from:
                viol += 1
            removed[r] = True
            last = r
        # drop the taken rows, keeping the queue's order: the kept ones among the first `last` + 1
        # move up against the rest, and the head advances past the gap
        w = last
        for k in range(last, -1, -1):
            if removed[k]:
                removed[k] = False
            else:
                queue[qhead + w] = queue[qhead + k]
                w -= 1
        qhead += n_take
        qlen -= n_take
        if viol > max_violations:
            return finish, start, True, calls, work
    return finish, start, False, calls, work


@_jit
def _mix_cells(cost: np.ndarray, rows: int, slots: int, n: int, slot_busy: np.ndarray, waited: np.ndarray,
               rqos: np.ndarray, margin_s: float, smean: np.ndarray, scm: np.ndarray, sck: np.ndarray, scoef: np.ndarray,
               tiers: bool, by_finish: bool, bound: float) -> None:
    """`KairosPolicy._slot_costs` into cost[:rows, :slots·n] (slot-major): the edge of row r and slot k
    of column j at busy time slot_busy[k, j]; `smean`, `scm`, `sck`, `scoef` [row, column] the row's
    mean, C·mean, check latency and coefficient on the column's type, `rqos` [row] the row's QoS."""
    any_infeasible = False
    for r in range(rows):
        budget = rqos[r] - margin_s
        for k in range(slots):
            for j in range(n):
                b = slot_busy[k, j]
                cost[r, k * n + j] = scoef[r, j] * b + scm[r, j]
                if waited[r] + b + sck[r, j] > budget:
                    any_infeasible = True
    if not any_infeasible:
        return
    for r in range(rows):
        qos_s = rqos[r]
        budget = qos_s - margin_s
        penalty = INFEASIBLE_PENALTY_QOS * qos_s
        for k in range(slots):
            for j in range(n):
                start = waited[r] + slot_busy[k, j]
                cost[r, k * n + j] = _penalised(cost[r, k * n + j], start, sck[r, j], smean[r, j], qos_s, budget,
                                                penalty, tiers, by_finish, bound)


@_jit
def _mix_gather_row(r: int, q: int, now: float, arr: np.ndarray, batches: np.ndarray, grp: np.ndarray, cols: np.ndarray,
                    mean: np.ndarray, cmean: np.ndarray, check: np.ndarray, coef: np.ndarray, qos: np.ndarray,
                    waited: np.ndarray, rqos: np.ndarray, smean: np.ndarray, scm: np.ndarray, sck: np.ndarray,
                    scoef: np.ndarray) -> None:
    """Row `r` of the matching for query `q` of group grp[q]: its wait and QoS, and its mean, C·mean,
    check latency and coefficient on every column's type from its group's tables (`_service`'s lookups,
    the batch clamped to the tables)."""
    g = grp[q]
    b = min(batches[q], mean.shape[2] - 1)
    waited[r] = now - arr[q]
    rqos[r] = qos[g]
    for j in range(cols.shape[0]):
        t = cols[j]
        smean[r, j] = mean[g, t, b]
        scm[r, j] = cmean[g, t, b]
        sck[r, j] = check[g, t, b]
        scoef[r, j] = coef[g, t]


_MixScratch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                    np.ndarray, np.ndarray, np.ndarray]


@_jit
def _mix_buffers(n_i: int, lookahead: int) -> _MixScratch:
    """`_mix_decide`'s scratch arrays for `n_i` columns: for the rows of the matching, each one's wait and QoS
    (`waited`, `rqos`) and its mean, C·mean, check latency and coefficient on each column (`smean`, `scm`,
    `sck`, `scoef`: rows × columns); the slots' busy times (`slot_busy`: slots × columns); the cost matrix
    (rows × slots·columns); the assignment's `col4row`, matched rows and columns."""
    max_rows = n_i if lookahead else 2 * n_i
    slots = lookahead + 1
    return (np.empty(max_rows), np.empty(max_rows), np.empty((max_rows, n_i)), np.empty((max_rows, n_i)),
            np.empty((max_rows, n_i)), np.empty((max_rows, n_i)), np.empty((slots, n_i)),
            np.empty((max_rows, slots * n_i)), np.empty(max_rows, dtype=np.int64), np.empty(max_rows, dtype=np.int64),
            np.empty(max_rows, dtype=np.int64))


@_jit_inlined
def _mix_decide(now: float, arr: np.ndarray, batches: np.ndarray, grp: np.ndarray, queue: np.ndarray, qhead: int,
                qlen: int, cols: np.ndarray, free: np.ndarray, busy: np.ndarray,
                tables: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                switches: tuple[float, int, float, bool, bool, float], scratch: _MixScratch, take_r: np.ndarray,
                take_c: np.ndarray) -> int:
    """`KairosPolicy.__call__` on the snapshot of the waiting queries queue[qhead:qhead + qlen] (qlen >= 1)
    at `now` over the columns `cols` (`free`, busy times `busy`): query q of group grp[q] is priced on
    its group's `tables` (mean, cmean, check [group, type, batch], coef [group, type], qos [group]) with
    the rule's `switches` (margin_s, lookahead, hold, tiers, sure_miss_by_finish, sure_miss_bound), in
    `scratch` (`_mix_buffers`). The rows to hand out (positions in the queue, increasing) and their columns go
    into `take_r`, `take_c`; returns how many."""
    mean, cmean, check, coef, qos = tables
    margin_s, lookahead, hold, tiers, by_finish, bound = switches
    waited, rqos, smean, scm, sck, scoef, slot_busy, cost, col4row, match_r, match_c = scratch
    n_i = cols.shape[0]
    n_b = mean.shape[2]
    slots = lookahead + 1
    max_rows = n_i if lookahead else 2 * n_i  # the matching's rows (`KairosPolicy.__call__`)
    m = min(2 * n_i, qlen)
    n_take = 0
    if m == 1:
        q = queue[qhead]
        g = grp[q]
        b = min(batches[q], n_b - 1)
        if n_i <= SCALAR_MAX_COLUMNS:
            j = _one_column(b, now - arr[q], qos[g], margin_s, cols, busy, mean[g], cmean[g], check[g], coef[g], tiers,
                            by_finish, bound)
        else:
            _mix_gather_row(0, q, now, arr, batches, grp, cols, mean, cmean, check, coef, qos, waited, rqos, smean,
                            scm, sck, scoef)
            for jj in range(n_i):
                slot_busy[0, jj] = busy[jj]
            _mix_cells(cost, 1, 1, n_i, slot_busy, waited, rqos, margin_s, smean, scm, sck, scoef, tiers, by_finish,
                       bound)
            j = 0
            for jj in range(1, n_i):
                if cost[0, jj] < cost[0, j]:
                    j = jj
        if free[j]:
            take_r[0] = 0
            take_c[0] = j
            n_take = 1
        return n_take
    rows = min(m, max_rows)
    for r in range(rows):
        _mix_gather_row(r, queue[qhead + r], now, arr, batches, grp, cols, mean, cmean, check, coef, qos, waited,
                        rqos, smean, scm, sck, scoef)
    for j in range(n_i):
        slot_busy[0, j] = busy[j]
        if lookahead:
            total = 0.0
            for r in range(rows):
                total += smean[r, j]
            step = total / rows
            for k in range(slots):
                slot_busy[k, j] = busy[j] + k * step
    _mix_cells(cost, rows, slots, n_i, slot_busy, waited, rqos, margin_s, smean, scm, sck, scoef, tiers, by_finish,
               bound)
    n_cols = slots * n_i
    n_match = _assign(cost, rows, n_cols, col4row, match_r, match_c)
    for k in range(n_match):
        r = match_r[k]
        c = match_c[k]
        if c >= n_i or not free[c]:
            continue
        if _held(cost, r, c, n_cols, hold, INFEASIBLE_PENALTY_QOS * rqos[r]):
            continue
        take_r[n_take] = r
        take_c[n_take] = c
        n_take += 1
    return n_take


@_jit
def _drop_taken(queue: np.ndarray, qhead: int, qlen: int, removed: np.ndarray, last: int,
                n_take: int) -> tuple[int, int]:
    """The queue queue[qhead:qhead + qlen] less the `n_take` rows marked in `removed` (the last at row
    `last`), in order; returns its new head and length and clears the marks. The kept rows among the first
    `last` + 1 move up against the rest, and the head advances past the gap."""
    w = last
    for k in range(last, -1, -1):
        if removed[k]:
            removed[k] = False
        else:
            queue[qhead + w] = queue[qhead + k]
            w -= 1
    return qhead + n_take, qlen - n_take


@_jit
def _fenwick_add(tree: np.ndarray, g: int, q: int, delta: int) -> None:
    """Count query `q` (`delta` +1) or stop counting it (-1) among group g's waiting queries."""
    k = q + 1
    n = tree.shape[1]
    while k < n:
        tree[g, k] += delta
        k += k & -k


@_jit
def _fenwick_below(tree: np.ndarray, g: int, q: int) -> int:
    """How many of group g's waiting queries have an index below `q`."""
    total = 0
    k = q
    while k > 0:
        total += tree[g, k]
        k -= k & -k
    return total


@_jit
def _run_kairos_mix(arr: np.ndarray, svc: np.ndarray, expected: np.ndarray, batches: np.ndarray, cols: np.ndarray,
                    grp: np.ndarray, mean: np.ndarray, cmean: np.ndarray, check: np.ndarray, coef: np.ndarray,
                    qos: np.ndarray, margin_s: float, lookahead: int, hold: float, tiers: bool, by_finish: bool,
                    bound: float, measure_from: int,
                    max_violations: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, int, float]:
    """`sim._run_mix` with `KairosPolicy.__call__` inlined (`_mix_decide`); `run_mix` calls it. Each group's
    waiting queries are counted by index in a Fenwick tree (`sim._run_mix`'s sorted lists, whose
    bisections it answers)."""
    n_q = arr.shape[0]
    n_i = cols.shape[0]
    n_groups = qos.shape[0]
    window = 2 * n_i
    min_qos = math.inf
    for g in range(n_groups):
        min_qos = min(min_qos, qos[g])
    free_at = np.zeros(n_i)
    expect_at = np.zeros(n_i)
    pending = np.zeros(n_i, dtype=np.bool_)  # a completion not yet taken (sim._run_mix's heap)
    n_busy = 0  # columns pending (len of sim._run_mix's heap)
    free = np.zeros(n_i, dtype=np.bool_)
    busy = np.zeros(n_i)
    queue = np.empty(n_q, dtype=np.int64)  # the waiting queries are queue[qhead:qhead + qlen]
    qhead = 0
    qlen = 0
    waiting = np.zeros((n_groups, n_q + 1), dtype=np.int64)  # each group's waiting queries (`_fenwick_add`)
    finish = np.full(n_q, math.inf)
    start = np.full(n_q, math.inf)
    tables = (mean, cmean, check, coef, qos)
    switches = (margin_s, lookahead, hold, tiers, by_finish, bound)
    scratch = _mix_buffers(n_i, lookahead)
    take_r = np.empty(n_i, dtype=np.int64)
    take_c = np.empty(n_i, dtype=np.int64)
    removed = np.zeros(window, dtype=np.bool_)
    viol = np.zeros(n_groups, dtype=np.int64)
    calls = 0
    work = 0.0
    i = 0
    while True:
        t_arr = arr[i] if i < n_q else math.inf
        t_done = math.inf
        for c in range(n_i):
            if pending[c] and free_at[c] < t_done:
                t_done = free_at[c]
        if n_busy and t_done <= t_arr:
            now = t_done
            for c in range(n_i):
                if pending[c] and free_at[c] <= now:
                    pending[c] = False
                    n_busy -= 1
        elif i < n_q:
            now = t_arr
            queue[qhead + qlen] = i
            qlen += 1
            _fenwick_add(waiting, grp[i], i, 1)
            i += 1
            if now - arr[queue[qhead]] > min_qos and i > measure_from:
                # measured queries already waiting longer than their QoS are violations whatever happens next
                for g in range(n_groups):
                    cutoff = np.searchsorted(arr, now - qos[g])
                    late = _fenwick_below(waiting, g, cutoff) - _fenwick_below(waiting, g, measure_from)
                    if viol[g] + max(late, 0) > max_violations[g]:
                        return finish, start, True, calls, work
        else:
            break
        if qlen == 0 or n_busy == n_i:
            continue
        calls += 1
        for c in range(n_i):
            free[c] = free_at[c] <= now
            busy[c] = 0.0 if free[c] else max(expect_at[c] - now, 1e-6)
        n_take = _mix_decide(now, arr, batches, grp, queue, qhead, qlen, cols, free, busy, tables, switches, scratch,
                             take_r, take_c)
        if n_take == 0:
            if n_busy == 0 and i >= n_q:
                break  # nothing running, nothing arriving, and the policy serves no one: stuck for good
            continue
        last = 0
        for k in range(n_take):
            r = take_r[k]
            c = take_c[k]
            q = queue[qhead + r]
            t = cols[c]
            s_qt = svc[q, t]
            work += s_qt
            f = now + s_qt
            free_at[c] = f
            expect_at[c] = now + expected[q, t]
            pending[c] = True
            n_busy += 1
            finish[q] = f
            start[q] = now
            g = grp[q]
            _fenwick_add(waiting, g, q, -1)
            if f - arr[q] > qos[g] and q >= measure_from:
                viol[g] += 1
                if viol[g] > max_violations[g]:
                    return finish, start, True, calls, work
            removed[r] = True
            last = r
        qhead, qlen = _drop_taken(queue, qhead, qlen, removed, last, n_take)
    return finish, start, False, calls, work
