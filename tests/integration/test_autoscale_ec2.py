"""The whole daemon autoscaling on EC2: `kairosd serve` as a subprocess, `[autoscaler] provider = "ec2"`
pointed at moto's EC2 server through boto3's environment, the truth read with a plain boto3 client.

The instances are launched into a moto subnet on 127.0.0.0/24 (`loopback_subnet`), so each gets a
loopback private IP, and one real `kairosd worker` listening on 0.0.0.0 answers ServerReady and
ModelReady at every such address: instances become READY as on EC2, which is what paces a scale-up by
`max_concurrent_launches` (an instance nobody answers for stays LAUNCHING, and with it every launch slot
would stay taken: the fleet would stop at `max_concurrent_launches` instances). A sampler thread
reads DescribeInstances every ~0.12 s for the whole of each test: the committed cost (Σ configured
price of the fleet's instances not `terminated`) is checked against the budget at every sample.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from kairosd.backends.process import ChildProcess, free_port, wait_ready_sync
from kairosd.providers import FLEET_TAG, TOKEN_TAG, TYPE_TAG
from tests.integration.daemon_harness import REPO, RunningDaemon, start_daemon, wait_until, write_config
from tests.integration.moto_server import CLEARED_AWS_ENV, DUMMY_AWS_ENV, loopback_subnet, moto_server, reset

FLEET = "kairos-it"
AMI = "ami-12c6146b"  # one of the images moto ships
PERIOD_S = 0.25
MAX_LAUNCHES = 2  # instances LAUNCHING at once: a 12-instance target takes ~6 periods
BUDGET = 2.5
LOW_BUDGET = 1.2
MOTO_ANSWER_S = 0.5  # a request moto received is answered within this
SLACK_S = 1.0  # scheduling noise on 2 busy cores (a reconcile, a DescribeInstances, the test's poll)

_aws = (REPO / "configs" / "aws.toml").read_text()
AWS_TYPES_TOML = _aws[_aws.index('[types."g4dn.xlarge"]'):_aws.index("[autoscaler]")]
PRICES = {t: v["price_usd_per_hour"] for t, v in tomllib.loads(_aws)["types"].items()}  # type → $/h


# ---------------------------------------------------------------------------------------------- the truth


def plain_client(url: str) -> Any:
    return boto3.client(
        "ec2", region_name="us-east-1", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def fleet_instances(client: Any) -> list[dict[str, Any]]:
    """Every instance carrying our fleet tag, terminated ones included (moto keeps listing them)."""
    out = []
    for page in client.get_paginator("describe_instances").paginate(Filters=[{"Name": f"tag:{FLEET_TAG}", "Values": [FLEET]}]):
        for r in page["Reservations"]:
            for i in r["Instances"]:
                tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                out.append({"id": i["InstanceId"], "type": tags.get(TYPE_TAG), "ec2_type": i["InstanceType"],
                            "state": i["State"]["Name"], "tags": tags})
    return out


def live(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in instances if i["state"] in ("pending", "running")]


def billed(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in instances if i["state"] != "terminated"]


def per_type(instances: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(i["type"] for i in instances))


def cost(instances: list[dict[str, Any]]) -> float:
    return round(sum(PRICES[i["type"]] for i in billed(instances)), 6)


@dataclass
class Sample:
    t: float
    committed_usd_per_hour: float
    live_per_type: dict[str, int]


@dataclass
class Sampler:
    """A thread reading DescribeInstances (its own boto3 client) every `interval_s` until stopped."""

    url: str
    interval_s: float = 0.12
    samples: list[Sample] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        client = plain_client(self.url)

        def run() -> None:
            while not self._stop.is_set():
                try:
                    found = fleet_instances(client)
                    self.samples.append(Sample(time.monotonic(), cost(found), per_type(live(found))))
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(exc)
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=run, name="ec2-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def check(self, budget: float, since: float = 0.0, until: float = float("inf")) -> None:
        window = [s for s in self.samples if since <= s.t <= until]
        assert not self.errors, self.errors
        assert len(window) >= 5, f"only {len(window)} samples"
        over = [s for s in window if s.committed_usd_per_hour > budget + 1e-9]
        assert not over, f"committed cost above the budget {budget} $/h at {len(over)} samples, first: {over[0]}"


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def worker_port() -> Iterator[int]:
    """One real KServe v2 server (the CPU worker, dlrm and ncf) on 0.0.0.0: every loopback IP reaches it."""
    port = free_port()
    argv = [sys.executable, "-m", "kairosd", "worker", "--model-repository", str(REPO / "model_repository"),
            "--host", "0.0.0.0", "--port", str(port), "--threads", "1", "--grace-s", "0"]
    child = ChildProcess(argv, name="worker").start()
    try:
        wait_ready_sync(f"127.0.0.3:{port}", 60, child, models=("dlrm", "ncf"))
        yield port
    finally:
        child.stop(5)


@dataclass
class Ec2:
    url: str
    client: Any
    subnet_id: str
    worker_port: int
    env: dict[str, str]


@pytest.fixture
def ec2(moto_url: str, worker_port: int) -> Ec2:
    """A reset moto server with a loopback subnet, and the environment a daemon reaches it through."""
    reset(moto_url)
    client = plain_client(moto_url)
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_AWS_ENV}
    env.update(DUMMY_AWS_ENV)
    env["AWS_ENDPOINT_URL_EC2"] = moto_url
    return Ec2(moto_url, client, loopback_subnet(client), worker_port, env)


def write_daemon_config(path: Path, ec2: Ec2, *, budget: float = BUDGET, terminate_on_stop: bool) -> dict[str, int]:
    """configs/aws.toml's types, profiles and QoS; short periods; instances in the loopback subnet, their
    gRPC port the worker's."""
    per_type = "\n".join(f'[provider.ec2.types."{t}"]\ngrpc_port = {ec2.worker_port}\n' for t in PRICES)
    extra = f"""
[autoscaler]
enabled = true
provider = "ec2"
fleet_name = "{FLEET}"
budget_usd_per_hour = {budget}
objective = "max_throughput"
headroom = 1.2
prior_batch_median = 180.0  # configs/aws.toml's (the Kairos batch mix)
period_s = {PERIOD_S}
up_periods = 1
down_periods = 2
max_concurrent_launches = {MAX_LAUNCHES}
startup_grace_s = 120.0
unavailable_s = 120.0
terminate_on_stop = {str(terminate_on_stop).lower()}

[provider.ec2]
ami = "{AMI}"
subnet_id = "{ec2.subnet_id}"

{per_type}
"""
    return write_config(path, fleet={}, qos_ms={"dlrm": 350.0, "ncf": 5.0}, types_toml=AWS_TYPES_TOML,
                        profiles=REPO / "profiles" / "aws", extra_toml=extra)


