"""Instance providers: `local` (child processes), `static` (servers already running), `ec2` (boto3)."""

from kairosd.providers.base import (
    FLEET_TAG,
    POOL_TAG,
    TOKEN_TAG,
    TYPE_TAG,
    InsufficientCapacity,
    NotLaunchable,
    Offering,
    Provider,
    ProviderError,
    ProviderInstance,
    ProviderState,
)

__all__ = [
    "FLEET_TAG",
    "POOL_TAG",
    "TOKEN_TAG",
    "TYPE_TAG",
    "InsufficientCapacity",
    "NotLaunchable",
    "Offering",
    "Provider",
    "ProviderError",
    "ProviderInstance",
    "ProviderState",
]
