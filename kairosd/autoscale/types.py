"""The autoscaler's data: the fleet as `decide` sees it, its parameters, its memory, and its decisions."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class MemberState(enum.Enum):
    """A fleet member's state for decisions: the registry's states plus TERMINATING (terminate was
    called; the provider still bills it until it lists it terminated)."""

    LAUNCHING = "launching"
    READY = "ready"
    SUSPECT = "suspect"
    DRAINING = "draining"
    TERMINATING = "terminating"


@dataclass(frozen=True, slots=True)
class Member:
    """One billed instance of the fleet. Times are on the caller's clock (`now` of `decide`)."""

    id: str
    type: str
    state: MemberState
    price_usd_per_hour: float
    launched_at_s: float  # when it was launched (or adopted, if the provider's time is unknown)
    state_since_s: float  # when it entered `state`
    in_flight: int = 0  # queries granted to it and not yet answered
    managed: bool = True  # False: a static endpoint, never drained or terminated by the autoscaler


@dataclass(frozen=True, slots=True)
class Launch:
    type: str
    count: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Drain:
    id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Terminate:
    id: str
    reason: str = ""


Action = Launch | Drain | Terminate


@dataclass(frozen=True, slots=True)
class AutoscaleParams:
    """How `decide` moves the fleet towards the target (the `[autoscaler]` section)."""

    up_periods: int = 1  # a larger target is acted on after holding this many consecutive periods
    down_periods: int = 6  # a smaller one after this many (scale in slowly)
    max_concurrent_launches: int = 4  # instances LAUNCHING at once, at most
    max_disruption_fraction: float = 0.25  # of the managed fleet DRAINING/TERMINATING at once (≥ 1 instance)
    startup_grace_s: float = 300.0  # LAUNCHING longer than this: terminated, its type unavailable
    suspect_grace_s: float = 60.0  # SUSPECT longer than this: drained and terminated
    drain_timeout_s: float = 30.0  # DRAINING longer than this: terminated even with queries in flight
    unavailable_s: float = 600.0  # how long a type stays out of the plan after a failed start


@dataclass(frozen=True, slots=True)
class DecideState:
    """`decide`'s memory between periods (returned with its actions, passed back next period)."""

    acted_target: Mapping[str, int] = field(default_factory=dict)  # the target being built
    proposed: Mapping[str, int] = field(default_factory=dict)  # a different target seen lately
    held_periods: int = 0  # consecutive periods `proposed` has been seen
    unavailable_until_s: Mapping[str, float] = field(default_factory=dict)  # type → until when
    # True once a target has been adopted: tells "the empty target was adopted" (scale to zero) from
    # "no memory yet" (first start, or a restart that adopts the fleet it finds)
    started: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    state: DecideState
    notes: tuple[str, ...] = ()  # why something wanted was not done (budget, caps), for the log
