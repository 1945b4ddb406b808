"""EC2 provider settings: `[provider.ec2]` and `[provider.ec2.types.<name>]` parsed into frozen dataclasses.

Core rule: a per-type table inherits every launch key it does not set from `[provider.ec2]`, so shared
values (AMI, subnet, security groups) are written once; every error is a ConfigError naming the key,
the value and what is allowed. boto3 is not imported here: parsing a config never talks to AWS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kairosd.errors import ConfigError

# the templates shipped in the repository (configs/userdata/); `user_data_dir` overrides it
DEFAULT_USER_DATA_DIR = Path(__file__).resolve().parents[2] / "configs" / "userdata"

# keys valid both in [provider.ec2] (as the default) and in [provider.ec2.types.<name>]
_LAUNCH_KEYS = (
    "ami",
    "subnet_id",
    "security_group_ids",
    "iam_instance_profile",
    "key_name",
    "spot",
    "spot_max_price_usd_per_hour",
    "grpc_port",
    "http_port",
    "metrics_port",
    "user_data",
)
_TOP_KEYS = (
    "region",
    "endpoint_url",
    "capacity_backoff_s",
    "check_type_offerings",
    "user_data_dir",
    "model_repository_uri",
    "kairosd_package",
    "triton_image",
    "types",
)
_TYPE_ONLY_KEYS = ("instance_type",)

_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+$")  # us-east-1, eu-central-2, us-gov-west-1
_AMI_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
_SUBNET_RE = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_SG_RE = re.compile(r"^sg-[0-9a-f]{8,17}$")
_INSTANCE_TYPE_RE = re.compile(r"^[a-z0-9-]+\.[a-z0-9-]+$")
_TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True, slots=True)
class Ec2TypeSettings:
    """How to launch one kairosd instance type on EC2 (after inheriting the `[provider.ec2]` defaults)."""

    name: str  # the kairosd type name ([types.<name>])
    instance_type: str  # the EC2 instance type; defaults to `name`
    ami: str
    subnet_id: str | None = None  # None: the default VPC's default subnet of some AZ
    security_group_ids: tuple[str, ...] = ()  # empty: the VPC's default security group
    iam_instance_profile: str | None = None  # a name, or an ARN (arn:aws:iam::...:instance-profile/...)
    key_name: str | None = None
    spot: bool = False  # launch as spot; on a capacity error, fall back to on-demand once
    spot_max_price_usd_per_hour: float | None = None  # None: at most the on-demand price (EC2's default)
    grpc_port: int = 8001  # KServe v2 gRPC: the address kairosd forwards to
    http_port: int | None = None  # KServe v2 HTTP; None: by backend (Triton 8000, the CPU worker none); 0: none
    metrics_port: int = 8002  # Triton's Prometheus port (the CPU worker does not serve one)
    user_data: str | None = None  # template name in user_data_dir, without ".sh.tmpl"; None: by backend


@dataclass(frozen=True, slots=True)
class Ec2Settings:
    """`[provider.ec2]`: the region and endpoint, the fleet-wide user-data values, and each type's launch settings."""

    region: str | None = None  # None: boto3's chain (AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config)
    endpoint_url: str | None = None  # None: boto3's chain (AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL / AWS)
    capacity_backoff_s: float = 300.0  # a type that hit InsufficientCapacity is offered unavailable this long
    check_type_offerings: bool = True  # once: DescribeInstanceTypeOfferings, types absent in the region unavailable
    user_data_dir: Path = DEFAULT_USER_DATA_DIR
    model_repository_uri: str = ""  # s3://bucket/prefix synced to the instance's model repository
    kairosd_package: str = ""  # pip requirement or wheel URL for CPU workers; "": kairosd is in the AMI
    triton_image: str = "nvcr.io/nvidia/tritonserver:24.10-py3"
    types: Mapping[str, Ec2TypeSettings] = field(default_factory=dict)  # kairosd type name → launch settings


# ------------------------------------------------------------------------------------------ validation


def _str(v: Any, key: str, allowed: str = "a string") -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key} = {v!r}: must be {allowed}")
    return v


def _matching(v: Any, key: str, pattern: re.Pattern[str], allowed: str) -> str:
    s = _str(v, key, allowed)
    if not pattern.match(s):
        raise ConfigError(f"{key} = {v!r}: must be {allowed}")
    return s


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key} = {v!r}: must be true or false")
    return v


def _port(v: Any, key: str, optional: bool = False) -> int:
    if optional and v == 0 and not isinstance(v, bool):
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        extra = "; 0 for none" if optional else ""
        raise ConfigError(f"{key} = {v!r}: must be a TCP port 1..65535{extra}")
    return v


