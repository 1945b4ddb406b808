"""The EC2 provider against a real EC2 API (moto's server over HTTP): tags, idempotent launch and terminate,
listing by fleet, spot and its fallback, user data on the instance, and the `[provider.ec2]` checks."""

from __future__ import annotations

import asyncio
import base64
import string
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest

from kairosd.config import InstanceTypeConfig
from kairosd.errors import ConfigError
from kairosd.providers import (
    FLEET_TAG,
    TOKEN_TAG,
    TYPE_TAG,
    InsufficientCapacity,
    NotLaunchable,
    Provider,
    ProviderError,
    ProviderState,
)
from kairosd.providers.ec2 import PURCHASE_TAG, Ec2Provider
from kairosd.providers.ec2_config import DEFAULT_USER_DATA_DIR, parse_ec2
from tests.integration.moto_server import CLEARED_AWS_ENV, DUMMY_AWS_ENV, FaultProxy, moto_server, reset

REPO = Path(__file__).resolve().parents[2]
AMI = "ami-12c6146b"  # one of the images moto ships (its describe_images lists it)
TYPES = {
    "g4dn.xlarge": InstanceTypeConfig("g4dn.xlarge", "triton", price_usd_per_hour=0.526, threads=4),
    "c5n.2xlarge": InstanceTypeConfig("c5n.2xlarge", "onnxruntime", price_usd_per_hour=0.432, threads=8),
    "r5n.large": InstanceTypeConfig("r5n.large", "onnxruntime", price_usd_per_hour=0.149, threads=2),
    "t3.xlarge": InstanceTypeConfig("t3.xlarge", "onnxruntime", price_usd_per_hour=0.1664, threads=4),
}
EC2_TABLE: dict[str, Any] = {
    "region": "us-east-1",
    "ami": AMI,
    "model_repository_uri": "s3://kairos-test/models",
    "kairosd_package": "kairosd==0.1.0",
    "types": {"g4dn.xlarge": {}, "c5n.2xlarge": {}, "r5n.large": {"spot": True}, "t3.xlarge": {"grpc_port": 9001}},
}


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def ec2_url(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh moto server and dummy credentials; the endpoint itself is left to each test."""
    reset(moto_url)
    for k in CLEARED_AWS_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(k, v)
    return moto_url


def plain_client(url: str) -> Any:
    """An ordinary boto3 client: what an operator would see in the console."""
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=url)


def make_provider(fleet: str = "prod", endpoint_url: str | None = None, **overrides: Any) -> Ec2Provider:
    table = {**EC2_TABLE, **overrides}
    if endpoint_url:
        table["endpoint_url"] = endpoint_url
    return Ec2Provider(parse_ec2(table, TYPES), fleet, TYPES)


def described(url: str, ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    kw: dict[str, Any] = {"InstanceIds": ids} if ids else {}
    pages = plain_client(url).describe_instances(**kw)["Reservations"]
    return {i["InstanceId"]: i for r in pages for i in r["Instances"]}


def tags_of(instance: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


# ---------------------------------------------------------------------------------------------- launch / list


async def test_launch_tags_instances_and_volumes_via_env_endpoint(ec2_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", ec2_url)  # no endpoint_url in the config: boto3's env decides
    provider = make_provider()
    assert isinstance(provider, Provider) and provider.name == "ec2" and provider.managed

    launched = await provider.launch("c5n.2xlarge", 2, "tok-1")
    assert len(launched) == 2 and {i.type for i in launched} == {"c5n.2xlarge"}

    seen = described(ec2_url, [i.id for i in launched])
    for inst in seen.values():
        assert inst["InstanceType"] == "c5n.2xlarge" and inst["ImageId"] == AMI
        assert tags_of(inst) == {
            FLEET_TAG: "prod",
            TYPE_TAG: "c5n.2xlarge",
            TOKEN_TAG: "tok-1",
            PURCHASE_TAG: "on-demand",
            "Name": "kairos-prod-c5n.2xlarge",
        }
        assert inst.get("InstanceLifecycle") != "spot"
        assert inst["ClientToken"].startswith("kairos-") and len(inst["ClientToken"]) <= 64
    volumes = plain_client(ec2_url).describe_volumes(Filters=[{"Name": f"tag:{FLEET_TAG}", "Values": ["prod"]}])["Volumes"]
    assert {a["InstanceId"] for v in volumes for a in v["Attachments"]} == set(seen)

    listed = {i.id: i for i in await provider.list()}
    assert set(listed) == set(seen)
    for pi in listed.values():
        ip = seen[pi.id]["PrivateIpAddress"]
        assert pi.state is ProviderState.RUNNING
        assert pi.address == f"{ip}:8001" and pi.http_address is None  # the CPU worker has no HTTP port
        assert pi.price_usd_per_hour == 0.432 and pi.purchase == "on-demand"
        assert pi.launched_at_s == seen[pi.id]["LaunchTime"].timestamp() > 0
        assert pi.tags[TOKEN_TAG] == "tok-1"

    gpu = await provider.launch("g4dn.xlarge", 1, "tok-2")  # Triton: gRPC and HTTP addresses
    t3 = await provider.launch("t3.xlarge", 1, "tok-3")  # a per-type gRPC port
    listed = {i.id: i for i in await provider.list()}
    ip = described(ec2_url, [gpu[0].id])[gpu[0].id]["PrivateIpAddress"]
    assert listed[gpu[0].id].address == f"{ip}:8001" and listed[gpu[0].id].http_address == f"{ip}:8000"
    assert str(listed[t3[0].id].address).endswith(":9001")
    await provider.close()


async def test_launch_twice_with_one_token_launches_once(ec2_url: str) -> None:
    provider = make_provider(endpoint_url=ec2_url)  # the endpoint from the config this time
    first = await provider.launch("c5n.2xlarge", 2, "tok-a")
    again = await provider.launch("c5n.2xlarge", 2, "tok-a")
    assert sorted(i.id for i in again) == sorted(i.id for i in first)
    assert len(described(ec2_url)) == 2

    more = await provider.launch("c5n.2xlarge", 3, "tok-a")  # only the missing one is launched
    assert len(more) == 3 and {i.id for i in first} < {i.id for i in more}
    assert len(described(ec2_url)) == 3

    other = await provider.launch("c5n.2xlarge", 1, "tok-b")  # a new token is a new launch
    assert len(other) == 1 and len(described(ec2_url)) == 4

    with pytest.raises(ProviderError, match="tok-a"):  # one token, one type
        await provider.launch("r5n.large", 1, "tok-a")
    with pytest.raises(NotLaunchable, match="m5.xlarge"):
        await provider.launch("m5.xlarge", 1, "tok-c")


async def test_list_sees_only_this_fleet(ec2_url: str) -> None:
    ours = make_provider("prod", endpoint_url=ec2_url)
    theirs = make_provider("staging", endpoint_url=ec2_url)
    mine = await ours.launch("t3.xlarge", 2, "tok-1")
    await theirs.launch("t3.xlarge", 1, "tok-1")  # same token, other fleet: a separate launch
    plain_client(ec2_url).run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.xlarge")  # untagged

    assert len(described(ec2_url)) == 4
    assert sorted(i.id for i in await ours.list()) == sorted(i.id for i in mine)
    assert len(await theirs.list()) == 1


# ---------------------------------------------------------------------------------------------- terminate


async def test_terminate_is_idempotent_and_list_shows_the_end(ec2_url: str) -> None:
    provider = make_provider(endpoint_url=ec2_url)
    a, b, c = await provider.launch("r5n.large", 3, "tok-1")

    await provider.terminate([a.id, b.id])
    after = {i.id: i for i in await provider.list()}
    assert after[a.id].state in (ProviderState.SHUTTING_DOWN, ProviderState.TERMINATED)
    assert after[c.id].state is ProviderState.RUNNING

    # again, mixed with an id EC2 never had and a malformed one: no error, the live one still goes
    await provider.terminate([a.id, b.id, "i-0123456789abcdef0", "bogus", c.id])
    await provider.terminate(["i-0123456789abcdef0"])
    await provider.terminate([])

    listed = {i.id: i for i in await provider.list()}  # terminated instances stay listed a while
    assert set(listed) == {a.id, b.id, c.id}
    for inst in listed.values():
        assert inst.state is ProviderState.TERMINATED and not inst.state.billed and inst.address is None
    # a launch with the old token starts afresh: terminated instances do not count towards it
    assert len(await provider.launch("r5n.large", 1, "tok-1")) == 1


# ---------------------------------------------------------------------------------------------- spot and capacity


async def test_spot_launch_is_tagged_and_listed_as_spot(ec2_url: str) -> None:
    provider = make_provider(endpoint_url=ec2_url)
    launched = await provider.launch("r5n.large", 2, "tok-spot")  # r5n.large: spot = true
    seen = described(ec2_url, [i.id for i in launched])
    assert all(i["InstanceLifecycle"] == "spot" and tags_of(i)[PURCHASE_TAG] == "spot" for i in seen.values())
    assert {i.purchase for i in await provider.list()} == {"spot"}


async def test_spot_capacity_error_falls_back_to_on_demand(ec2_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the proxy answers 500 as EC2 does; botocore would retry it
    with FaultProxy(ec2_url) as proxy:
        proxy.fail = lambda params: params.get("InstanceMarketOptions.MarketType") == "spot"
        provider = make_provider(endpoint_url=proxy.url)
        launched = await provider.launch("r5n.large", 2, "tok-1")
    assert len(proxy.refused) == 1
    seen = described(ec2_url, [i.id for i in launched])
    assert len(seen) == 2
    assert all(i.get("InstanceLifecycle") != "spot" and tags_of(i)[PURCHASE_TAG] == "on-demand" for i in seen.values())
    assert {i.purchase for i in launched} == {"on-demand"}
    assert all(o.available for o in await provider.offerings())  # the on-demand launch succeeded


async def test_capacity_error_raises_insufficient_capacity_and_backs_off(ec2_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with FaultProxy(ec2_url) as proxy:
        proxy.fail = lambda params: params.get("InstanceType") in ("r5n.large", "g4dn.xlarge")
        provider = make_provider(endpoint_url=proxy.url)
        with pytest.raises(InsufficientCapacity) as spot_type:  # spot, then on-demand: both refused
            await provider.launch("r5n.large", 1, "tok-1")
        with pytest.raises(InsufficientCapacity) as od_type:  # on-demand only
            await provider.launch("g4dn.xlarge", 1, "tok-2")
        offers = {o.type: o for o in await provider.offerings()}
        relaxed = make_provider(endpoint_url=proxy.url, capacity_backoff_s=0)
        with pytest.raises(InsufficientCapacity):
            await relaxed.launch("g4dn.xlarge", 1, "tok-3")
        relaxed_offers = {o.type: o.available for o in await relaxed.offerings()}
    assert spot_type.value.instance_type == "r5n.large" and "InsufficientInstanceCapacity" in str(spot_type.value)
    assert od_type.value.instance_type == "g4dn.xlarge"
    assert len(proxy.refused) == 4  # r5n.large twice (spot, on-demand), g4dn.xlarge once, relaxed once
    assert [p.get("InstanceMarketOptions.MarketType") for p in proxy.refused[:2]] == ["spot", None]
    assert described(ec2_url) == {}
    assert not offers["r5n.large"].available and not offers["g4dn.xlarge"].available
    assert offers["c5n.2xlarge"].available and offers["t3.xlarge"].available
    assert all(relaxed_offers.values())  # capacity_backoff_s = 0: offered again at once


async def test_other_errors_say_what_to_check(ec2_url: str) -> None:
    provider = make_provider(endpoint_url=ec2_url, subnet_id="subnet-0123456789abcdef0")
    with pytest.raises(ProviderError) as err:
        await provider.launch("t3.xlarge", 1, "tok-1")
    assert not isinstance(err.value, InsufficientCapacity)
    assert "InvalidSubnetID.NotFound" in str(err.value) and "subnet_id" in str(err.value)


async def test_offerings_prices_and_types_missing_in_the_region(ec2_url: str) -> None:
    types = {**TYPES, "huge": InstanceTypeConfig("huge", "onnxruntime", price_usd_per_hour=9.0)}
    table = {**EC2_TABLE, "endpoint_url": ec2_url, "types": {**EC2_TABLE["types"], "huge": {"instance_type": "zz9.mega"}}}
    provider = Ec2Provider(parse_ec2(table, types), "prod", types)
    offers = {o.type: o for o in await provider.offerings()}
    assert {t: o.price_usd_per_hour for t, o in offers.items()} == {t: c.price_usd_per_hour for t, c in types.items()}
    assert not offers["huge"].available
    assert all(o.available for t, o in offers.items() if t != "huge")


# ---------------------------------------------------------------------------------------------- user data


async def test_user_data_reaches_the_instance(ec2_url: str) -> None:
    provider = make_provider(endpoint_url=ec2_url)
    (inst,) = await provider.launch("c5n.2xlarge", 1, "tok-1")
    attr = plain_client(ec2_url).describe_instance_attribute(InstanceId=inst.id, Attribute="userData")
    script = base64.b64decode(attr["UserData"]["Value"]).decode()
    assert script == provider.user_data("c5n.2xlarge", "us-east-1")
    assert script.startswith("#!/bin/bash")
    assert "GRPC_PORT=8001" in script and "THREADS=8" in script and "KAIROSD_PACKAGE=kairosd==0.1.0" in script
    assert "--host 0.0.0.0 --port $${GRPC_PORT}".replace("$$", "$") in script


@pytest.mark.parametrize("type_name", ["g4dn.xlarge", "c5n.2xlarge", "t3.xlarge"])
def test_templates_render_with_every_variable_and_port(type_name: str) -> None:
    provider = make_provider()
    ts = provider.settings.types[type_name]
    template = (DEFAULT_USER_DATA_DIR / f"{'triton' if TYPES[type_name].backend == 'triton' else 'worker'}.sh.tmpl").read_text()
    values = provider._template_values(ts, "eu-west-1")
    assert set(string.Template(template).get_identifiers()) <= set(values)
    script = provider.user_data(type_name, "eu-west-1")
    assert "REGION=eu-west-1" in script and "FLEET=prod" in script
    assert "MODEL_REPOSITORY_URI=s3://kairos-test/models" in script
    for name in string.Template(template).get_identifiers():  # no placeholder left
        assert f"${name}" not in script.replace("${", "")
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
    if type_name == "g4dn.xlarge":
        assert "GRPC_PORT=8001" in script and "METRICS_PORT=8002" in script
        assert "--allow-http=true --http-port=8000" in script and "--gpus all" in script
        assert "TRITON_IMAGE=nvcr.io/nvidia/tritonserver:" in script
    else:
        assert f"GRPC_PORT={ts.grpc_port}" in script and f"THREADS={TYPES[type_name].threads}" in script
        assert "worker --model-repository" in script


def test_a_template_with_an_unknown_variable_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "odd.sh.tmpl").write_text("#!/bin/sh\necho $fleet $no_such_value\n")
    table = {**EC2_TABLE, "user_data_dir": str(tmp_path), "types": {"t3.xlarge": {"user_data": "odd"}}}
    with pytest.raises(ConfigError, match="no_such_value"):
        Ec2Provider(parse_ec2(table, TYPES), "prod", TYPES)
    table["types"] = {"t3.xlarge": {"user_data": "absent"}}
    with pytest.raises(ConfigError, match="user_data = 'absent'"):
        Ec2Provider(parse_ec2(table, TYPES), "prod", TYPES)


# ---------------------------------------------------------------------------------------------- config


def test_example_config_parses_with_the_catalogue_prices() -> None:
    raw = tomllib.loads((REPO / "configs" / "aws.toml").read_text())
    settings = parse_ec2(raw["provider"]["ec2"], raw["types"], base_dir=REPO)
    assert set(settings.types) == {"g4dn.xlarge", "c5n.2xlarge", "r5n.large", "t3.xlarge"}
    assert settings.types["c5n.2xlarge"].spot and not settings.types["t3.xlarge"].spot
    assert settings.types["g4dn.xlarge"].ami != settings.types["t3.xlarge"].ami  # a per-type value wins
    assert settings.types["t3.xlarge"].subnet_id == "subnet-0123456789abcdef0"  # inherited
    assert (settings.user_data_dir / "triton.sh.tmpl").is_file()
    catalogue = tomllib.loads((REPO / "configs" / "instance_types.toml").read_text())["types"]
    for name, t in raw["types"].items():
        assert t["price_usd_per_hour"] == catalogue[name]["price_usd_per_hour"], name
        assert t["backend"] == catalogue[name]["backend"], name
    types = {n: InstanceTypeConfig(n, t["backend"], t["price_usd_per_hour"], t["threads"]) for n, t in raw["types"].items()}
    Ec2Provider(settings, "prod", types)  # its templates render


@pytest.mark.parametrize(
    ("change", "key", "detail"),
    [
        ({"zone": "us-east-1a"}, "provider.ec2.zone", "allowed"),
        ({"region": 5}, "provider.ec2.region", "us-east-1"),
        ({"region": "Virginia"}, "provider.ec2.region", "us-east-1"),
        ({"ami": "ubuntu"}, "provider.ec2.ami", "ami-"),
        ({"endpoint_url": "localhost:5000"}, "provider.ec2.endpoint_url", "http"),
        ({"capacity_backoff_s": -1}, "provider.ec2.capacity_backoff_s", "≥ 0"),
        ({"spot": "yes"}, "provider.ec2.spot", "true or false"),
        ({"security_group_ids": "sg-0123456789abcdef0"}, "provider.ec2.security_group_ids", "list"),
        ({"security_group_ids": ["default"]}, "provider.ec2.security_group_ids[0]", "sg-"),
        ({"model_repository_uri": "/models"}, "provider.ec2.model_repository_uri", "s3://"),
        ({"types": {"t3.xlarge": {"grpc_port": 70000}}}, 'provider.ec2.types."t3.xlarge".grpc_port', "1..65535"),
        ({"types": {"t3.xlarge": {"threads": 4}}}, 'provider.ec2.types."t3.xlarge".threads', "allowed"),
        ({"types": {"p5.48xlarge": {}}}, 'provider.ec2.types."p5.48xlarge"', "defined types"),
        ({"types": {"t3.xlarge": {"spot_max_price_usd_per_hour": 0.1}}}, "spot_max_price_usd_per_hour", "spot = true"),
        ({"types": {"t3.xlarge": {"user_data": "../x"}}}, 'provider.ec2.types."t3.xlarge".user_data', "template name"),
    ],
)
def test_config_errors_name_the_key_and_what_is_allowed(change: dict[str, Any], key: str, detail: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_ec2({**EC2_TABLE, **change}, TYPES)
    assert key in str(err.value) and detail in str(err.value)


def test_missing_ami_names_the_type() -> None:
    table = {k: v for k, v in EC2_TABLE.items() if k != "ami"}
    table["types"] = {"g4dn.xlarge": {"ami": "ami-0fedcba9876543210"}, "t3.xlarge": {}}
    with pytest.raises(ConfigError, match=r'provider\.ec2\.types\."t3\.xlarge"\.ami is missing'):
        parse_ec2(table, TYPES)
    table["types"] = {"g4dn.xlarge": {"ami": "ami-0fedcba9876543210"}}
    assert parse_ec2(table, TYPES).types["g4dn.xlarge"].ami == "ami-0fedcba9876543210"


def test_defaults() -> None:
    settings = parse_ec2({"ami": AMI, "types": {"t3.xlarge": {}}}, TYPES)
    ts = settings.types["t3.xlarge"]
    assert settings.region is None and settings.endpoint_url is None and settings.capacity_backoff_s == 300.0
    assert ts.instance_type == "t3.xlarge" and ts.grpc_port == 8001 and ts.http_port is None and not ts.spot
    assert make_provider().http_port("g4dn.xlarge") == 8000 and make_provider().http_port("t3.xlarge") is None
    assert make_provider(types={"g4dn.xlarge": {"http_port": 0}}).http_port("g4dn.xlarge") is None


async def test_concurrent_launches_with_one_token_launch_once(ec2_url: str) -> None:
    provider = make_provider(endpoint_url=ec2_url)
    first, second = await asyncio.gather(provider.launch("t3.xlarge", 2, "tok-1"), provider.launch("t3.xlarge", 2, "tok-1"))
    assert sorted(i.id for i in first) == sorted(i.id for i in second) and len(described(ec2_url)) == 2