def start(path: Path, ports: Mapping[str, int], ec2: Ec2) -> RunningDaemon:
    log = path.with_suffix(f".{time.monotonic_ns()}.log")  # kept after a clean stop, for the assertions on it
    return start_daemon(path, ports, 60, env=ec2.env, wait_ready=False, log_path=log)


def target_of(d: RunningDaemon) -> dict[str, int]:
    target: dict[str, int] = wait_until("the daemon has a target", lambda: d.fleet()["target"], 10)
    return target


def built(ec2: Ec2, target: Mapping[str, int]) -> bool:
    return per_type(live(fleet_instances(ec2.client))) == dict(target)


def all_ready(d: RunningDaemon, n: int) -> bool:
    inst = [i for i in d.fleet()["instances"] if i["provider_state"] != "terminated"]  # EC2 lists those a while
    return len(inst) == n and all(i["state"] == "ready" for i in inst)


def log_of(d: RunningDaemon) -> str:
    assert d.child.log_path is not None
    return d.child.log_path.read_text()


@pytest.fixture
def daemons() -> Iterator[list[RunningDaemon]]:
    """Daemons a test started; whatever still runs at the end is stopped (SIGTERM, then SIGKILL). Each
    daemon's log must show no failed reconcile or action and no traceback."""
    started: list[RunningDaemon] = []
    yield started
    for d in started:
        d.child.stop(10)
    for d in started:
        log = log_of(d)
        for bad in ("Traceback", "reconcile failed", "fleet action failed", "planning the target failed"):
            assert bad not in log, f"{bad!r} in the daemon's log:\n{log[-4000:]}"


# ---------------------------------------------------------------------------------------------- tests