def _positive(v: Any, key: str, zero_ok: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (v == 0 and not zero_ok):
        raise ConfigError(f"{key} = {v!r}: must be a number {'≥' if zero_ok else '>'} 0")
    return float(v)


def _launch_value(k: str, v: Any, key: str) -> Any:
    """One launch key's value, validated; the returned value is what Ec2TypeSettings stores."""
    if k == "ami":
        return _matching(v, key, _AMI_RE, "an AMI id like 'ami-0123456789abcdef0'")
    if k == "subnet_id":
        return _matching(v, key, _SUBNET_RE, "a subnet id like 'subnet-0123456789abcdef0'")
    if k == "security_group_ids":
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{key} = {v!r}: must be a non-empty list of security group ids like ['sg-0123456789abcdef0']")
        return tuple(
            _matching(s, f"{key}[{i}]", _SG_RE, "a security group id like 'sg-0123456789abcdef0'") for i, s in enumerate(v)
        )
    if k in ("iam_instance_profile", "key_name"):
        return _str(
            v,
            key,
            "a non-empty string" + (" (a profile name or ARN)" if k == "iam_instance_profile" else " (an EC2 key pair name)"),
        )
    if k == "spot":
        return _bool(v, key)
    if k == "spot_max_price_usd_per_hour":
        return _positive(v, key)
    if k in ("grpc_port", "metrics_port"):
        return _port(v, key)
    if k == "http_port":
        return _port(v, key, optional=True)
    if k == "user_data":
        return _matching(
            v, key, _TEMPLATE_NAME_RE, "a template name in user_data_dir without '.sh.tmpl', e.g. 'triton' or 'worker'"
        )
    raise AssertionError(k)  # _LAUNCH_KEYS and this function list the same keys


def parse_ec2(raw: Mapping[str, Any], types: Iterable[str], base_dir: Path | None = None) -> Ec2Settings:
    """Validate the `[provider.ec2]` table `raw` (its `types` subtable included) against the kairosd type
    names `types`. Each `[provider.ec2.types.<name>]` must name a defined type and, after inheriting the
    top-level defaults, have an `ami`. A relative `user_data_dir` is relative to `base_dir` (or the cwd)."""
    prefix = "provider.ec2"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{prefix}] must be a table")
    defined = list(types)
    allowed_top = sorted((*_TOP_KEYS, *_LAUNCH_KEYS))
    for k in raw:
        if k not in allowed_top:
            raise ConfigError(f"unknown key {prefix}.{k}; allowed: {allowed_top}")

    top: dict[str, Any] = {}
    if "region" in raw:
        top["region"] = _matching(raw["region"], f"{prefix}.region", _REGION_RE, "an AWS region name like 'us-east-1'")
    if "endpoint_url" in raw:
        url = _str(raw["endpoint_url"], f"{prefix}.endpoint_url", "an http(s):// URL")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{prefix}.endpoint_url = {url!r}: must be an http(s):// URL (omit it to use AWS_ENDPOINT_URL_EC2 or AWS)"
            )
        top["endpoint_url"] = url
    if "capacity_backoff_s" in raw:
        top["capacity_backoff_s"] = _positive(raw["capacity_backoff_s"], f"{prefix}.capacity_backoff_s", zero_ok=True)
    if "check_type_offerings" in raw:
        top["check_type_offerings"] = _bool(raw["check_type_offerings"], f"{prefix}.check_type_offerings")
    if "user_data_dir" in raw:
        d = Path(_str(raw["user_data_dir"], f"{prefix}.user_data_dir", "a directory path"))
        top["user_data_dir"] = d if d.is_absolute() or base_dir is None else base_dir / d
    if "model_repository_uri" in raw:
        uri = raw["model_repository_uri"]
        if not isinstance(uri, str) or not (uri == "" or uri.startswith("s3://")):
            raise ConfigError(
                f"{prefix}.model_repository_uri = {uri!r}: must be an 's3://bucket/prefix' URI "
                "(or '' for a model repository baked into the AMI)"
            )
        top["model_repository_uri"] = uri
    if "kairosd_package" in raw:
        if not isinstance(raw["kairosd_package"], str):
            raise ConfigError(
                f"{prefix}.kairosd_package = {raw['kairosd_package']!r}: must be a pip requirement or wheel URL "
                "('' when the AMI has kairosd)"
            )
        top["kairosd_package"] = raw["kairosd_package"]
    if "triton_image" in raw:
        top["triton_image"] = _str(
            raw["triton_image"],
            f"{prefix}.triton_image",
            "a container image reference like 'nvcr.io/nvidia/tritonserver:24.10-py3'",
        )

    defaults = {k: _launch_value(k, raw[k], f"{prefix}.{k}") for k in _LAUNCH_KEYS if k in raw}

    per_type_raw = raw.get("types", {})
    if not isinstance(per_type_raw, Mapping):
        raise ConfigError(f"[{prefix}.types] must be a table of [{prefix}.types.<type name>] tables")
    out: dict[str, Ec2TypeSettings] = {}
    allowed_type = sorted((*_LAUNCH_KEYS, *_TYPE_ONLY_KEYS))
    for name, t in per_type_raw.items():
        tprefix = f'{prefix}.types."{name}"'
        if name not in defined:
            raise ConfigError(f"[{tprefix}]: unknown instance type {name!r}; defined types ([types.<name>]): {sorted(defined)}")
        if not isinstance(t, Mapping):
            raise ConfigError(f"[{tprefix}] must be a table")
        kw = dict(defaults)
        for k, v in t.items():
            if k not in allowed_type:
                raise ConfigError(f"unknown key {tprefix}.{k}; allowed: {allowed_type}")
            if k == "instance_type":
                kw[k] = _matching(v, f"{tprefix}.{k}", _INSTANCE_TYPE_RE, "an EC2 instance type like 'g4dn.xlarge'")
            else:
                kw[k] = _launch_value(k, v, f"{tprefix}.{k}")
        if "ami" not in kw:
            raise ConfigError(f"{tprefix}.ami is missing: set it there or in [{prefix}] (an AMI id like 'ami-0123456789abcdef0')")
        kw.setdefault("instance_type", name)
        if kw.get("spot_max_price_usd_per_hour") is not None and not kw.get("spot", False):
            raise ConfigError(f"{tprefix}.spot_max_price_usd_per_hour is set but spot = false: set spot = true or drop the price")
        out[name] = Ec2TypeSettings(name=name, **kw)
    return Ec2Settings(types=out, **top)
