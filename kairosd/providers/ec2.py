"""The EC2 provider: instances launched with boto3, found again by their fleet tag, never twice per launch token.

Core rule: EC2 is the truth. Every instance carries `kairos:fleet`, `kairos:type`, `kairos:launch-token`
and `kairos:purchase` from its RunInstances call (TagSpecifications, so an instance never exists
untagged); `launch` first lists the instances that carry the token and starts only the missing ones;
`list` is DescribeInstances filtered by the fleet tag. boto3 lives only in this module, and every call
runs off the event loop (`asyncio.to_thread`). The client is built the standard way, so boto3's
environment (credentials chain, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_EC2) applies unless
`[provider.ec2]` sets `region` / `endpoint_url`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shlex
import string
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import boto3
import botocore.exceptions  # type: ignore[import-untyped]
import botocore.session  # type: ignore[import-untyped]

from kairosd.config import InstanceTypeConfig
from kairosd.errors import ConfigError
from kairosd.providers.base import (
    FLEET_TAG,
    TOKEN_TAG,
    TYPE_TAG,
    InsufficientCapacity,
    NotLaunchable,
    Offering,
    ProviderError,
    ProviderInstance,
    ProviderState,
)
from kairosd.providers.ec2_config import Ec2Settings, Ec2TypeSettings

log = logging.getLogger(__name__)

PURCHASE_TAG = "kairos:purchase"  # value: "spot" | "on-demand", how the instance was bought
SPOT, ON_DEMAND = "spot", "on-demand"

# EC2 error codes meaning "not this type / market now": spot falls back to on-demand, on-demand raises
# InsufficientCapacity (quota errors included: the planner should take the next option either way)
CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientFreeAddressesInSubnet",
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "Unsupported",  # the type (or spot for it) is not offered in the subnet's availability zone
    }
)
# TerminateInstances errors that mean "no such instance": it is gone, or never was
GONE_ERRORS = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})

_STATES = {
    "pending": ProviderState.PENDING,
    "running": ProviderState.RUNNING,
    "shutting-down": ProviderState.SHUTTING_DOWN,
    "terminated": ProviderState.TERMINATED,
    # a stopped instance serves nothing but its volumes are still billed: reported as shutting down,
    # so the registry never routes to it and the reconciler terminates it
    "stopping": ProviderState.SHUTTING_DOWN,
    "stopped": ProviderState.SHUTTING_DOWN,
}
_LIVE_STATES = ["pending", "running"]  # the states that count towards a launch's `count`
_TERMINATE_CHUNK = 100  # ids per TerminateInstances call
_TEMPLATE_SUFFIX = ".sh.tmpl"
# botocore's data loader (service models, endpoints), shared by the sessions of this process
_loader: Any = None
_loader_lock = threading.Lock()
_DEFAULT_TEMPLATE = {"triton": "triton", "onnxruntime": "worker"}  # backend → user-data template name
_DEFAULT_HTTP_PORT = {"triton": 8000}  # backend → its KServe v2 HTTP port when the config sets none


def _hint(code: str, ts: Ec2TypeSettings | None) -> str:
    """What to check for an EC2 error code: the credentials, or the config key behind the value."""
    key = f'[provider.ec2.types."{ts.name}"] (or [provider.ec2])' if ts else "[provider.ec2]"
    if code in {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "RequestExpired",
        "OptInRequired",
        "AccessDenied",
        "AccessDeniedException",
    }:
        return "check the AWS credentials (environment, ~/.aws, instance role) and that the IAM policy in docs/ec2.md is attached"
    if code.startswith("InvalidAMIID"):
        return f"check `ami` in {key}: it must exist in the client's region"
    if code.startswith("InvalidSubnet"):
        return f"check `subnet_id` in {key}: it must exist in the client's region"
    if code.startswith(("InvalidGroup", "InvalidSecurityGroup")):
        return f"check `security_group_ids` in {key}: they must belong to the subnet's VPC"
    if code.startswith("InvalidKeyPair"):
        return f"check `key_name` in {key}: the key pair must exist in the client's region"
    if code in {"InvalidParameterValue", "InvalidParameterCombination", "InvalidParameter"}:
        return (
            f"check {key}: `iam_instance_profile` must exist (and kairosd needs iam:PassRole on its role), "
            "`instance_type` must suit the AMI's architecture"
        )
    if code == "IdempotentParameterMismatch":
        return "a launch token was reused with other launch parameters: launch with a fresh token"
    return f"check {key} and the AWS message"


def _session() -> boto3.session.Session:
    """A new boto3 session (credentials, region and endpoint resolved afresh) sharing the process's
    botocore data loader, so the EC2 service model (megabytes of JSON, ~0.2 s) is parsed once per
    process rather than once per client."""
    global _loader
    core = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core)


def _client_error(call: str, exc: Exception, ts: Ec2TypeSettings | None = None) -> ProviderError:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "?"))
        return ProviderError(f"EC2 {call} failed: {code}: {err.get('Message', '')}; {_hint(code, ts)}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ProviderError(f"EC2 {call}: no AWS credentials found; set them in the environment, ~/.aws or an instance role")
    if isinstance(exc, botocore.exceptions.NoRegionError):
        return ProviderError(f"EC2 {call}: no region; set [provider.ec2] region or AWS_DEFAULT_REGION")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return ProviderError(
            f"EC2 {call}: cannot reach the EC2 endpoint ({exc}); check the network, "
            "[provider.ec2] endpoint_url and AWS_ENDPOINT_URL_EC2"
        )
    return ProviderError(f"EC2 {call} failed: {exc}")


def _code(exc: Exception) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def client_token(fleet: str, instance_type: str, token: str, count: int, purchase: str) -> str:
    """RunInstances' ClientToken (≤ 64 ASCII characters): EC2 answers a repeated call with the first
    one's instances. It covers the moments when DescribeInstances does not show a fresh launch yet; the
    token tag and `list` are what prevent a double launch (an endpoint may ignore ClientToken)."""
    digest = hashlib.sha256(f"{fleet}\0{instance_type}\0{token}\0{count}\0{purchase}".encode()).hexdigest()
    return f"kairos-{digest[:48]}"


def render_user_data(template: str, values: Mapping[str, object]) -> str:
    """`template` (string.Template: `$name`, `$$` for a literal dollar) with every name substituted;
    a name without a value raises ConfigError naming it and the names there are."""
    try:
        return string.Template(template).substitute(values)
    except KeyError as exc:
        raise ConfigError(
            f"user-data template uses ${exc.args[0]}, which kairosd does not set; available: {sorted(values)}"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"user-data template: {exc} (write a literal dollar as $$)") from None


class Ec2Provider:
    """Launches, lists and terminates one fleet's instances in one EC2 region.

    `settings.types` are the types it offers; `types` (the daemon's `[types]`) give each its backend,
    threads and price. A type with an InsufficientCapacity is offered unavailable for
    `settings.capacity_backoff_s`.
    """

    name = "ec2"
    managed = True

    def __init__(
        self,
        settings: Ec2Settings,
        fleet: str,
        types: Mapping[str, InstanceTypeConfig],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not fleet:
            raise ConfigError("the EC2 provider needs a fleet name ([autoscaler] fleet_name): its instances are found by it")
        for name in settings.types:
            if name not in types:
                raise ConfigError(f'[provider.ec2.types."{name}"]: no [types."{name}"] defines its backend and price')
        self.settings = settings
        self.fleet = fleet
        self.types = types
        self._clock = clock
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._capacity_failed_at: dict[str, float] = {}  # type → clock() of its last InsufficientCapacity
        self._in_region: frozenset[str] | None = None  # EC2 types offered in the region, once checked
        self._launching: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()  # token → lock
        self._templates = {name: self._template(ts) for name, ts in settings.types.items()}
        for name, ts in settings.types.items():  # a template with an unknown $name fails now, not at launch
            render_user_data(self._templates[name], self._template_values(ts, region="us-east-1"))

    # ------------------------------------------------------------------------------------ settings

    def _template(self, ts: Ec2TypeSettings) -> str:
        backend = self.types[ts.name].backend
        name = ts.user_data or _DEFAULT_TEMPLATE[backend]
        path = self.settings.user_data_dir / f"{name}{_TEMPLATE_SUFFIX}"
        try:
            return path.read_text()
        except OSError as exc:
            raise ConfigError(
                f'[provider.ec2.types."{ts.name}"] user_data = {name!r}: cannot read {path} ({exc.strerror}); '
                f"set [provider.ec2] user_data_dir to the directory of the *{_TEMPLATE_SUFFIX} files"
            ) from None

    def http_port(self, instance_type: str) -> int | None:
        """The type's KServe v2 HTTP port: the configured one (0: none), else its backend's default."""
        ts = self.settings.types.get(instance_type)
        if ts is None:
            return None
        if ts.http_port is not None:
            return ts.http_port or None
        return _DEFAULT_HTTP_PORT.get(self.types[instance_type].backend)

    def _template_values(self, ts: Ec2TypeSettings, region: str) -> dict[str, object]:
        http_port = self.http_port(ts.name)
        q = shlex.quote
        return {
            "fleet": q(self.fleet),
            "type_name": q(ts.name),
            "instance_type": q(ts.instance_type),
            "region": q(region),
            "model_repository_uri": q(self.settings.model_repository_uri),
            "kairosd_package": q(self.settings.kairosd_package),
            "triton_image": q(self.settings.triton_image),
            "grpc_port": ts.grpc_port,
            "http_port": http_port if http_port is not None else "",
            "metrics_port": ts.metrics_port,
            "threads": self.types[ts.name].threads,
            "triton_http_args": f"--allow-http=true --http-port={http_port}" if http_port else "--allow-http=false",
        }

    def user_data(self, instance_type: str, region: str) -> str:
        """The rendered user-data script an instance of `instance_type` boots with."""
        ts = self.settings.types[instance_type]
        return render_user_data(self._templates[instance_type], self._template_values(ts, region))

    # ------------------------------------------------------------------------------------ boto3

    def _ec2(self) -> Any:
        """The client, built once (in a worker thread: it reads files and the environment)."""
        with self._client_lock:
            if self._client is None:
                kw: dict[str, Any] = {}
                if self.settings.region:
                    kw["region_name"] = self.settings.region
                if self.settings.endpoint_url:
                    kw["endpoint_url"] = self.settings.endpoint_url
                # a session of our own: boto3's default session is not safe to create from several threads
                self._client = _session().client("ec2", **kw)
            return self._client

    async def _call(self, call: str, fn: Callable[[Any], Any], ts: Ec2TypeSettings | None = None) -> Any:
        """`fn(client)` in a worker thread. botocore's own errors (no credentials, no region, no connection)
        become ProviderError; an EC2 error answer stays a ClientError, for the caller to classify."""

        def work() -> Any:
            return fn(self._ec2())

        try:
            return await asyncio.to_thread(work)
        except botocore.exceptions.BotoCoreError as exc:
            raise _client_error(call, exc, ts) from exc

    async def _run(self, call: str, fn: Callable[[Any], Any], ts: Ec2TypeSettings | None = None) -> Any:
        """`_call`, with every EC2 error answer a ProviderError saying what to check."""
        try:
            return await self._call(call, fn, ts)
        except botocore.exceptions.ClientError as exc:
            raise _client_error(call, exc, ts) from None

    async def _describe(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        def pages(ec2: Any) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    out.extend(reservation.get("Instances", []))
            return out

        result: list[dict[str, Any]] = await self._run("DescribeInstances", pages)
        return result

    def _region(self) -> str:
        return str(self._ec2().meta.region_name)

    # ------------------------------------------------------------------------------------ Provider

    async def offerings(self) -> list[Offering]:
        in_region = await self._types_in_region()
        now = self._clock()
        out = []
        for name, ts in self.settings.types.items():
            failed_at = self._capacity_failed_at.get(name)
            recent_failure = failed_at is not None and now - failed_at < self.settings.capacity_backoff_s
            offered = in_region is None or ts.instance_type in in_region
            out.append(Offering(name, self.types[name].price_usd_per_hour, available=offered and not recent_failure))
        return out

    async def _types_in_region(self) -> frozenset[str] | None:
        """The configured EC2 types the region offers (DescribeInstanceTypeOfferings, once); None: not checked."""
        if not self.settings.check_type_offerings:
            return None
        if self._in_region is None:
            wanted = sorted({ts.instance_type for ts in self.settings.types.values()})

            def offered(ec2: Any) -> frozenset[str]:
                found: set[str] = set()
                paginator = ec2.get_paginator("describe_instance_type_offerings")
                for page in paginator.paginate(LocationType="region", Filters=[{"Name": "instance-type", "Values": wanted}]):
                    found.update(o["InstanceType"] for o in page.get("InstanceTypeOfferings", []))
                return frozenset(found)

            try:
                self._in_region = await self._run("DescribeInstanceTypeOfferings", offered)
            except ProviderError as exc:
                log.warning("%s; offering every configured type (set check_type_offerings = false to skip the check)", exc)
                self._in_region = frozenset(wanted)
            missing = set(wanted) - self._in_region
            if missing:
                log.warning("EC2 types not offered in region %s, offered unavailable: %s", self._region(), sorted(missing))
        return self._in_region

    async def launch(self, instance_type: str, count: int, token: str,
                     tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        ts = self.settings.types.get(instance_type)
        if ts is None:
            raise NotLaunchable(
                f'EC2 type {instance_type!r} has no [provider.ec2.types."{instance_type}"] table; '
                f"launchable: {sorted(self.settings.types)}"
            )
        if not token:
            raise ProviderError("launch needs a non-empty token (it makes the launch idempotent)")
        # two calls with one token in this process take turns, so the second sees the first's instances
        lock = self._launching.get(token)
        if lock is None:
            lock = self._launching[token] = asyncio.Lock()
        async with lock:
            return await self._launch(ts, count, token, dict(tags or {}))

    async def _launch(self, ts: Ec2TypeSettings, count: int, token: str, extra_tags: dict[str, str]) -> list[ProviderInstance]:
        instance_type = ts.name
        existing = await self._describe(
            [
                {"Name": f"tag:{FLEET_TAG}", "Values": [self.fleet]},
                {"Name": f"tag:{TOKEN_TAG}", "Values": [token]},
                {"Name": "instance-state-name", "Values": _LIVE_STATES},
            ]
        )
        other = {_tags(i).get(TYPE_TAG) for i in existing} - {instance_type}
        if other:
            raise ProviderError(
                f"launch token {token!r} already launched type(s) {sorted(map(str, other))}, not {instance_type!r}; "
                "use one token per launch"
            )
        have = [self._instance(i) for i in existing]
        missing = count - len(have)
        if missing <= 0:
            return have
        purchase = SPOT if ts.spot else ON_DEMAND
        try:
            new = await self._run_instances(ts, missing, token, purchase, extra_tags)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) not in CAPACITY_ERRORS:
                raise _client_error("RunInstances", exc, ts) from None
            if purchase == SPOT:
                log.warning(
                    "EC2 spot launch of %d %s failed (%s); launching on-demand instead", missing, instance_type, _code(exc)
                )
                try:
                    new = await self._run_instances(ts, missing, token, ON_DEMAND, extra_tags)
                except botocore.exceptions.ClientError as exc2:
                    raise self._launch_failure(ts, exc2, missing) from None
            else:
                raise self._launch_failure(ts, exc, missing) from None
        log.info(
            "EC2 launched %d %s (%s), token %s: %s",
            len(new),
            instance_type,
            new[0].purchase if new else "-",
            token,
            [i.id for i in new],
        )
        return have + new

    def _launch_failure(self, ts: Ec2TypeSettings, exc: botocore.exceptions.ClientError, count: int) -> ProviderError:
        code = _code(exc)
        if code not in CAPACITY_ERRORS:
            return _client_error("RunInstances", exc, ts)
        self._capacity_failed_at[ts.name] = self._clock()
        message = exc.response.get("Error", {}).get("Message", "")
        return InsufficientCapacity(
            f"EC2 cannot launch {count} {ts.instance_type} now: {code}: {message}; offered unavailable for "
            f"{self.settings.capacity_backoff_s:.0f} s (another subnet/AZ or a quota increase may help)",
            ts.name,
        )

    async def _run_instances(self, ts: Ec2TypeSettings, count: int, token: str, purchase: str,
                             extra_tags: Mapping[str, str]) -> list[ProviderInstance]:
        tags = [{"Key": k, "Value": v} for k, v in sorted(extra_tags.items())] + [
            {"Key": "Name", "Value": f"kairos-{self.fleet}-{ts.name}"},
            {"Key": FLEET_TAG, "Value": self.fleet},
            {"Key": TYPE_TAG, "Value": ts.name},
            {"Key": TOKEN_TAG, "Value": token},
            {"Key": PURCHASE_TAG, "Value": purchase},
        ]

        def run(ec2: Any) -> dict[str, Any]:
            kw: dict[str, Any] = {
                "ImageId": ts.ami,
                "InstanceType": ts.instance_type,
                "MinCount": count,
                "MaxCount": count,
                "ClientToken": client_token(self.fleet, ts.name, token, count, purchase),
                "UserData": self.user_data(ts.name, str(ec2.meta.region_name)),  # boto3 base64-encodes it
                "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
                "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},  # IMDSv2 only
            }
            if ts.subnet_id:
                kw["SubnetId"] = ts.subnet_id
            if ts.security_group_ids:
                kw["SecurityGroupIds"] = list(ts.security_group_ids)
            if ts.iam_instance_profile:
                is_arn = ts.iam_instance_profile.startswith("arn:")
                kw["IamInstanceProfile"] = {"Arn" if is_arn else "Name": ts.iam_instance_profile}
            if ts.key_name:
                kw["KeyName"] = ts.key_name
            if purchase == SPOT:
                spot: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
                if ts.spot_max_price_usd_per_hour is not None:
                    spot["MaxPrice"] = f"{ts.spot_max_price_usd_per_hour:.4f}"
                kw["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
            result: dict[str, Any] = ec2.run_instances(**kw)
            return result

        answer = await self._call("RunInstances", run, ts)
        return [self._instance(i) for i in answer.get("Instances", [])]

    async def terminate(self, ids: Sequence[str]) -> None:
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _TERMINATE_CHUNK):
            await self._terminate_chunk(unique[start : start + _TERMINATE_CHUNK])

    async def _terminate_chunk(self, ids: list[str]) -> None:
        if not ids:
            return
        try:
            await self._call("TerminateInstances", lambda ec2: ec2.terminate_instances(InstanceIds=ids))
        except botocore.exceptions.ClientError as exc:
            if _code(exc) not in GONE_ERRORS:
                raise _client_error("TerminateInstances", exc) from None
            # one unknown id fails the whole call: terminate the rest one by one, the unknown ones are done
            if len(ids) == 1:
                log.info("EC2 instance %s is already gone (%s)", ids[0], _code(exc))
                return
            for one in ids:
                await self._terminate_chunk([one])
            return
        log.info("EC2 terminating %s", ids)

    async def list(self) -> list[ProviderInstance]:
        found = await self._describe([{"Name": f"tag:{FLEET_TAG}", "Values": [self.fleet]}])
        return [self._instance(i) for i in found]

    async def close(self) -> None:
        with self._client_lock:
            self._client = None

    # ------------------------------------------------------------------------------------ mapping

    def _instance(self, raw: Mapping[str, Any]) -> ProviderInstance:
        tags = _tags(raw)
        type_name = tags.get(TYPE_TAG, str(raw.get("InstanceType", "")))
        state = _STATES.get(str(raw.get("State", {}).get("Name", "")), ProviderState.PENDING)
        ts = self.settings.types.get(type_name)
        ip = raw.get("PrivateIpAddress")
        known = ip and ts is not None and state is not ProviderState.TERMINATED
        http_port = self.http_port(type_name)
        launched = raw.get("LaunchTime")
        purchase = tags.get(PURCHASE_TAG) or (SPOT if raw.get("InstanceLifecycle") == "spot" else ON_DEMAND)
        it = self.types.get(type_name)
        return ProviderInstance(
            id=str(raw["InstanceId"]),
            type=type_name,
            state=state,
            address=f"{ip}:{ts.grpc_port}" if known and ts is not None else None,
            http_address=f"{ip}:{http_port}" if known and http_port else None,
            launched_at_s=launched.timestamp() if launched is not None else 0.0,
            # spot instances are charged at most the on-demand price (no MaxPrice set above it): the budget
            # counts the configured price, an upper bound
            price_usd_per_hour=it.price_usd_per_hour if it is not None else 0.0,
            tags=tags,
            purchase=purchase,
        )


def _tags(raw: Mapping[str, Any]) -> dict[str, str]:
    return {str(t["Key"]): str(t.get("Value", "")) for t in raw.get("Tags", []) or []}