def test_scale_up_launches_the_plan_tagged_within_budget(ec2: Ec2, tmp_path: Path, daemons: list[RunningDaemon]) -> None:
    from kairosd import config as config_mod
    from kairosd.autoscale.target import PRIOR_SIGMA, config_planner, lognormal_pmf
    from kairosd.daemon import load_profiles
    from kairosd.planner.demand import ModelDemand

    path = tmp_path / "aws.toml"
    ports = write_daemon_config(path, ec2, terminate_on_stop=True)
    with Sampler(ec2.url) as sampler:
        t0 = time.monotonic()
        d = start(path, ports, ec2)
        daemons.append(d)
        target = target_of(d)
        n = sum(target.values())
        wait_until(f"moto holds the target {target}", lambda: built(ec2, target), 30)
        t_built = time.monotonic()
        print(f"{n} instances built {t_built - t0:.2f} s after the start (including the daemon's start-up)")
        wait_until("every instance READY", lambda: all_ready(d, n), 10)
        time.sleep(2 * PERIOD_S)  # the fleet holds: nothing more is launched

    # the target is the plan `kairosd fleet plan` shows for this config (no load yet): multi-instance, within budget
    cfg = config_mod.load(path)
    profiles = load_profiles(cfg)
    pmf = lognormal_pmf(cfg.autoscaler.prior_batch_median, PRIOR_SIGMA, profiles.max_batch)
    plan = config_planner(cfg, profiles)([ModelDemand(m, 0.0, pmf) for m in profiles.models], frozenset())
    assert target == {t: c for t, c in plan.counts.items() if c}
    assert n >= 4 and len(target) >= 2
    assert sum(PRICES[t] * c for t, c in target.items()) <= BUDGET

    # moto's instances match the target per type, tagged; nothing else was ever launched
    found = fleet_instances(ec2.client)
    assert per_type(live(found)) == target and len(found) == n
    tokens: Counter[str] = Counter()
    for i in found:
        assert i["tags"][FLEET_TAG] == FLEET
        assert i["tags"][TYPE_TAG] == i["type"] == i["ec2_type"]
        assert i["tags"][TOKEN_TAG].startswith(f"{FLEET}.{i['type']}.")
        tokens[i["tags"][TOKEN_TAG]] += 1
    assert max(tokens.values()) <= MAX_LAUNCHES  # one token per Launch, each within max_concurrent_launches
    assert len(tokens) >= -(-n // MAX_LAUNCHES)

    # the scale-up took several periods (max_concurrent_launches), and was seen partial
    partial = [s for s in sampler.samples if 0 < sum(s.live_per_type.values()) < n]
    assert len(partial) >= 3
    assert t_built - t0 > (n // MAX_LAUNCHES - 1) * PERIOD_S

    # the daemon's view agrees: /kairos/fleet and the metrics
    status = d.fleet()
    assert {i["id"] for i in status["instances"]} == {i["id"] for i in found}
    assert status["budget_usd_per_hour"] == BUDGET
    assert status["committed_usd_per_hour"] == pytest.approx(cost(found))
    assert d.metric_values("kairos_fleet_target_instances") == {f'{{type="{t}"}}': float(c) for t, c in target.items()}
    assert d.metric_values("kairos_fleet_committed_usd_per_hour")[""] == pytest.approx(cost(found))
    assert d.metric_values("kairos_fleet_instances_launched_total")[""] == n
    sampler.check(BUDGET)


def test_kill_9_mid_scale_up_then_restart_adopts_without_duplicates(
    ec2: Ec2, tmp_path: Path, daemons: list[RunningDaemon]
) -> None:
    path = tmp_path / "aws.toml"
    ports = write_daemon_config(path, ec2, terminate_on_stop=False)
    with Sampler(ec2.url) as sampler:
        d1 = start(path, ports, ec2)
        daemons.append(d1)
        target = target_of(d1)
        n = sum(target.values())
        wait_until("the first launches", lambda: len(live(fleet_instances(ec2.client))) >= MAX_LAUNCHES, 10, 0.02)
        d1.child.send_signal(signal.SIGKILL)
        assert d1.child.wait(10) == -signal.SIGKILL
        time.sleep(MOTO_ANSWER_S)  # a RunInstances the daemon had sent is answered by now
        before = fleet_instances(ec2.client)
        assert before == live(before) and 0 < len(before) < n, f"not mid scale-up: {per_type(before)} of {target}"

        d2 = start(path, ports, ec2)
        daemons.append(d2)
        # the restarted daemon's first reconcile (before it listens) adopted every instance already there
        first = {i["id"] for i in d2.fleet()["instances"]}
        assert {i["id"] for i in before} <= first
        assert target_of(d2) == target
        wait_until(f"moto holds the target {target}", lambda: built(ec2, target), 30)
        wait_until("every instance READY", lambda: all_ready(d2, n), 10)
        time.sleep(3 * PERIOD_S)
        after = fleet_instances(ec2.client)
        status2 = d2.fleet()

        # stopping with terminate_on_stop = false leaves the fleet running
        assert d2.stop(20) == 0
        left = fleet_instances(ec2.client)

    assert per_type(live(after)) == target
    assert len(after) == n, "an instance was launched twice (or one leaked)"  # terminated ones included
    assert {i["id"] for i in before} <= {i["id"] for i in after}
    # the restarted daemon's launches carry tokens of its own (a reused token would return the old instances)
    old_tokens = {i["tags"][TOKEN_TAG] for i in before}
    new_tokens = {i["tags"][TOKEN_TAG] for i in after if i["id"] not in {b["id"] for b in before}}
    assert new_tokens and not old_tokens & new_tokens
    assert {i["id"] for i in status2["instances"]} == {i["id"] for i in after}
    log = log_of(d2)
    for i in before:
        assert f"instance adopted instance={i['id']}" in log
    assert "terminating instances" not in log
    assert left == live(left) and {i["id"] for i in left} == {i["id"] for i in after}
    sampler.check(BUDGET)


def test_instance_terminated_behind_kairosds_back_is_replaced_within_two_periods(
    ec2: Ec2, tmp_path: Path, daemons: list[RunningDaemon]
) -> None:
    path = tmp_path / "aws.toml"
    ports = write_daemon_config(path, ec2, terminate_on_stop=True)
    with Sampler(ec2.url) as sampler:
        d = start(path, ports, ec2)
        daemons.append(d)
        target = target_of(d)
        n = sum(target.values())
        wait_until(f"moto holds the target {target}", lambda: built(ec2, target), 30)
        wait_until("every instance READY", lambda: all_ready(d, n), 10)
        old = {i["id"]: i for i in live(fleet_instances(ec2.client))}
        victim = sorted(i for i, v in old.items() if v["type"] == "r5n.large")[0]

        ec2.client.terminate_instances(InstanceIds=[victim])
        t0 = time.monotonic()
        new = wait_until("a replacement r5n.large", lambda: [
            i for i in live(fleet_instances(ec2.client)) if i["id"] not in old and i["type"] == "r5n.large"
        ], 2 * PERIOD_S + 4 * SLACK_S, 0.02)
        took_s = time.monotonic() - t0
        wait_until("the replacement READY and the victim forgotten", lambda: all_ready(d, n), 10)
        time.sleep(2 * PERIOD_S)
        found = fleet_instances(ec2.client)
        status = d.fleet()

    print(f"replaced after {took_s:.2f} s")
    assert took_s <= 2 * PERIOD_S + SLACK_S, f"replaced after {took_s:.2f} s (period {PERIOD_S} s)"
    assert len(new) == 1 and new[0]["id"] != victim and new[0]["tags"][FLEET_TAG] == FLEET
    assert per_type(live(found)) == target and len(found) == n + 1  # the victim (terminated) + the fleet
    assert [i["state"] for i in found if i["id"] == victim] == ["terminated"]
    assert victim not in {i["id"] for i in status["instances"] if i["state"] != "terminated"}
    assert new[0]["id"] in {i["id"] for i in status["instances"]}
    assert d.metric_values("kairos_fleet_instances_vanished_total")[""] == 1
    assert f"instance vanished instance={victim}" in log_of(d)
    sampler.check(BUDGET)


def test_restart_with_a_lower_budget_scales_in_at_once(ec2: Ec2, tmp_path: Path, daemons: list[RunningDaemon]) -> None:
    high = tmp_path / "high.toml"
    ports = write_daemon_config(high, ec2, terminate_on_stop=False)
    with Sampler(ec2.url) as sampler:
        d1 = start(high, ports, ec2)
        daemons.append(d1)
        target = target_of(d1)
        n = sum(target.values())
        wait_until(f"moto holds the target {target}", lambda: built(ec2, target), 30)
        wait_until("every instance READY", lambda: all_ready(d1, n), 10)
        assert d1.stop(20) == 0
        t_stopped = time.monotonic()
        before = {i["id"]: i for i in live(fleet_instances(ec2.client))}
        assert len(before) == n and cost(list(before.values())) > LOW_BUDGET

        # the restart, with a lower budget: the adopted fleet costs more than it
        low = tmp_path / "low.toml"
        low_ports = write_daemon_config(low, ec2, budget=LOW_BUDGET, terminate_on_stop=True)
        d2 = start(low, low_ports, ec2)
        daemons.append(d2)
        t_up = time.monotonic()  # its first reconcile ran before it listened
        new_target = target_of(d2)
        assert sum(PRICES[t] * c for t, c in new_target.items()) <= LOW_BUDGET
        assert all(new_target.get(t, 0) <= c for t, c in target.items()) and new_target != target
        fits = wait_until(f"committed ≤ {LOW_BUDGET}", lambda: cost(fleet_instances(ec2.client)) <= LOW_BUDGET,
                          4 * PERIOD_S + 4 * SLACK_S, 0.02)
        took_s = time.monotonic() - t_up
        # it stays within the new budget, and nothing is launched: four periods, and enough samples to say so
        time.sleep(4 * PERIOD_S)
        wait_until("the sampler's samples after the scale-in",
                   lambda: sum(s.t >= t_up + took_s for s in sampler.samples) >= 8, 30, 0.05)
        found = fleet_instances(ec2.client)
        status = d2.fleet()
    assert fits
    print(f"within the new budget {took_s:.2f} s after the restarted daemon listened")
    assert took_s <= 2 * PERIOD_S + SLACK_S, f"within the new budget after {took_s:.2f} s"
    survivors = live(found)
    assert per_type(survivors) == new_target
    assert {i["id"] for i in survivors} <= set(before) and len(found) == n  # scaled in, nothing launched
    assert cost(found) <= LOW_BUDGET and status["committed_usd_per_hour"] <= LOW_BUDGET
    assert {i["id"] for i in status["instances"] if i["state"] != "terminated"} == {i["id"] for i in survivors}

    # scaled in at once: every adopted member is LAUNCHING until it answers ServerReady, and the surplus
    # is taken out in the first period: terminated, or drained when its readiness probe answered during
    # that reconcile (it is READY by the time the action applies), then terminated once idle
    log = log_of(d2)
    gone = sorted(set(before) - {i["id"] for i in survivors})
    assert len(gone) == n - sum(new_target.values())
    for i in gone:
        assert f"terminate instance={i} " in log
    assert "costs more than the budget" in log
    # ... decided by its first reconcile, which runs before the front ends listen
    listening = log.index("HTTP front end listening")
    first_action = {i: min(log.find(f"{kind} instance={i} ") for kind in ("terminate", "drain")
                           if f"{kind} instance={i} " in log) for i in gone}
    assert all(at < listening for at in first_action.values()), first_action
    sampler.check(BUDGET, until=t_stopped + 60)
    sampler.check(LOW_BUDGET, since=t_up + took_s)


def test_sigterm_with_terminate_on_stop_terminates_the_fleet(ec2: Ec2, tmp_path: Path, daemons: list[RunningDaemon]) -> None:
    path = tmp_path / "aws.toml"
    ports = write_daemon_config(path, ec2, terminate_on_stop=True)
    with Sampler(ec2.url) as sampler:
        d = start(path, ports, ec2)
        daemons.append(d)
        target = target_of(d)
        wait_until(f"moto holds the target {target}", lambda: built(ec2, target), 30)
        ids = {i["id"] for i in fleet_instances(ec2.client)}
        assert d.stop(20) == 0
        wait_until("every instance terminated", lambda: not billed(fleet_instances(ec2.client)), 5)
        found = fleet_instances(ec2.client)
    assert {i["id"] for i in found} == ids
    assert len(found) == sum(target.values())
    assert "(daemon stopping)" in log_of(d)
    sampler.check(BUDGET)
