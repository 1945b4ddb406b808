"""Admission control and load shedding: pure policy, beside the dispatcher.

A query is admitted when the fleet can plausibly serve it within its target; otherwise it is refused
at once (RESOURCE_EXHAUSTED / HTTP 429 with Retry-After) instead of waiting to fail. The estimate is
fluid: the fleet serves model m at batch b at `rate[m][b]` queries per second (the sum, over the
READY instances that serve m, of slots / mean service time from the latency profiles), so a queued
query occupies the whole fleet for `1 / rate[m][b]` seconds ("fleet-seconds"). A new query's wait is
the fleet-seconds queued ahead of it plus, when every slot is busy, the mean residual of the queries
in flight; its completion is that wait plus the fastest service time any READY type offers it, plus
the lag: how late recent answers came against their own estimate at admission (an EWMA kept by the
scheduler), which measures what the model leaves out — the head's own parsing, event loop and hops,
and a slower type than the fastest. Without lag the estimate is optimistic: a query is refused only
when even the best case misses.

The target is the query's deadline (mode "deadline") or the earlier of its deadline and arrival +
QoS × slack (mode "qos": a late answer is a violation, and capacity spent on one is taken from a
query that could still be on time). A queued query whose target can no longer be met even by the
fastest instance is shed at once (`doomed`). Besides the estimate, the queue is bounded per model
(`max_queue`, by default the fleet's capacity × QoS × slack) and in bytes.

With no READY instance for a model the estimate is unknown (a fleet starting or replacing its last
instance): queries are admitted, bounded by bytes, and their deadline answers for them.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

QOS = "qos"
DEADLINE = "deadline"
OFF = "off"


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the READY fleet offers each (profile model, batch): `rate[m][b]` queries per second,
    `fastest_s[m][b]` the smallest mean service time over the types that serve m (inf: none),
    `fastest_p99_s[m][b]` the smallest p99, and `slots` the number of slots in dispatch."""

    rate: list[list[float]]
    fastest_s: list[list[float]]
    slots: int
    fastest_p99_s: list[list[float]] | None = None

    def serves(self, model: int) -> bool:
        return self.rate[model][-1] > 0.0


def capacity(mean_s: np.ndarray, instances: Iterable[tuple[int, int, int | None]],
             p99_s: np.ndarray | None = None) -> Capacity:
    """The Capacity of READY `instances` given as (type index, slots, pinned model or None), over the
    profile table's `mean_s[model, type, batch]` (and `p99_s`, same shape)."""
    n_models, n_types, _ = mean_s.shape
    slots_of = np.zeros((n_models, n_types))
    total = 0
    for type_idx, slots, pinned in instances:
        total += slots
        if pinned is None:
            slots_of[:, type_idx] += slots
        else:
            slots_of[pinned, type_idx] += slots
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = (slots_of[:, :, None] / mean_s).sum(axis=1)
    rate = np.nan_to_num(rate, nan=0.0, posinf=0.0)
    present = (slots_of > 0)[:, :, None]
    fastest = np.where(present, mean_s, np.inf).min(axis=1)
    fastest_p99 = np.where(present, p99_s, np.inf).min(axis=1).tolist() if p99_s is not None else None
    return Capacity(rate.tolist(), fastest.tolist(), total, fastest_p99)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a query is not admitted, and when the client might retry (seconds)."""

    reason: str
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class Ahead:
    """The load a new query finds: fleet-seconds of queued work, the mean residual seconds of the
    queries in flight when no slot is free (0 when one is), queries of its model queued, and the
    bytes of all queued requests."""

    queued_work_s: float
    busy_residual_s: float
    queued_model: int
    queued_bytes: int


def queue_limit(mode: str, max_queue: int, max_queue_min: int, rate: float, qos_s: float, slack: float) -> int:
    """How many queries of one model may wait: `max_queue` when set, else with mode "qos" the fleet's
    capacity for it × QoS × slack, at least `max_queue_min`; with "deadline" and "off" no count limit
    (the deadline estimate and the byte bound keep the queue finite)."""
    if max_queue > 0:
        return max_queue
    if mode != QOS:
        return 1 << 62
    return max(max_queue_min, math.ceil(rate * qos_s * slack))


def target_s(mode: str, arrival_s: float, deadline_s: float, qos_s: float, slack: float, margin_s: float = 0.0) -> float:
    """The time by which a query must be answered to be worth serving; with mode "qos", `margin_s` (the
    dispatcher's reserve for kairosd's own overhead, `scheduler.margin_ms`) is kept free of the QoS
    target, as the matching keeps it: the client measures from before kairosd's arrival stamp."""
    if mode == QOS:
        return min(deadline_s, arrival_s + qos_s * slack - margin_s)
    return deadline_s


