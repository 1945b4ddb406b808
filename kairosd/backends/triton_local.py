"""A real Triton server on this machine (via PyTriton) serving the repository's ONNX models through ONNX Runtime."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import MutableMapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kairosd.errors import ConfigError, Unavailable
from kairosd.repository import ModelSpec, load_repository

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 5.0
READY_POLL_S = 0.02
STARTUP_TIMEOUT_S = 120.0
STOP_DURING_START_WAIT_S = 10.0  # a stop request during startup waits this long for the start to finish
# the parent-death signal `kairosd triton` arms when a daemon starts it: set apart from SIGTERM (a stop the
# daemon asks for, which gives in-flight queries the grace) because once the daemon is gone nobody waits
# for an answer, and tritonserver is killed at once
PARENT_DIED_SIGNAL = signal.SIGUSR1
# PyTriton restricts these endpoints to holders of a random token by default; we leave "statistics"
# open so the profiler can read Triton's per-model queue/compute times.
RESTRICTED_ENDPOINTS = ["shared-memory", "model-repository", "trace", "logging"]


def libpython_dir() -> str:
    """The directory holding this interpreter's libpython (the Python backend stub must load that one)."""
    return str(sysconfig.get_config_var("LIBDIR"))


def ensure_libpython_on_library_path(env: MutableMapping[str, str] = os.environ) -> bool:
    """Put `libpython_dir()` first on LD_LIBRARY_PATH in `env`; returns True if it had to be added.

    tritonserver and its Python backend stubs are child processes started with a copy of os.environ,
    so setting it here, before Triton starts, is enough: this process itself never needs the path
    (no re-exec). Without it the stub loads the system's libpython3.11, and model load fails with
    "'_thread.RLock' object has no attribute '_recursion_count'" (or cannot import numpy).
    """
    libdir = libpython_dir()
    current = env.get("LD_LIBRARY_PATH", "")
    if libdir in current.split(":"):
        return False
    env["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir
    return True


@dataclass(frozen=True, slots=True)
class TritonPorts:
    """Where the local Triton listens."""

    host: str
    grpc_port: int
    http_port: int
    metrics_port: int

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


class OrtModelCallable:
    """The Python callable PyTriton binds for one model: one request is one query, run as sent.

    Without dynamic batching Triton hands over one request per call. All models of the server share
    `lock`, so the instance serves one query at a time, as the scheduler assumes. The session may
    still be loading when the callable is bound (it loads while tritonserver starts).
    """

    def __init__(self, spec: ModelSpec, session: Future[ort.InferenceSession], lock: threading.Lock) -> None:
        self.spec = spec
        self._session = session
        self.lock = lock
        self.output_names = [t.name for t in spec.outputs]

    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        session = self._session.result()
        responses = []
        for request in requests:
            feeds = {t.name: np.ascontiguousarray(request[t.name], dtype=t.np_dtype) for t in self.spec.inputs}
            with self.lock:
                arrays = session.run(self.output_names, feeds)
            responses.append(dict(zip(self.output_names, arrays, strict=True)))
        return responses


class LocalTriton:
    """tritonserver (through PyTriton) serving `specs`; `start()` returns once it answers with every model loaded.

    The models are written into PyTriton's workspace model store before tritonserver starts (the
    "local model store" lifecycle), so Triton loads them in parallel at startup and opens its ports
    only afterwards: ServerReady means every model is ready, as with a stock Triton. `workspace`
    (which must not exist yet) holds PyTriton's copy of tritonserver, the model store and sockets.
    A few PyTriton internals are used, each marked where it is.
    """

    def __init__(
        self, specs: dict[str, ModelSpec], ports: TritonPorts, threads: int, grace_s: float, workspace: Path
    ) -> None:
        ensure_libpython_on_library_path()
        from pytriton.model_config import ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy, TritonSecurityConfig

        from kairosd.backends.worker import make_session

        self.specs = specs
        self.ports = ports
        config = TritonConfig(
            grpc_address=ports.host,
            grpc_port=ports.grpc_port,
            http_address=ports.host,
            http_port=ports.http_port,
            metrics_address=ports.host,
            metrics_port=ports.metrics_port,
            allow_gpu_metrics=False,
            log_verbose=0,
            exit_timeout_secs=max(1, int(round(grace_s))),
        )
        self.triton = Triton(
            config=config,
            workspace=workspace,
            triton_lifecycle_policy=TritonLifecyclePolicy(launch_triton_on_startup=True, local_model_store=True),
            security_config=TritonSecurityConfig(restricted_endpoints=RESTRICTED_ENDPOINTS),
        )
        # (internal) PyTriton writes complete model configs, so Triton need not auto-complete them;
        # auto-completion launches an extra Python backend stub per model (model load 2.8 s -> 0.5 s without).
        self.triton._triton_server_config["strict-model-config"] = "true"
        # Sessions load on threads while tritonserver starts.
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(specs)), thread_name_prefix="ort-load")
        self._sessions = {name: self._pool.submit(make_session, spec, threads) for name, spec in specs.items()}
        lock = threading.Lock()
        for spec in specs.values():
            self.triton.bind(
                model_name=spec.name,
                infer_func=OrtModelCallable(spec, self._sessions[spec.name], lock),
                inputs=[Tensor(name=t.name, dtype=t.np_dtype, shape=t.dims) for t in spec.inputs],
                outputs=[Tensor(name=t.name, dtype=t.np_dtype, shape=t.dims) for t in spec.outputs],
                config=ModelConfig(batching=spec.max_batch_size > 0, max_batch_size=spec.max_batch_size, batcher=None),
                strict=True,
            )

    def start(self) -> None:
        """Start tritonserver, wait until it answers, connect the models' inference handlers."""
        try:
            t0 = time.monotonic()
            # Triton.run() is _run_server() + connect(), but connect() polls readiness once a second:
            # (internal) start the server, poll faster ourselves, then connect.
            self.triton._run_server()
            self._wait_server_ready()
            log.info("tritonserver up with %d models in %.2f s", len(self.specs), time.monotonic() - t0)
            for future in self._sessions.values():
                future.result()  # a model ONNX Runtime cannot load fails the start, not the first query
            self.triton.connect()  # connects the inference handlers to the models' Python backend stubs
        except BaseException:
            self.stop()
            raise
        finally:
            self._pool.shutdown(wait=False)

    def server_alive(self) -> bool:
        """Whether the tritonserver process runs (internal: PyTriton keeps it in `_triton_server`)."""
        server = self.triton._triton_server
        return server is not None and server.is_alive()

    def alive(self) -> bool:
        """tritonserver and every model's inference handler are alive."""
        return bool(self.triton.is_alive())

    def stop(self) -> None:
        """Stop tritonserver (in-flight queries get the grace period), its stubs, and the handlers."""
        self.triton.stop()

    def kill_server(self) -> None:
        """SIGKILL tritonserver if it runs (internal: PyTriton keeps its `sh` command in `_triton_server`).
        Its Python backend stubs and PyTriton's helpers exit with it, and `stop()` then cleans up the rest
        without waiting on tritonserver's unload (its models' stubs and its own shutdown loop poll once a
        second: ~5 s)."""
        server = self.triton._triton_server
        if server is None or not server.is_alive():
            return
        try:
            os.kill(server._tritonserver_running_cmd.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _wait_server_ready(self) -> None:
        """Poll Triton's HTTP health endpoint (HTTP starts after gRPC; PyTriton's own check uses HTTP)."""
        url = f"http://{self.ports.host}:{self.ports.http_port}/v2/health/ready"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.server_alive():
                raise Unavailable(f"tritonserver exited while starting ({self.ports}); see its log above")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except OSError:  # refused, reset, HTTP error: still starting
                pass
            time.sleep(READY_POLL_S)
        raise Unavailable(f"tritonserver not ready at {url} after {STARTUP_TIMEOUT_S:.0f} s")


def serve(
    repository: str,
    ports: TritonPorts,
    threads: int,
    models: Sequence[str] | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    parent_died_signal: signal.Signals | None = None,
) -> int:
    """Run Triton until SIGTERM/SIGINT, then stop it (and its stubs) cleanly; returns the exit code.
    `parent_died_signal` (the parent-death signal armed, if any) stops it too, killing tritonserver first:
    the parent that sent every query is gone, so no answer is waited for."""
    started = time.monotonic()
    specs = load_repository(repository, models)
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")

    stop = threading.Event()
    triton: LocalTriton | None = None

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping Triton (in-flight queries get up to %.1f s)", signal.Signals(signum).name, grace_s)
        stop.set()

    def on_parent_died(signum: int, _frame: object) -> None:
        log.warning("%s: the parent process died; stopping Triton at once", signal.Signals(signum).name)
        stop.set()
        if triton is not None:
            triton.kill_server()

    handlers = {signal.SIGTERM: on_signal, signal.SIGINT: on_signal}
    if parent_died_signal is not None:
        handlers[parent_died_signal] = on_parent_died
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    workspace_root = Path(tempfile.mkdtemp(prefix="kairosd-pytriton-"))
    try:
        triton = LocalTriton(specs, ports, threads, grace_s, workspace_root / "pytriton")
        if not _start_interruptibly(triton, stop, workspace_root):
            return 0  # stopped while starting
        print(
            f"kairosd triton ready: grpc={ports.grpc_url} http={ports.host}:{ports.http_port} "
            f"metrics={ports.host}:{ports.metrics_port} models={','.join(specs)} threads={threads} "
            f"pid={os.getpid()} startup_s={time.monotonic() - started:.2f}",
            flush=True,
        )
        while not stop.wait(timeout=1.0):
            if not triton.alive():
                log.error("Triton or one of its models died; exiting")
                return 1
        return 0
    finally:
        if triton is not None:
            triton.stop()
        shutil.rmtree(workspace_root, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_interruptibly(triton: LocalTriton, stop: threading.Event, workspace_root: Path) -> bool:
    """`triton.start()`, watching for a stop request meanwhile; True if Triton runs afterwards.

    The start runs on the main thread: PyTriton gives tritonserver a parent-death signal, which Linux
    sends when the *thread* that started it exits. A stop during startup lets the start finish (a
    second or two), then stops Triton. If tritonserver is already gone (a terminal's Ctrl-C reaches
    the whole process group) or the start does not finish in time, PyTriton may wait a minute for
    models that will never be ready: the watchdog exits at once. Nothing is left behind: tritonserver
    gets its parent-death signal and the stubs follow tritonserver.
    """
    done = threading.Event()

    def watchdog() -> None:
        while not done.wait(timeout=0.05):
            if stop.is_set():
                deadline = time.monotonic() + STOP_DURING_START_WAIT_S
                while not done.wait(timeout=0.05):
                    gone = not triton.server_alive()
                    if gone or time.monotonic() > deadline:
                        state = "gone" if gone else "stuck"
                        log.warning("stopped during startup (tritonserver %s); exiting now", state)
                        shutil.rmtree(workspace_root, ignore_errors=True)
                        os._exit(0 if gone else 1)
                return

    threading.Thread(target=watchdog, name="triton-start-watchdog", daemon=True).start()
    try:
        triton.start()
    except BaseException:
        if stop.is_set():
            return False  # a start that failed because of the stop is no error
        raise
    finally:
        done.set()
    if stop.is_set():
        triton.stop()
        return False
    return True
