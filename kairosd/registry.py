"""The instance registry: every backend endpoint kairosd knows, its type, state and in-flight queries.

States: LAUNCHING → READY → DRAINING → GONE. Only READY instances receive new queries; a DRAINING
instance finishes what it has. The scheduler reads the registry; providers (the static local fleet
now, the autoscaler later) write it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kairosd.backends.client import BackendClient
from kairosd.backends.http_client import HttpBackendClient


class InstanceState(enum.Enum):
    LAUNCHING = "launching"
    READY = "ready"
    DRAINING = "draining"
    GONE = "gone"


@dataclass(eq=False, slots=True)
class Instance:
    """One backend endpoint. `finish_s` holds the expected finish time (loop clock) of each query in
    flight, so the dispatcher can tell how long until a slot frees (T_j). `http` is set when the
    instance also speaks KServe v2 HTTP (a Triton does): HTTP queries are then forwarded to it as bytes."""

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

    @property
    def in_flight(self) -> int:
        return len(self.finish_s)

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.finish_s) if self.state is InstanceState.READY else 0


class Registry:
    """Instances by id, with a listener called whenever the set of usable slots may have grown."""

    def __init__(self) -> None:
        self._instances: dict[str, Instance] = {}
        self._listeners: list[Callable[[], None]] = []
        self.version = 0  # bumped on every membership/state change; the scheduler caches by it

    def __iter__(self) -> Iterator[Instance]:
        return iter(self._instances.values())

    def __len__(self) -> int:
        return len(self._instances)

    def get(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def add(self, instance: Instance) -> None:
        self._instances[instance.id] = instance
        self._changed()

    def set_state(self, instance_id: str, state: InstanceState) -> None:
        inst = self._instances[instance_id]
        inst.state = state
        if state is InstanceState.GONE:
            del self._instances[instance_id]
        self._changed()

    def ready(self) -> list[Instance]:
        return [i for i in self._instances.values() if i.state is InstanceState.READY]

    def _changed(self) -> None:
        self.version += 1
        for listener in self._listeners:
            listener()