def estimate(now: float, ahead: Ahead, fastest_s: float, lag_s: float) -> float:
    """When a query admitted now is expected to be answered (loop-clock seconds)."""
    return now + ahead.queued_work_s + ahead.busy_residual_s + fastest_s + max(lag_s, 0.0)


def admit(
    *, mode: str, now: float, target: float, fastest_s: float, rate: float, ahead: Ahead, limit: int,
    size: int, max_bytes: int, lag_s: float = 0.0,
) -> Refusal | None:
    """None to admit a query of `size` bytes whose best service time is `fastest_s` and whose model
    the fleet serves at `rate` q/s; else the Refusal. `target` comes from `target_s`; `lag_s` is the
    scheduler's measured lateness against the estimate (`estimate`)."""
    if ahead.queued_bytes + size > max_bytes:
        return Refusal(f"{ahead.queued_bytes} bytes of requests are queued and this one ({size} bytes) would pass "
                       f"scheduler.max_queue_bytes = {max_bytes}", _retry(ahead.queued_work_s))
    if ahead.queued_model >= limit:
        return Refusal(f"{ahead.queued_model} queries of this model are queued, the limit (scheduler.max_queue, by "
                       "default the fleet's capacity × QoS target)", _retry(ahead.queued_work_s))
    if mode == OFF or rate <= 0.0:
        return None
    if ahead.queued_work_s <= 0.0 and ahead.busy_residual_s <= 0.0:
        return None  # an idle fleet: refusing saves nothing for anyone, so it is tried
    wait = ahead.queued_work_s + ahead.busy_residual_s
    if estimate(now, ahead, fastest_s, lag_s) > target:
        return Refusal(f"the fleet cannot serve it in time: an estimated {wait * 1e3:.3g} ms of queued work is "
                       f"ahead of it and it takes at least {fastest_s * 1e3:.3g} ms (+ {max(lag_s, 0.0) * 1e3:.3g} ms "
                       "measured lag), past its "
                       f"{'QoS target' if mode == QOS else 'deadline'} ({max(target - now, 0.0) * 1e3:.3g} ms left)",
                       _retry(wait))
    return None


def doomed(now: float, target: float, fastest_s: float, lag_s: float = 0.0) -> bool:
    """A queued query that even the fastest READY type (plus the measured lag) can no longer serve by
    its target. The scheduler passes that type's p99 (not its mean): a query sent with less time than
    that left ends late in more than 1% of cases, and late is a violation the capacity could have
    spent on a query still on time."""
    return now + fastest_s + max(lag_s, 0.0) > target


def _retry(wait_s: float) -> float:
    """Retry-After: when the work ahead is expected to have drained (at least 1 s, HTTP's unit)."""
    return max(1.0, math.ceil(wait_s))


# weight of one answer in the feedback averages (about the last 10), and how fast the corrections fade
# when no answer comes (seconds): a correction must not outlive the traffic that measured it, or
# queries refused for it would never produce the answers that correct it
FEEDBACK_WEIGHT = 0.1
FEEDBACK_FADE_S = 1.0
# the matching's reserve follows the median hop of this many recent answers sent to a free slot: one slow
# answer in ten (a stall of the head's loop, a long service) moves an average of the last ten by a tenth
# of its size, and the reserve with it
HOP_WINDOW = 256
MARGIN_CAP_QOS = 0.25  # the matching's measured reserve is at most this share of the smallest QoS target


