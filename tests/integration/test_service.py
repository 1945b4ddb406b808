"""kairosd as a systemd service: a real `kairosd serve` with a real AF_UNIX datagram socket as its
$NOTIFY_SOCKET (READY after the front ends listen, WATCHDOG every half of $WATCHDOG_USEC,
RELOADING + MONOTONIC_USEC / READY around a SIGHUP, STOPPING at SIGTERM); a reload under load from a
real gRPC client changes a QoS target and the budget live with no query lost; a reload that needs a
restart, and an invalid file, change nothing; SIGTERM under load answers every query the daemon
holds and exits 0 with no instance left; JSON logs with one line per lifecycle event and no secret;
the unit file's exposure rating."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from kairosd.backends.process import ChildProcess, free_port
from kairosd.modelgen import example_inputs
from tests.integration.daemon_harness import REPO, write_config
from tests.integration.test_serve import _children, grpc_inputs, reference

# bursts far past capacity on purpose (these tests are about losing nothing): admission against the
# deadline only, so every query is served or expires (tests/integration/test_backend_faults.py and
# test_overload.py test the default, admission "qos")
DEADLINE_ADMISSION = 'admission = "deadline"'

UNIT = REPO / "systemd" / "kairosd.service"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"

TYPES = """
[types.ort-1t]
backend = "onnxruntime"
threads = 1
price_usd_per_hour = 0.05
"""

AUTOSCALER = """
[autoscaler]
enabled = true
provider = "local"
fleet_name = "test-service"
budget_usd_per_hour = 0.15
objective = "min_cost"
period_s = 0.5
window_s = 3.0
min_queries = 50
prior_batch_median = 64.0
"""


# ---- the unit file --------------------------------------------------------------------------------------------

def test_unit_file_is_notify_with_reload_watchdog_and_a_dedicated_user() -> None:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    assert keys["Type"] == ["notify"] and keys["NotifyAccess"] == ["main"]
    assert keys["ExecStart"][0].endswith("kairosd serve --config /etc/kairosd/kairosd.toml")
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["Restart"] == ["on-failure"] and keys["WatchdogSec"] and keys["StateDirectory"] == ["kairosd"]
    assert keys["DynamicUser"] == ["yes"] and keys["User"] == ["kairosd"]
    assert keys["EnvironmentFile"] == ["-/etc/kairosd/aws.env"]
    assert keys["KillMode"] == ["mixed"]  # SIGTERM to the daemon alone: it drains, then stops its instances


def test_unit_file_exposure_is_at_most_2() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package `systemd`)")
    out = subprocess.run([tool, "security", "--offline=true", str(UNIT)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for kairosd\.service: ([\d.]+)", out.stdout + out.stderr)
    assert m is not None, out.stdout + out.stderr
    assert float(m.group(1)) <= 2.0, out.stdout


# ---- the notify protocol with a real daemon -------------------------------------------------------------------

class NotifySocket(threading.Thread):
    """Binds an AF_UNIX datagram socket (what systemd does for a Type=notify service) and records every
    datagram with its arrival time (time.monotonic)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def close(self) -> None:
        self._done.set()
        self.join(2)
        self.sock.close()

    def wait(self, pred: Callable[[dict[str, str]], bool], after: int = 0, timeout_s: float = 30.0) -> int:
        """Index of the first message at or after index `after` that satisfies `pred`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i in range(after, len(self.messages)):
                if pred(self.messages[i][1]):
                    return i
            time.sleep(0.01)
        raise AssertionError(f"no such notification within {timeout_s} s; got {[m for _, m in self.messages[after:]]}")

    def watchdog_times(self, t0: float, t1: float) -> list[float]:
        return [t for t, m in self.messages if m.get("WATCHDOG") == "1" and t0 <= t <= t1]


def fleet(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/kairos/fleet", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def qos_metric_s(metrics_port: int, model: str) -> float:
    """kairos_qos_seconds{model=...}: the QoS target the scheduler holds."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'^kairos_qos_seconds{{model="{model}"}} (\S+)$', text, re.MULTILINE)
    assert m is not None, text[:2000]
    return float(m.group(1))


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def json_lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def msgs(log: Path, prefix: str) -> list[str]:
    return [o["msg"] for o in json_lines(log) if o["msg"].startswith(prefix)]


