"""The provider interface: the only code that starts instances or talks to a cloud.

One narrow protocol (after Karpenter's `cloudprovider.CloudProvider`): `offerings`, `launch`,
`terminate`, `list`. The provider's `list()` is the truth about what exists and what it costs; kairosd's
memory (the registry) is a cache of it, rebuilt from it after a restart. Every instance a provider
launches carries the fleet tag, its type and the launch token, so a restarted daemon finds what it
launched, and a launch retried with the same token never launches twice (`launch` first looks for
instances that already carry the token). `terminate` of an instance that is already gone is done, so
it can be retried. Errors are typed: `InsufficientCapacity` makes the planner take the next option.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from kairosd.errors import KairosError

FLEET_TAG = "kairos:fleet"  # value: the fleet's name ([autoscaler] fleet_name)
TYPE_TAG = "kairos:type"  # value: the kairosd instance type name
TOKEN_TAG = "kairos:launch-token"  # value: the token of the launch that created it
POOL_TAG = "kairos:pool"  # value: the pool it belongs to (`kairosd.pools`), when it is pinned to a model


class ProviderState(enum.Enum):
    """An instance's state as its provider reports it (EC2's names)."""

    PENDING = "pending"
    RUNNING = "running"
    SHUTTING_DOWN = "shutting-down"
    TERMINATED = "terminated"

    @property
    def billed(self) -> bool:
        """Whether it still counts against the budget: everything but terminated does."""
        return self is not ProviderState.TERMINATED


@dataclass(frozen=True, slots=True)
class Offering:
    """A type a provider can launch, its hourly price, and whether it can be launched now."""

    type: str
    price_usd_per_hour: float
    available: bool = True


@dataclass(frozen=True, slots=True)
class ProviderInstance:
    """One instance as the provider lists it. `address` is its KServe v2 gRPC "host:port" once known
    (EC2: the private IP and the type's gRPC port); `http_address` its KServe v2 HTTP one, if it has one."""

    id: str
    type: str
    state: ProviderState
    address: str | None
    http_address: str | None = None
    launched_at_s: float = 0.0  # unix seconds
    price_usd_per_hour: float = 0.0  # what it costs while it is billed
    tags: Mapping[str, str] = field(default_factory=dict)
    purchase: str = "on-demand"  # "on-demand" | "spot"


class ProviderError(KairosError):
    """A provider call failed; the message says which call and what to check."""


class InsufficientCapacity(ProviderError):
    """The provider cannot launch `type` now (no capacity, quota, spot unavailable): plan without it."""

    def __init__(self, message: str, instance_type: str) -> None:
        super().__init__(message)
        self.instance_type = instance_type


class NotLaunchable(ProviderError):
    """This provider does not launch or terminate instances (a static fleet), or not this type."""


@runtime_checkable
class Provider(Protocol):
    """What the reconciler needs from a provider. Calls are idempotent where the doc says so."""

    name: str  # "local" | "static" | "ec2"
    managed: bool  # False: instances are listed, never launched or terminated (static endpoints)

    async def offerings(self) -> list[Offering]:
        """The types this provider can launch, with price and availability now."""
        ...

    async def launch(self, instance_type: str, count: int, token: str,
                     tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        """Start `count` instances of `instance_type` tagged with `token` (and `tags`, e.g. the pool).
        Idempotent per token: the instances that already carry `token` count towards `count`, and are
        returned with the new ones. Raises InsufficientCapacity, NotLaunchable, ProviderError."""
        ...

    async def terminate(self, ids: Sequence[str]) -> None:
        """Stop these instances. An id that is already gone (or unknown) counts as done."""
        ...

    async def list(self) -> list[ProviderInstance]:
        """Every instance of this fleet the provider knows, terminated ones included while it lists them."""
        ...

    async def close(self) -> None:
        """Release clients and files. Does not terminate instances (a restarted daemon adopts them)."""
        ...
