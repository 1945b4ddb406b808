"""The static provider: servers already running (`[[fleet.endpoints]]`), listed, never launched or terminated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kairosd.config import EndpointConfig, InstanceTypeConfig
from kairosd.providers.base import FLEET_TAG, TYPE_TAG, NotLaunchable, Offering, ProviderInstance, ProviderState


@dataclass
class StaticProvider:
    """Implements `kairosd.providers.base.Provider` over a fixed list of endpoints. Ids are
    `static-<type>-<gRPC address>`, the same across restarts."""

    endpoints: Sequence[EndpointConfig]
    types: Mapping[str, InstanceTypeConfig]
    fleet_name: str = "kairosd"
    name: str = "static"
    managed: bool = False

    async def offerings(self) -> list[Offering]:
        return []  # nothing to launch

    async def launch(self, instance_type: str, count: int, token: str,
                     tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        raise NotLaunchable("static endpoints are listed, never launched: run the server yourself and list it in "
                            "[[fleet.endpoints]], or set [autoscaler] provider = \"local\" or \"ec2\"")

    async def terminate(self, ids: Sequence[str]) -> None:
        raise NotLaunchable("static endpoints are never terminated by kairosd")

    async def list(self) -> list[ProviderInstance]:
        return [
            ProviderInstance(
                id=f"static-{ep.type}-{ep.address}", type=ep.type, state=ProviderState.RUNNING, address=ep.address,
                http_address=ep.http_address, price_usd_per_hour=self.types[ep.type].price_usd_per_hour,
                tags={FLEET_TAG: self.fleet_name, TYPE_TAG: ep.type},
            )
            for ep in self.endpoints
        ]

    async def close(self) -> None:
        return None