def wait_log(log: Path, prefix: str, count: int = 1, timeout_s: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = msgs(log, prefix)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {count}× {prefix!r} in the log:\n{log.read_text()[-3000:]}")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    listener.start()
    yield listener
    listener.close()


async def load(grpc_url: str, n: int, concurrency: int, batch: int = 32,
               during: Callable[[int, int], None] | None = None) -> list[object]:
    """`n` dlrm queries, at most `concurrency` at once; `during(k, out)` is called after each answer, with k
    the answers so far and `out` the queries sent and not answered yet."""
    inputs = example_inputs("dlrm", batch, seed=11)
    client = grpcaio.InferenceServerClient(grpc_url)
    sem = asyncio.Semaphore(concurrency)
    answered = sent = 0

    async def one() -> object:
        nonlocal answered, sent
        async with sem:
            request = grpc_inputs(inputs, grpcaio)
            sent += 1
            try:
                return await client.infer("dlrm", request, client_timeout=30)
            finally:
                answered += 1
                if during is not None:
                    during(answered, sent - answered)

    try:
        return list(await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True))
    finally:
        await client.close()


def check_answers(results: list[object], batch: int = 32) -> None:
    expected = reference("dlrm", example_inputs("dlrm", batch, seed=11))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, [str(e) for e in errors[:3]]
    for r in results:
        np.testing.assert_allclose(r.as_numpy("click_probability"), expected, rtol=1e-5, atol=1e-6)  # type: ignore[attr-defined]


