"""The instance registry: the single truth of every instance's state, type, cost and in-flight queries.

States: LAUNCHING → READY ⇄ SUSPECT → DRAINING → GONE. Only READY instances receive new queries.
SUSPECT: it failed at the transport level and is probed until it answers again (distinct from
LAUNCHING, so the autoscaler can tell a sick instance from a booting one). DRAINING: it finishes what
it has, then is terminated. The scheduler reads the registry and reports transport failures
(`report_failure`); the fleet (`kairosd.fleet`, the reconciler over a provider) is the only writer of
membership and of every other state change.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kairosd.backends.client import BackendClient
from kairosd.backends.http_client import HttpBackendClient


class InstanceState(enum.Enum):
    LAUNCHING = "launching"
    READY = "ready"
    SUSPECT = "suspect"
    DRAINING = "draining"
    GONE = "gone"


@dataclass(eq=False, slots=True)
class Instance:
    """One backend endpoint. `finish_s` holds the expected finish time (loop clock) of each query in
    flight, so the dispatcher can tell how long until a slot frees (T_j). `http` is set when the
    instance also speaks KServe v2 HTTP (a Triton does): HTTP queries are then forwarded to it as bytes.
    `id` is the provider's id; `state_since_s` is on the monotonic clock (`time.monotonic`)."""

    id: str
    type: str
    type_idx: int
    address: str
    slots: int
    client: BackendClient
    http: HttpBackendClient | None = None
    state: InstanceState = InstanceState.LAUNCHING
    finish_s: list[float] = field(default_factory=list)
    served_total: int = 0
    failed_total: int = 0
    price_usd_per_hour: float = 0.0
    managed: bool = True  # False: a static endpoint, never drained or terminated by the autoscaler
    provider: str = "local"
    state_since_s: float = field(default_factory=time.monotonic)
    launched_at_s: float = field(default_factory=time.time)  # unix seconds, from the provider
    pool: str = ""  # the fleet pool it counts in (`kairosd.pools`); "" means its type
    pinned_model: int | None = None  # profile model index: it serves only that model's queries; None: every model

    @property
    def in_flight(self) -> int:
        return len(self.finish_s)

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.finish_s) if self.state is InstanceState.READY else 0


class Registry:
    """Instances by id, with listeners called whenever membership or a state changes."""

    def __init__(self) -> None:
        self._instances: dict[str, Instance] = {}
        self._listeners: list[Callable[[], None]] = []
        self.version = 0  # bumped on every membership/state change; the scheduler caches by it

    def __iter__(self) -> Iterator[Instance]:
        return iter(self._instances.values())

    def __len__(self) -> int:
        return len(self._instances)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._instances

    def get(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def add(self, instance: Instance) -> None:
        self._instances[instance.id] = instance
        self._changed()

    def set_state(self, instance_id: str, state: InstanceState) -> None:
        inst = self._instances[instance_id]
        if inst.state is not state:
            inst.state_since_s = time.monotonic()
        inst.state = state
        if state is InstanceState.GONE:
            del self._instances[instance_id]
        self._changed()

    def report_failure(self, instance_id: str) -> bool:
        """A query to this instance failed at the transport level: READY → SUSPECT (out of dispatch
        until the fleet's probe sees it answer). Returns whether the state changed."""
        inst = self._instances.get(instance_id)
        if inst is None or inst.state is not InstanceState.READY:
            return False
        self.set_state(instance_id, InstanceState.SUSPECT)
        return True

    def has_pinned(self) -> bool:
        """Whether a READY instance is pinned to one model (then dispatch runs per model)."""
        return any(i.pinned_model is not None for i in self._instances.values() if i.state is InstanceState.READY)

    def ready(self) -> list[Instance]:
        return [i for i in self._instances.values() if i.state is InstanceState.READY]

    def _changed(self) -> None:
        self.version += 1
        for listener in self._listeners:
            listener()
