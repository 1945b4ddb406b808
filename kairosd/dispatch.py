"""Query dispatch policies: pure functions from a snapshot (waiting queries × instances) to assignments.

Core rule (Kairos): match waiting queries to instances by a minimum-cost bipartite matching, where
pairing query i with instance j costs C_j·(T_j + L_ij) — T_j the instance's remaining busy time, L_ij
its service time for the query's batch, C_j = L_base(B_max) / L_j(B_max) its heterogeneity
coefficient — and edges that would miss QoS (W_i + T_j + L99_ij > T_qos − margin) carry a penalty so
large that they are used only when nothing feasible exists. A query matched to a busy instance waits
for it (it stays queued); only matches to free instances are carried out.

Three rules beyond the paper (all on by default, measured together in bench/dispatch.py):
- lookahead: besides its next free moment T_j, each instance offers the matching a second, later
  slot (T_j + the mean service time of the waiting queries on it): queries that can only make QoS
  on the same fast instance then queue behind each other there, with feasibility judged on when
  each would really start, instead of all but one being forced elsewhere.
- hold: the matching is one-to-one, so when more queries can only make QoS on a busy instance than
  it has slots in the matching, the rest are forced onto other columns, infeasible ones included.
  Such a forced match to a free instance on which the query misses QoS even on the mean is not
  carried out while the query still has a feasible edge anywhere (even one the matching gave another
  query): it waits a round, rather than take a slow instance on which it will certainly miss QoS and
  which it would keep busy for a long time. A forced match that misses only on p99 (with tiers: a
  type whose mean meets QoS and whose tail does not) is carried out: there the query misses with the
  type's tail probability, while waiting for a busy instance's slot that another query may take makes
  it late for every column (a cheap type with a heavy tail then serves its share of the mix rather
  than push it into the fast instance's queue). Without tiers no edge is known to meet QoS on the
  mean, and every forced infeasible match waits.
- tiers: an edge infeasible on p99 but within QoS on the mean pays the penalty once, one that misses
  QoS even on the mean pays it twice; so a query that cannot make QoS with p99 certainty goes where
  it still makes it on average, rather than to the cheapest column. Between the two, an edge that
  misses on the mean only because of the margin (on time without it) pays the penalty 1.5 times plus
  its expected finish T_j + L_ij (no coefficient): such a query goes where it is least late (waiting
  for that instance if it is busy), since the margin is a reserve, not a certainty; a query that
  misses QoS on the mean everywhere even without the margin is a sure miss, served on the cheapest
  column, where it costs the fleet least — unless it would finish there later than
  `SURE_MISS_BOUND_QOS` QoS targets after its arrival: then where it is least late. Without that bound
  the cheapest column can be a slow instance that collects sure misses faster than it serves them, and
  every query queued behind them there becomes a miss too. With margin 0 the middle tier is empty.

Every policy has the same shape, `policy(snapshot) -> Assignment`, no I/O, no clock: the simulator,
the daemon's scheduler and the benchmarks swap them by name through `make_policy`.
A sendable column (`i_free`) may still be busy (`i_busy_s` > 0): the daemon's scheduler offers a slot
about to free as sendable (pipelining), to policies whose `pipelines` is True — those that rank
sendable columns by when a query would finish there (busy time + service), so an idle instance is
never passed over for a busy one. The simulator's sendable columns are idle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

from kairosd.errors import ConfigError
from kairosd.profiles import ProfileTable

# An infeasible edge costs this many QoS targets more than a feasible one: with costs on the order of
# one QoS (C_j ≤ 1 and T_j + L_ij within a few QoS), any feasible matching beats any matching that
# uses even one infeasible edge.
INFEASIBLE_PENALTY_QOS = 1_000.0
# how the kairos matching prices a sure miss (`KairosPolicy`'s `sure_miss`)
SURE_MISS_RULES = ("cheapest", "finish", "bounded")
# "bounded": a sure miss is priced by its expected finish (where it is least late) on the columns where
# it would finish later than this many QoS targets after its arrival
SURE_MISS_BOUND_QOS = 2.0
# up to this many columns a single query is matched by a scalar loop (cheaper than numpy calls)
SCALAR_MAX_COLUMNS = 32
# kairos: judge an edge against QoS on the type's p99 latency (`tail`) unless told otherwise
KAIROS_TAIL = True


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a policy sees at one instant. Queries are ordered oldest first.

    q_model   int[m]   model index into the ProfileTable
    q_batch   int[m]   batch size (samples in the query)
    q_waited_s float[m] W_i: time already spent waiting
    q_qos_s   float[m] T_qos of the query's model
    i_type    int[n]   instance type index into the ProfileTable (an instance serving k queries at
                       once appears as k columns)
    i_busy_s  float[n] T_j: time until the instance can start another query (0 when free)
    i_free    bool[n]  whether the instance can start a query now
    """

    q_model: np.ndarray
    q_batch: np.ndarray
    q_waited_s: np.ndarray
    q_qos_s: np.ndarray
    i_type: np.ndarray
    i_busy_s: np.ndarray
    i_free: np.ndarray

    @property
    def m(self) -> int:
        return len(self.q_batch)

    @property
    def n(self) -> int:
        return len(self.i_type)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Queries to send now: `queries[k]` (a row of the snapshot) goes to instance `instances[k]`."""

    queries: np.ndarray
    instances: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.queries.tolist(), self.instances.tolist(), strict=True))


EMPTY = Assignment(np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp))


class Policy(Protocol):
    name: str
    pipelines: bool

    def __call__(self, snap: Snapshot) -> Assignment: ...


def _service(table: np.ndarray, snap: Snapshot, rows: int) -> np.ndarray:
    """(rows × n) service-time matrix for the first `rows` queries, batches clamped to the table."""
    b = np.minimum(snap.q_batch[:rows], table.shape[2] - 1)
    return table[snap.q_model[:rows, None], snap.i_type[None, :], b[:, None]]


def _finish(table: np.ndarray, snap: Snapshot, rows: int) -> np.ndarray:
    """(rows × n) when each of the first `rows` queries would finish on each column: its busy time T_j
    plus the service time from `table`."""
    return snap.i_busy_s[None, :] + _service(table, snap, rows)


def _claim_in_order(cost: np.ndarray) -> list[int]:
    """Greedy: row i, in order, takes the cheapest column no earlier row took (cost: rows × cols,
    rows ≤ cols). Returns the column of each row."""
    taken = np.zeros(cost.shape[1], dtype=bool)
    cols = []
    for row in cost:
        j = int(np.argmin(np.where(taken, np.inf, row)))
        taken[j] = True
        cols.append(j)
    return cols


def heterogeneity_coefficients(profiles: ProfileTable) -> np.ndarray:
    """C[model, type] = L_base(B_max) / L_type(B_max), base = the type fastest at B_max.

    Worked example: at B_max = 1000 a GPU takes 20 ms and a CPU 200 ms → C_gpu = 1, C_cpu = 0.1.
    At batch 10 the GPU takes 2 ms and the CPU 4 ms: edge costs 2 ms (GPU) vs 0.4 ms (CPU), so a
    small query prefers the CPU; at batch 1000 both cost 20 ms, and ties go by busy time.
    """
    c = np.empty(profiles.mean_s.shape[:2])
    for mi, model in enumerate(profiles.models):
        b_max = min(profiles.largest_measured_batch(model), profiles.max_batch)
        at_max = profiles.mean_s[mi, :, b_max]
        c[mi] = at_max.min() / at_max
    return c


class KairosPolicy:
    """The Kairos bipartite matching (see the module docstring), solved with linear_sum_assignment.

    Rows are the oldest min(m, 2n) queries (older ones first: a later query never displaces an
    earlier one from consideration), columns all n instances; with `lookahead` ≥ 1 the oldest
    min(m, n) queries over n·(1 + lookahead) slots. `tail=True` judges feasibility on p99
    service time rather than the mean; `margin_s` reserves time for the dispatcher's own overhead.
    `lookahead` (later slots offered per instance), `hold` and `tiers` switch the rules beyond the
    paper (module docstring); with `lookahead=0`, `hold=False`, `tiers=False` and `tail=False` this
    is the paper's rule. `sure_miss` prices an edge that misses QoS on the mean even without the
    margin (with `tiers`): "bounded" (default) the penalty twice plus C_j·(T_j + L_ij), so a sure miss
    costs the fleet least, and the penalty three times plus its expected finish where that finish is
    later than `SURE_MISS_BOUND_QOS` QoS targets after its arrival, so that it goes where it is least
    late once every column is that late; "cheapest" without the bound — on a small fleet the cheapest
    column can be a slow instance that collects sure misses, and the queries behind them there become
    late too; "finish" the penalty twice plus its expected finish T_j + L_ij everywhere.

    The simulator runs a compiled copy of this rule (`kairosd/simkernel.py`): a change here is a change
    there, and tests/unit/test_simkernel.py holds the two to the same decisions.
    """

    name = "kairos"
    pipelines = True

    def __init__(
        self,
        profiles: ProfileTable,
        *,
        tail: bool = KAIROS_TAIL,
        margin_s: float = 0.0,
        lookahead: int = 1,
        hold: bool = True,
        tiers: bool = True,
        sure_miss: str = "bounded",
    ) -> None:
        if lookahead < 0:
            raise ConfigError(f"kairos: lookahead must be >= 0, got {lookahead}")
        if sure_miss not in SURE_MISS_RULES:
            raise ConfigError(f"kairos: sure_miss must be one of {', '.join(SURE_MISS_RULES)}, got {sure_miss!r}")
        self.sure_miss_by_finish = sure_miss == "finish"
        self.sure_miss_bound = SURE_MISS_BOUND_QOS if sure_miss == "bounded" else math.inf
        self.lookahead = int(lookahead)
        self.profiles = profiles
        self.coef = heterogeneity_coefficients(profiles)
        self.mean = profiles.mean_s
        self.check = profiles.p99_s if tail else profiles.mean_s
        self.margin_s = margin_s
        self.hold = hold
        self.tiers = tiers and tail  # with mean-based feasibility the two tiers coincide
        # a forced match costing this many penalties or more waits (`hold`): with tiers, an edge that
        # misses on the mean (1.5 penalties and more); without, any infeasible edge; inf: none waits
        self.hold_level = (1.5 if self.tiers else 1.0) if hold else math.inf
        self.cmean = self.coef[:, :, None] * profiles.mean_s  # C_j·L_ij, looked up per edge
        # the three per-edge tables side by side, gathered at once: [..., 0] mean, 1 C_j·L_ij, 2 check
        self._tables = np.stack([self.mean, self.cmean, self.check], axis=-1)
        # the same tables as nested lists, for the scalar path below
        self._cmean_l: list[list[list[float]]] = self.cmean.tolist()
        self._check_l: list[list[list[float]]] = self.check.tolist()
        self._mean_l: list[list[list[float]]] = self.mean.tolist()
        self._coef_l: list[list[float]] = self.coef.tolist()

    def _one(self, snap: Snapshot) -> Assignment:
        """One waiting query: the matching is its cheapest column, sent now if that column is free.

        Up to `SCALAR_MAX_COLUMNS` columns a scalar loop (`one_column`), which is cheaper than numpy's
        per-call overhead; otherwise the one-row cost matrix. Both pick the first column of least cost,
        as argmin does."""
        if snap.n <= SCALAR_MAX_COLUMNS:
            j = self.one_column(int(snap.q_model[0]), int(snap.q_batch[0]), float(snap.q_waited_s[0]),
                                float(snap.q_qos_s[0]), snap.i_type.tolist(), snap.i_busy_s.tolist())
        else:
            j = int(np.argmin(self.cost_matrix(snap, 1)[0]))
        return Assignment(np.array([0]), np.array([j])) if snap.i_free[j] else EMPTY

    def one_column(self, model_idx: int, batch: int, waited_s: float, qos_s: float, types: Sequence[int],
                   busy_s: Sequence[float]) -> int:
        """The first column of least cost for a single waiting query (`types`, `busy_s`: the columns' type
        indices and busy times T_j), by a scalar loop: the matching of a snapshot with one row. The query
        is sent there if that column is free, and waits otherwise.

        It costs an edge as `cost_matrix` does, except that its tiers' finish times leave out the query's
        wait W_i: every column shares it, and it is far below the gap between tiers (half a penalty,
        INFEASIBLE_PENALTY_QOS·QoS/2), so the order of the columns is the same."""
        b = min(batch, self.mean.shape[2] - 1)
        budget = qos_s - self.margin_s - waited_s
        on_time = budget + self.margin_s  # a mean within this misses only because of the margin
        beyond = self.sure_miss_bound * qos_s - waited_s  # a mean over this finishes beyond the sure-miss bound
        penalty = INFEASIBLE_PENALTY_QOS * qos_s
        cm, ck, mn, coef = self._cmean_l[model_idx], self._check_l[model_idx], self._mean_l[model_idx], self._coef_l[model_idx]
        tiers = self.tiers
        best, best_j = math.inf, 0
        # t_j: until the column can start it
        for j, (t, t_j) in enumerate(zip(types, busy_s, strict=True)):
            c = coef[t] * t_j + cm[t][b]
            if t_j + ck[t][b] > budget:
                c += penalty
                finish = t_j + mn[t][b]
                if tiers and finish > budget:
                    if finish <= on_time:
                        c = 1.5 * penalty + finish
                    elif self.sure_miss_by_finish:
                        c = 2.0 * penalty + finish
                    elif finish > beyond:
                        c = 3.0 * penalty + finish
                    else:
                        c += penalty
            if c < best:
                best, best_j = c, j
        return best_j

    def hold_s(self, model_idx: int, batch: int, qos_s: float, types: Sequence[int]) -> float:
        """A query that waited less than this gets the decision it gets at 0 s waited against free
        columns of `types`: waiting only shrinks its budget, and while no column crosses a boundary of
        its cost (its check service against the budget; with tiers, its mean against the budget, against
        budget + margin and against the sure-miss bound), every column keeps its cost and the cheapest
        stays the cheapest.
        0 when a boundary is already met."""
        b = min(batch, self.mean.shape[2] - 1)
        budget = qos_s - self.margin_s
        ck, mn = self._check_l[model_idx], self._mean_l[model_idx]
        hold = math.inf
        for t in set(types):
            edges = (budget - ck[t][b], budget - mn[t][b], budget + self.margin_s - mn[t][b],
                     self.sure_miss_bound * qos_s - mn[t][b]) if self.tiers else (budget - ck[t][b],)
            for edge in edges:
                if edge >= 0.0:
                    hold = min(hold, edge)
        return hold

    def cost_matrix(self, snap: Snapshot, rows: int, busy_s: np.ndarray | None = None) -> np.ndarray:
        """Edge costs of the oldest `rows` queries × all columns (busy times `busy_s`, by default the
        snapshot's); a feasible edge costs less than `INFEASIBLE_PENALTY_QOS`·QoS, an infeasible one
        at least that (1.5 times that: missed on the mean within the margin; twice: missed on the mean;
        three times: with the bounded sure-miss rule, finishing later than its bound)."""
        busy = snap.i_busy_s if busy_s is None else busy_s
        return self._slot_costs(snap, rows, busy[None, :], _service(self._tables, snap, rows))

    def _slot_costs(self, snap: Snapshot, rows: int, busy: np.ndarray, svc: np.ndarray) -> np.ndarray:
        """Edge costs over S slots per instance at once: busy (S × n) → rows × (S·n), slot-major,
        the per-edge lookups (coefficient; `svc`: rows × n × 3, `_tables` gathered) made once for all
        slots."""
        b = busy[None, :, :]
        svc_mean = svc[:, :, 0]
        coef = self.coef[snap.q_model[:rows, None], snap.i_type[None, :]][:, None, :]
        cost = coef * b + svc[:, None, :, 1]
        start = snap.q_waited_s[:rows, None, None] + b
        budget = snap.q_qos_s[:rows, None, None] - self.margin_s
        infeasible = start + svc[:, None, :, 2] > budget
        if np.count_nonzero(infeasible):
            penalty = INFEASIBLE_PENALTY_QOS * snap.q_qos_s[:rows, None, None]
            cost = cost + infeasible * penalty
            if self.tiers:
                finish = start + svc_mean[:, None, :]
                late = finish > budget
                # missed on the mean only within the margin (on time without it): the expected finish in
                # place of C_j·(T_j + L_ij), so the query goes where it is least late
                within = late & (finish <= snap.q_qos_s[:rows, None, None])
                if self.sure_miss_by_finish:
                    sure = np.where(late, 2.0 * penalty + finish, cost)
                else:
                    sure = cost + late * penalty
                    if self.sure_miss_bound < math.inf:
                        # later than the bound: where it is least late (above every other sure miss)
                        beyond = finish > self.sure_miss_bound * snap.q_qos_s[:rows, None, None]
                        sure = np.where(beyond, 3.0 * penalty + finish, sure)
                cost = np.where(within, 1.5 * penalty + finish, sure)
        return cost.reshape(rows, -1)

    def __call__(self, snap: Snapshot) -> Assignment:
        if snap.m == 0 or not np.count_nonzero(snap.i_free):
            return EMPTY
        if snap.m == 1:
            return self._one(snap)
        # the window: the oldest 2n queries over n columns; with later slots (2n columns or more) the
        # oldest n, so that rows < columns: an unbalanced matrix solves 5-10x faster than a square
        # one full of ties (64 x 64: ~0.4 ms; 32 x 64: ~40 us), and more rows gained nothing (bench)
        rows = min(snap.m, snap.n if self.lookahead else 2 * snap.n)
        svc = _service(self._tables, snap, rows)
        busy = snap.i_busy_s[None, :]
        if self.lookahead:
            # later slot k of instance j: free after T_j + k × (mean service of the waiting queries on j)
            step = svc[:, :, 0].sum(axis=0) / rows
            busy = busy + np.arange(self.lookahead + 1)[:, None] * step[None, :]
        cost = self._slot_costs(snap, rows, busy, svc)
        r, c = linear_sum_assignment(cost)
        keep = c < snap.n  # a match to a later slot means: wait
        keep[keep] = snap.i_free[c[keep]]
        if self.hold:
            # a forced match that misses on the mean is not carried out while the query has a feasible edge
            penalty = INFEASIBLE_PENALTY_QOS * snap.q_qos_s[r]
            forced = (cost[r, c] >= self.hold_level * penalty) & (cost[r].min(axis=1) < penalty)
            keep &= ~forced
        return Assignment(r[keep], c[keep])


class WaitBlind:
    """A policy whose decision does not depend on how long a query has waited: the decision for a
    query at 0 s waited holds at any wait (the scheduler reuses its cached one-query decisions)."""

    def hold_s(self, model_idx: int, batch: int, qos_s: float, types: Sequence[int]) -> float:
        return math.inf


class FcfsPolicy(WaitBlind):
    """First come, first served: the oldest queries go to the idle instances in instance order (then
    to sendable busy ones, soonest free first)."""

    name = "fcfs"
    pipelines = True

    def __init__(self, profiles: ProfileTable) -> None:
        self.profiles = profiles

    def __call__(self, snap: Snapshot) -> Assignment:
        free = np.flatnonzero(snap.i_free)
        k = min(len(free), snap.m)
        if not k:
            return EMPTY
        if np.count_nonzero(snap.i_busy_s[free]):
            free = free[np.argsort(snap.i_busy_s[free], kind="stable")]
        return Assignment(np.arange(k), free[:k])


class RoundRobinPolicy:
    """The oldest queries go to idle instances in a rotating order (the cursor is the only state)."""

    name = "round_robin"
    pipelines = False

    def __init__(self, profiles: ProfileTable) -> None:
        self.profiles = profiles
        self.cursor = 0

    def __call__(self, snap: Snapshot) -> Assignment:
        if snap.m == 0 or snap.n == 0:
            return EMPTY
        order = (np.arange(snap.n) + self.cursor) % snap.n
        free = order[snap.i_free[order]]
        k = min(len(free), snap.m)
        if k == 0:
            return EMPTY
        self.cursor = (int(free[k - 1]) + 1) % snap.n
        return Assignment(np.arange(k), free[:k])


class FastestFreePolicy(WaitBlind):
    """Each query, oldest first, goes to the idle instance that serves its batch fastest (with a
    sendable busy one: where it would finish first)."""

    name = "fastest_free"
    pipelines = True

    def __init__(self, profiles: ProfileTable) -> None:
        self.profiles = profiles

    def __call__(self, snap: Snapshot) -> Assignment:
        free = np.flatnonzero(snap.i_free)
        k = min(len(free), snap.m)
        if k == 0:
            return EMPTY
        cols = _claim_in_order(_finish(self.profiles.mean_s, snap, k)[:, free])
        return Assignment(np.arange(k), free[cols])


class EarliestFinishPolicy(WaitBlind):
    """Each query, oldest first, claims the instance (busy ones included) on which it would finish
    first; it is sent only if that instance is free, otherwise it waits for it."""

    name = "earliest_finish"
    pipelines = True

    def __init__(self, profiles: ProfileTable) -> None:
        self.profiles = profiles

    def __call__(self, snap: Snapshot) -> Assignment:
        if snap.m == 0 or not np.count_nonzero(snap.i_free):
            return EMPTY
        k = min(snap.m, snap.n)
        cols = np.array(_claim_in_order(_finish(self.profiles.mean_s, snap, k)), dtype=np.intp)
        sent = snap.i_free[cols]  # a query that claimed a busy instance waits for it
        return Assignment(np.flatnonzero(sent), cols[sent])


class ThresholdPolicy(WaitBlind):
    """DeepRecSys-style: queries with batch ≤ `threshold` go to the small-query types (CPUs), larger
    ones to the large-query types (the accelerators; by default the type fastest at B_max), each side
    FCFS to the idle instance that serves it fastest (with a sendable busy one: where it would finish
    first). A side with no sendable instance makes its queries wait."""

    name = "threshold"
    pipelines = True

    def __init__(self, profiles: ProfileTable, *, threshold: int = 200, large_types: Iterable[str] | None = None) -> None:
        self.profiles = profiles
        self.threshold = int(threshold)
        if large_types is None:
            coef = heterogeneity_coefficients(profiles)
            large = {int(np.argmax(coef.mean(axis=0)))}
        else:
            large = {profiles.type_index(t) for t in large_types}
        self.large = np.zeros(len(profiles.types), dtype=bool)
        self.large[list(large)] = True
        self._large_l: list[bool] = self.large.tolist()
        self._mean_l: list[list[list[float]]] = profiles.mean_s.tolist()

    def _one(self, snap: Snapshot) -> Assignment:
        """One waiting query over at most `SCALAR_MAX_COLUMNS` columns: a scalar loop over its side's
        sendable columns, picking the first of earliest finish, as the array path's argmin does."""
        batch = int(snap.q_batch[0])
        side_large = batch > self.threshold
        mean = self._mean_l[int(snap.q_model[0])]
        b = min(batch, len(mean[0]) - 1)
        best, best_j = math.inf, -1
        for j, (t, t_j, free) in enumerate(zip(snap.i_type.tolist(), snap.i_busy_s.tolist(), snap.i_free.tolist(),
                                               strict=True)):
            if free and self._large_l[t] == side_large:
                finish = t_j + mean[t][b]
                if finish < best:
                    best, best_j = finish, j
        return EMPTY if best_j < 0 else Assignment(np.array([0], dtype=np.intp), np.array([best_j], dtype=np.intp))

    def __call__(self, snap: Snapshot) -> Assignment:
        if snap.m == 1 and snap.n <= SCALAR_MAX_COLUMNS:
            return self._one(snap)
        return self._many(snap)

    def _many(self, snap: Snapshot) -> Assignment:
        """Every waiting query: each side's oldest queries claim, in order, its sendable column of
        earliest finish."""
        free = np.flatnonzero(snap.i_free)
        if snap.m == 0 or len(free) == 0:
            return EMPTY
        free_large = self.large[snap.i_type[free]]
        qs, js = [], []
        for side_large in (False, True):
            cand = free[free_large == side_large]
            if len(cand) == 0:
                continue
            want = (snap.q_batch > self.threshold) == side_large
            rows = np.flatnonzero(want)[: len(cand)]
            if len(rows) == 0:
                continue
            sub = Snapshot(snap.q_model[rows], snap.q_batch[rows], snap.q_waited_s[rows], snap.q_qos_s[rows],
                           snap.i_type[cand], snap.i_busy_s[cand], snap.i_free[cand])
            qs += rows.tolist()
            js += cand[_claim_in_order(_finish(self.profiles.mean_s, sub, len(rows)))].tolist()
        return Assignment(np.array(qs, dtype=np.intp), np.array(js, dtype=np.intp))


POLICIES: dict[str, Callable[..., Policy]] = {
    "kairos": KairosPolicy,
    "fcfs": FcfsPolicy,
    "fastest_free": FastestFreePolicy,
    "round_robin": RoundRobinPolicy,
    "earliest_finish": EarliestFinishPolicy,
    "threshold": ThresholdPolicy,
}


def feasibility_on_p99(name: str, params: Mapping[str, Any]) -> bool:
    """Whether policy `name` with `params` judges an edge against QoS on the p99 latency (kairos's `tail`,
    `KAIROS_TAIL` by default) rather than the mean: what the planner's bound and estimate must judge QoS on
    to plan for it. The baselines test no feasibility and count as p99, the planner's default."""
    return name != "kairos" or bool(params.get("tail", KAIROS_TAIL))


def make_policy(name: str, profiles: ProfileTable, **params: Any) -> Policy:
    """Build a policy by name; unknown names and parameters are refused with what is allowed."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown dispatch policy {name!r}; allowed: {sorted(POLICIES)}") from None
    try:
        return factory(profiles, **params)
    except TypeError as exc:
        raise ConfigError(f"dispatch policy {name!r}: {exc}") from None