def matching_margin(configured_s: float, hop_s: float, qos_min_s: float) -> float:
    """The kairos matching's reserve for what its latencies leave out (`margin_s` of the policy): the
    configured margin, or twice the measured hop's typical value (`Feedback.hop_median`) when larger —
    the hop to an instance and back, and the client's way to kairosd and back, which is of the same kind
    and which kairosd cannot see — up to `MARGIN_CAP_QOS` of the smallest QoS target (past that the head
    is stalled or overloaded).

    The typical hop, not a high quantile: the matching already judges every edge on the p99 service time,
    and the reserve shortens every query's budget by the same amount, so a larger one turns feasible edges
    into infeasible ones and queues the work on the fastest type. `bench/live.py` simulates the fleet on
    the path it measures (`sim@path`) at several margins: the one that serves most is near the path's
    mean, a few times less than its high end, and a reserve that jumps with single slow answers (to the
    cap: a quarter of a 25 ms QoS) serves much less. E.g. a hop of 1.2 ms: 2.4 ms; with a 25 ms QoS at most 6.25 ms."""
    return max(configured_s, min(2.0 * max(hop_s, 0.0), MARGIN_CAP_QOS * qos_min_s))


class Feedback:
    """What the admission estimate leaves out, measured on answers: the lag (answer time − the
    admission estimate) and the head's hop (answered − the finish expected at the grant: grant + the
    profile's mean service time, after the residual of a slot it was pipelined to), each an
    exponentially weighted average; the hop with its mean absolute deviation, estimates taking its high
    end (`hop_guard`); the kairos matching's reserve takes the median hop of the last `HOP_WINDOW`
    answers sent to a free slot (`hop_median`, for `matching_margin`). Each sample is clipped to
    ±`clip_s` (the query's QoS target: one frozen instance moves the averages by a bounded step), and
    the corrections fade with the time since the last answer (`FEEDBACK_FADE_S`)."""

    __slots__ = ("_lag", "_hop", "_dev", "_at", "_fade_now", "_fade_value", "_recent")

    def __init__(self) -> None:
        self._lag = self._hop = self._dev = 0.0
        self._recent: deque[float] = deque(maxlen=HOP_WINDOW)
        self._at = 0.0
        # the last fade computed, by time: the estimates are read several times per loop iteration, at one clock
        self._fade_now = math.nan
        self._fade_value = 1.0

    def answered(self, now: float, lag_s: float | None, hop_s: float, clip_s: float, typical: bool = True) -> None:
        """One answer: its lag (None for a query retried after a failure: its lateness is the fault's)
        and its hop; `typical` false leaves it out of `hop_median` (a query sent to a slot still busy: its
        hop also holds the error of the expected end of the query ahead of it)."""
        fade = self._fade(now)
        self._lag *= fade
        self._hop *= fade
        self._dev *= fade
        self._at = now
        self._fade_now, self._fade_value = now, 1.0  # faded up to now
        w = FEEDBACK_WEIGHT
        if lag_s is not None:
            self._lag += w * (min(max(lag_s, -clip_s), clip_s) - self._lag)
        hop = min(max(hop_s, -clip_s), clip_s)
        self._dev += w * (abs(hop - self._hop) - self._dev)
        self._hop += w * (hop - self._hop)
        if typical:
            self._recent.append(hop)

    def _fade(self, now: float) -> float:
        if now != self._fade_now:
            self._fade_now = now
            self._fade_value = math.exp(-max(now - self._at, 0.0) / FEEDBACK_FADE_S)
        return self._fade_value

    def lag(self, now: float) -> float:
        return self._lag * self._fade(now)

    def hop(self, now: float) -> float:
        return self._hop * self._fade(now)

    def hop_median(self, now: float) -> float:
        """The median hop of the last `HOP_WINDOW` answers sent to a free slot (0 before any), faded like
        the averages."""
        return statistics.median(self._recent) * self._fade(now) if self._recent else 0.0

    def hop_guard(self, now: float) -> float:
        """The hop at its high end (mean + 3 deviations, at least 0), added to a best service time."""
        return max(self._hop + 3.0 * self._dev, 0.0) * self._fade(now)

