"""Child processes for local instances: free ports, start, wait until the KServe v2 server is ready, stop."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from kairosd.errors import Unavailable

READY_POLL_S = 0.02  # how often wait_ready asks ServerReady while a server starts
# gRPC waits ~1 s (then longer) before reconnecting after a refused connection; a starting server
# is only worth polling with short backoffs.
FAST_RECONNECT_ARGS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
]
DEFAULT_GRACE_S = 10.0  # SIGTERM -> SIGKILL
LEFTOVER_WAIT_S = 2.0  # after the child exits, how long its helpers get to exit on their own
KEPT_TAIL_CHARS = 256_000  # what log_tail() can still show after a clean stop removed a temporary log
# set by ChildProcess in the child's environment: the pid whose death the child should not outlive
PARENT_PID_ENV = "KAIROSD_PARENT_PID"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


# Ports handed out come from below the kernel's ephemeral range: an outgoing connection takes a local
# port from that range, so a port picked there (bind to 0) can be taken by any connect() between the
# pick and the listener's bind.
PORT_FLOOR = 20000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def reserve_ports(ports: Iterable[int]) -> None:
    """Never hand these ports out from `free_port` in this process: the daemon's own client and admin
    ports, which it binds only after its static fleet is up."""
    _handed_out.update(p for p in ports if p)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, below the ephemeral range (so no outgoing connection takes it) and
    not handed out before by this process. Another process may still bind it before you do."""
    low = _ephemeral_low()
    if low - PORT_FLOOR >= 1000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(PORT_FLOOR, low)
            if port not in _handed_out and _bindable(host, port):
                _handed_out.add(port)
                return port
    for _ in range(1000):  # the kernel's choice in the ephemeral range, never one handed out before
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError(f"no free TCP port on {host} that this process has not handed out already")


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> bool:
    """In a child started by `ChildProcess`: receive `sig` when the parent dies (Linux PR_SET_PDEATHSIG),
    so an instance never outlives a daemon that was SIGKILLed or crashed; exits at once if the parent is
    already gone. Linux sends it when the *thread* that started the child ends: start children from a
    long-lived thread (the daemon starts them on its event-loop thread). Returns whether the signal was
    armed (False outside Linux or without the variable)."""
    want = os.environ.get(PARENT_PID_ENV)
    if not want or not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != int(want):  # the parent died before the signal was armed
        raise SystemExit(f"parent process {want} is gone; exiting")
    return True


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`, read from /proc (Linux)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != b"Z":
            pids.append(int(entry.name))
    return pids


def kairosd_argv(*args: str) -> list[str]:
    """The command line that runs `kairosd ARGS...` with this interpreter."""
    return [sys.executable, "-m", "kairosd", *args]


class ChildProcess:
    """One child process in its own session (process group), its output in a log file.

    `stop()` sends SIGTERM to the child, waits `grace_s`, then SIGKILLs the whole group, so helpers the
    child started (tritonserver, Python backend stubs) never outlive it. A kairosd child that calls
    `die_with_parent()` also gets its signal (SIGTERM unless it arms another) if this process dies without
    stopping it (SIGKILL, crash). Without `log_path` the output goes to a temporary file, which a clean
    stop (exit code 0, nothing left behind) deletes, keeping its tail for `log_tail()`; after any other
    ending the file stays for a post-mortem.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "",
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name or Path(self.argv[0]).name
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._log_path = Path(log_path) if log_path is not None else None
        self._log_is_temporary = log_path is None
        self._kept_tail: str | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self.leftover_pids: list[int] = []  # helpers still alive after the child exited, which stop() killed

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has exited (negative: killed by that signal), else None."""
        return self._popen.poll() if self._popen else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self) -> ChildProcess:
        """Spawn the child (stdout and stderr go to `log_path`, a temporary file unless given)."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name}: already started (pid {self._popen.pid})")
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"kairosd-{self.name}-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        env = dict(self.env if self.env is not None else os.environ)
        env[PARENT_PID_ENV] = str(os.getpid())  # for die_with_parent() in the child
        with open(self._log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,  # own process group: stop() can reach grandchildren
            )
        return self

    def log_tail(self, max_chars: int = 4000) -> str:
        """The last `max_chars` characters the child wrote (stdout and stderr)."""
        if self._kept_tail is not None:
            return self._kept_tail[-max_chars:]
        if self._log_path is None or not self._log_path.exists():
            return ""
        with open(self._log_path, "rb") as f:
            f.seek(max(0, self._log_path.stat().st_size - max_chars))
            return f.read().decode("utf-8", errors="replace")

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the child alone (not its group); a no-op once it has exited."""
        if self._popen is not None:
            self._signal(sig)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait up to `timeout_s` (None: forever) for the child to exit; its exit code, or None if it still runs."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = DEFAULT_GRACE_S) -> int | None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL the group; returns the exit code (None if never started)."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self._popen.wait()
        self._reap_group()
        if (
            self._log_is_temporary
            and self._popen.returncode == 0
            and not self.leftover_pids
            and self._kept_tail is None
        ):
            self._kept_tail = self.log_tail(KEPT_TAIL_CHARS)
            assert self._log_path is not None
            self._log_path.unlink(missing_ok=True)
        return self._popen.returncode

    async def stop_async(self, grace_s: float = DEFAULT_GRACE_S) -> int | None:
        """`stop()` without blocking the event loop."""
        return await asyncio.to_thread(self.stop, grace_s)

    def _signal(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        try:
            self._popen.send_signal(sig)
        except ProcessLookupError:
            pass

    def _kill_group(self) -> None:
        assert self._popen is not None
        try:
            os.killpg(self._popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap_group(self) -> None:
        """After the child exited: give its helpers LEFTOVER_WAIT_S to exit, then SIGKILL the rest."""
        assert self._popen is not None
        deadline = time.monotonic() + LEFTOVER_WAIT_S
        while (pids := group_pids(self._popen.pid)) and time.monotonic() < deadline:
            time.sleep(READY_POLL_S)
        if pids:
            self.leftover_pids = pids
            self._kill_group()

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ChildProcess({self.name!r}, pid={self.pid}, returncode={self.returncode})"


async def wait_ready(url: str, timeout_s: float, child: ChildProcess | None = None, models: Sequence[str] = ()) -> None:
    """Poll gRPC ServerReady (and ModelReady of each of `models`) at `url` ("host:port") until all are true.

    Raises Unavailable on timeout or as soon as `child` exits. Pass `models` for a PyTriton server: it
    reports ServerReady before its models are loaded (they are loaded through the repository API).
    """
    import tritonclient.grpc.aio as grpcclient  # here, not at import time: it takes ~0.2 s

    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    client = grpcclient.InferenceServerClient(url, channel_args=FAST_RECONNECT_ARGS)
    try:
        while True:
            if child is not None and child.returncode is not None:
                raise Unavailable(
                    f"{child.name} exited with code {child.returncode} before {url} was ready; its output:\n"
                    + child.log_tail()
                )
            try:
                rpc_timeout_s = max(0.1, min(1.0, deadline - time.monotonic()))
                if not await client.is_server_ready(client_timeout=rpc_timeout_s):
                    last_error = "ServerReady is false"
                else:
                    for model in models:
                        if not await client.is_model_ready(model, client_timeout=rpc_timeout_s):
                            last_error = f"model {model!r} is not ready"
                            break
                    else:
                        return
            except Exception as exc:  # connection refused, deadline exceeded: the server is still starting
                last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if time.monotonic() >= deadline:
                tail = f"; its output:\n{child.log_tail()}" if child is not None else ""
                raise Unavailable(f"{url} not ready after {timeout_s:.1f} s ({last_error}){tail}")
            await asyncio.sleep(READY_POLL_S)
    finally:
        await client.close()


def wait_ready_sync(url: str, timeout_s: float, child: ChildProcess | None = None, models: Sequence[str] = ()) -> None:
    """`wait_ready` for code without an event loop (fixtures, scripts)."""
    asyncio.run(wait_ready(url, timeout_s, child, models))
