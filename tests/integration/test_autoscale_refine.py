"""The autoscaler's Kairos+ walk inside a real `kairosd serve`: a local fleet of emulated instances
(the Kairos authors' four AWS types) planned for max throughput; once dlrm queries arrive, the one-shot
plan is refined by the walk in its child interpreter, the fleet follows the refined plan, and
/metrics and /kairos/fleet say so. The daemon stops cleanly, leaving no walk behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from kairosd.modelgen import example_inputs
from tests.integration.daemon_harness import REPO, start_daemon, write_config
from tests.integration.test_metrics import one, scrape
from tests.integration.test_serve import grpc_inputs

PRICES = {"g4dn.xlarge": 0.526, "c5n.2xlarge": 0.432, "r5n.large": 0.149, "t3.xlarge": 0.1664}
BUDGET = 1.0


def walks_of(parent: int) -> set[int]:
    """The pids of the Kairos+ walk processes (`python -m kairosd.autoscale.refine`) whose parent is `parent`."""
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"kairosd.autoscale.refine" in cmd and ppid == parent:
            out.add(int(pid))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_max_throughput_plan_is_refined_by_the_walk_and_the_fleet_follows_it(tmp_path: Path) -> None:
    types = "\n".join(f'[types."{t}"]\nbackend = "emulated"\nemulate = "{t}"\nprice_usd_per_hour = {p}\n'
                      for t, p in PRICES.items())
    path = tmp_path / "kairosd.toml"
    ports = write_config(path, fleet={}, qos_ms={"dlrm": 350.0}, types_toml=types, profiles=REPO / "profiles" / "aws",
                         extra_scheduler='admission = "deadline"', extra_toml=f"""
[emulation]
models = {{ dlrm = "rm2" }}

[autoscaler]
enabled = true
provider = "local"
fleet_name = "test-refine-{time.time_ns()}"
budget_usd_per_hour = {BUDGET}
objective = "max_throughput"
selector = "kairos_plus"
plus_time_limit_s = 20.0
period_s = 0.5
window_s = 3.0
min_queries = 20
prior_batch_median = 180.0
""")
    d = start_daemon(path, ports, timeout_s=120, wait_ready=False)
    seen: set[int] = set()  # every walk the daemon started that the test saw running
    try:
        inputs = example_inputs("dlrm", 64, seed=3)
        deadline = time.monotonic() + 120.0
        served = 0
        fleet: dict = {}
        ready: dict[str, int] = {}
        # dlrm queries all along (the observed load the plans are made for), until the refined plan is the
        # target and the fleet's ready instances are that plan
        with grpcclient.InferenceServerClient(d.grpc_url) as client:
            while time.monotonic() < deadline:
                try:
                    out = client.infer("dlrm", grpc_inputs(inputs), client_timeout=10.0)
                    assert np.asarray(out.as_numpy(out.get_response().outputs[0].name)).shape[0] == 64
                    served += 1
                except InferenceServerException:  # no instance may be ready yet: the load is what is observed
                    time.sleep(0.05)
                seen |= walks_of(d.child.pid)
                fleet = d.fleet()
                plan = fleet["plan"] or {}
                ready = {}
                for inst in fleet["instances"]:
                    if inst["state"] == "ready":
                        ready[inst["type"]] = ready.get(inst["type"], 0) + 1
                if (plan.get("reason", "").startswith("max_throughput: kairos_plus")
                        and ready == fleet["target"] == {t: n for t, n in plan["counts"].items() if n}):
                    break
        assert fleet["plan"]["reason"].startswith("max_throughput: kairos_plus"), (fleet, d.child.log_tail())
        assert ready == fleet["target"], fleet
        assert fleet["plan"]["cost_usd_per_hour"] <= BUDGET + 1e-9 and served > 0
        s = scrape(d)
        assert one(s, "kairos_planner_plans_refined_total") >= 1
        walks = one(s, "kairos_planner_refine_walks_total")
        assert walks >= 1 and one(s, "kairos_planner_refine_failures_total") == 0
        # the walk whose choice became the plan ended: it is not among the superseded ones
        assert 0 <= one(s, "kairos_planner_refine_superseded_total") <= walks - 1
        seen |= walks_of(d.child.pid)
    finally:
        rc = d.stop()
    assert rc == 0, d.child.log_tail()
    assert seen, "no walk process was seen"
    deadline = time.monotonic() + 5.0
    while any(alive(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in seen)