@pytest.mark.alone  # SIGTERM must find queries held: the load must keep pace with the signal
def test_notify_reload_and_stop_under_load(tmp_path: Path, notify: NotifySocket) -> None:
    path = tmp_path / "kairosd.toml"
    ports = write_config(path, fleet={}, qos_ms={"dlrm": 25.0, "ncf": 10.0}, types_toml=TYPES, extra_toml=AUTOSCALER,
                         extra_scheduler=DEADLINE_ADMISSION)
    original = path.read_text()
    log = tmp_path / "kairosd.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": KEY_ID}
    child = ChildProcess([sys.executable, "-m", "kairosd", "--log-format", "json", "serve", "--config", str(path)],
                         name="kairosd-service", env=env, log_path=log).start()
    grpc_url, admin = f"127.0.0.1:{ports['grpc']}", f"127.0.0.1:{ports['metrics']}"
    try:
        # READY=1 once the front ends listen
        ready = notify.wait(lambda m: m.get("READY") == "1", timeout_s=60)
        assert listening(ports["grpc"]) and listening(ports["http"])
        assert "STATUS" in notify.messages[ready][1]
        assert not any(m.get("READY") for _, m in notify.messages[:ready])
        t_ready = notify.messages[ready][0]

        # WATCHDOG=1 every half of WATCHDOG_USEC (1 s → 0.5 s)
        deadline = time.monotonic() + 30
        while not any(i["state"] == "ready" for i in fleet(admin)["instances"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(max(t_ready + 2.2 - time.monotonic(), 0))
        pings = notify.watchdog_times(t_ready, t_ready + 2.2)
        gaps = np.diff(pings)
        assert len(pings) >= 4 and 0.4 <= float(np.mean(gaps)) <= 0.65 and float(np.max(gaps)) < 0.9, gaps

        # SIGHUP under load: QoS target and budget change live, no query lost, RELOADING/READY around it
        status = fleet(admin)
        assert status["qos_ms"]["dlrm"] == 25.0 and status["budget_usd_per_hour"] == 0.15
        assert qos_metric_s(ports["metrics"], "dlrm") == pytest.approx(0.025)
        path.write_text(original.replace("dlrm = 25.0", "dlrm = 40.0").replace("budget_usd_per_hour = 0.15",
                                                                                "budget_usd_per_hour = 0.10"))
        marks: dict[str, Any] = {}

        def hup_when(k: int, _out: int) -> None:
            if k == 60:  # queries are queued and in flight
                marks["before"] = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
                marks["index"] = len(notify.messages)
                os.kill(child.pid or 0, signal.SIGHUP)

        results = asyncio.run(load(grpc_url, 300, 24, during=hup_when))
        check_answers(results)
        reloading = notify.wait(lambda m: m.get("RELOADING") == "1", after=marks["index"])
        msg = notify.messages[reloading][1]
        assert marks["before"] <= int(msg["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify.wait(lambda m: m.get("READY") == "1", after=reloading + 1)
        applied = wait_log(log, "reload applied")
        assert "autoscaler.budget_usd_per_hour" in applied[0] and "models.qos_ms.dlrm" in applied[0], applied
        status = fleet(admin)
        assert status["qos_ms"]["dlrm"] == 40.0 and status["budget_usd_per_hour"] == 0.10 and status["reloads_applied"] == 1
        assert qos_metric_s(ports["metrics"], "dlrm") == pytest.approx(0.040)  # the scheduler's own target
        deadline = time.monotonic() + 10
        while fleet(admin)["committed_usd_per_hour"] > 0.10 + 1e-9 and time.monotonic() < deadline:
            time.sleep(0.1)  # instances above the new budget are drained and terminated
        assert fleet(admin)["committed_usd_per_hour"] <= 0.10 + 1e-9

        # a change that needs a restart: refused with one line naming the key; the old port keeps serving
        new_port = free_port()
        changed = path.read_text()
        path.write_text(changed.replace(f"grpc_port = {ports['grpc']}", f"grpc_port = {new_port}"))
        index = len(notify.messages)
        os.kill(child.pid or 0, signal.SIGHUP)
        reloading = notify.wait(lambda m: m.get("RELOADING") == "1", after=index)
        notify.wait(lambda m: m.get("READY") == "1", after=reloading + 1)
        refused = wait_log(log, "reload refused")
        assert len(refused) == 1 and f"server.grpc_port: {ports['grpc']} → {new_port}" in refused[0], refused
        check_answers(asyncio.run(load(grpc_url, 20, 4)))
        assert not listening(new_port)
        assert fleet(admin)["reloads_applied"] == 1

        # an invalid file changes nothing
        path.write_text(changed.replace('policy = "kairos"', 'policy = "kairos"\ntick_ms = 0'))
        os.kill(child.pid or 0, signal.SIGHUP)
        failed = wait_log(log, "reload failed")
        assert "scheduler.tick_ms = 0.0: must be > 0" in failed[0] and "keeping the current settings" in failed[0]
        status = fleet(admin)
        assert status["qos_ms"]["dlrm"] == 40.0 and status["budget_usd_per_hour"] == 0.10 and status["reloads_applied"] == 1
        assert SECRET not in json.dumps(status) and KEY_ID not in json.dumps(status)

        # SIGTERM under load: every query the daemon holds is answered; exit 0; no instance left; STOPPING=1
        instances = _children(child.pid or 0)
        assert instances
        index = len(notify.messages)

        # SIGTERM once 10 are answered and 20 more are out: a slowed client issues its calls no faster than
        # the daemon answers them, so a count of answers alone can find nothing held
        def term_when(k: int, out: int) -> None:
            if k >= 10 and out >= 20 and not terms:
                terms.append(k)
                os.kill(child.pid or 0, signal.SIGTERM)

        terms: list[int] = []
        results = asyncio.run(load(grpc_url, 300, 300, during=term_when))
        assert terms, "the client never had 20 queries out after 10 answers"
        assert child.wait(60) == 0, child.log_tail()
        notify.wait(lambda m: m.get("STOPPING") == "1", after=index, timeout_s=5)
        draining = wait_log(log, "draining")
        held = sum(int(v) for v in re.findall(r"(?:queued|in_flight)=(\d+)", draining[0]))
        ok = [r for r in results if not isinstance(r, BaseException)]
        # queries the client was still sending after SIGTERM were not accepted: refused UNAVAILABLE
        # ("shutting down"), or CANCELLED by the gRPC server when their bytes were still arriving as the
        # front end closed after the drain; never a timeout, never a hang
        refused_late = [r for r in results if isinstance(r, InferenceServerException)
                        and ("shutting down" in str(r) or r.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"))]
        assert held > 0, draining  # the stop really happened under load
        # every query the daemon held at SIGTERM was answered (plus the 10 or more answered before it)
        assert len(ok) >= held + 10 and "drain timed out" not in log.read_text()
        assert len(ok) + len(refused_late) == len(results), \
            [str(r) for r in results if isinstance(r, BaseException) and r not in refused_late][:3]
        check_answers(ok)
        time.sleep(0.2)
        assert not [p for p in instances if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]

        # logs: JSON, one line per lifecycle event and fleet action, no secret anywhere
        text = log.read_text()
        assert SECRET not in text and KEY_ID not in text
        for event in ("starting", "ready", "reload requested", "reload applied", "reload refused", "reload failed",
                      "stop requested", "stopping", "draining", "stopped", "launch type=ort-1t"):
            assert msgs(log, event), event
        lines = json_lines(log)
        assert all({"ts", "level", "logger", "msg"} <= set(o) for o in lines)
        ready_line = next(o for o in lines if o["msg"].startswith("ready "))
        assert ready_line["grpc"] == grpc_url and ready_line["logger"] == "kairosd.daemon"
    finally:
        child.stop(10)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _status(exc: BaseException) -> str:
    status = exc.status() if isinstance(exc, InferenceServerException) else None
    return str(status)


def test_drain_timeout_answers_the_rest_unavailable_and_exits_0(tmp_path: Path) -> None:
    """[server] drain_timeout_s bounds the drain: queries still queued then are answered UNAVAILABLE (never
    dropped), the ones answered before are correct, and the daemon exits 0 without its worker."""
    path = tmp_path / "kairosd.toml"
    ports = write_config(path, fleet={"ort-1t": 1}, qos_ms={"dlrm": 25.0, "ncf": 10.0}, types_toml=TYPES,
                         extra_scheduler=DEADLINE_ADMISSION)
    path.write_text(path.read_text().replace("[scheduler]", "[scheduler]\ndefault_timeout_s = 60", 1)
                    .replace("max_request_bytes", "drain_timeout_s = 0.1\nmax_request_bytes", 1))
    log = tmp_path / "kairosd.log"
    child = ChildProcess([sys.executable, "-m", "kairosd", "serve", "--config", str(path)], name="kairosd-drain",
                         log_path=log).start()
    try:
        from kairosd.backends.process import wait_ready_sync

        wait_ready_sync(f"127.0.0.1:{ports['grpc']}", 60, child)
        workers = _children(child.pid or 0)
        t_term: list[float] = []

        # SIGTERM after 20 answers (~0.2 s of service): the client, which serializes 120 batch-1024 requests,
        # has sent tens more by then; after 3 it had sent as few as 8, whose 88 ms of service fit the drain
        def term_when(k: int, _out: int) -> None:
            if k == 20:
                t_term.append(time.monotonic())
                os.kill(child.pid or 0, signal.SIGTERM)

        # batch 1024: ~11 ms each on a 1-thread worker, so what the daemon holds at SIGTERM outlasts 0.1 s
        results = asyncio.run(load(f"127.0.0.1:{ports['grpc']}", 120, 120, batch=1024, during=term_when))
        assert child.wait(30) == 0, child.log_tail()
        assert time.monotonic() - t_term[0] < 15
        ok = [r for r in results if not isinstance(r, BaseException)]
        stopped = [r for r in results if isinstance(r, InferenceServerException) and "UNAVAILABLE" in str(r.status())]
        others = [r for r in results if isinstance(r, BaseException) and not any(r is x for x in stopped)]
        assert not others, (len(others), sorted({f"{type(r).__name__} {_status(r)}: {str(r)[:160]}" for r in others})[:5],
                            log.read_text()[-3000:])
        assert ok and stopped, (len(ok), len(stopped))
        check_answers(ok, batch=1024)
        assert "drain timed out after 0.1 s" in log.read_text()
        time.sleep(0.2)
        assert not [p for p in workers if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
    finally:
        child.stop(10)
