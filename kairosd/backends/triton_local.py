"""A real Triton server on this machine (via PyTriton) serving the repository's ONNX models through ONNX Runtime."""

from __future__ import annotations

import logging
import os
import signal
import sysconfig
import threading
import time
import urllib.request
from collections.abc import MutableMapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kairosd.errors import ConfigError, Unavailable
from kairosd.repository import ModelSpec, load_repository

if TYPE_CHECKING:
    import onnxruntime as ort
    from pytriton.triton import Triton

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 5.0
READY_POLL_S = 0.02
STARTUP_TIMEOUT_S = 120.0
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
            responses.append(dict(zip(self.output_names, arrays)))
        return responses


def make_session(spec: ModelSpec, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with `threads` intra-op threads, warmed up with one batch-1 run."""
    import onnxruntime as ort

    from kairosd.backends.worker import check_signature, warmup_inputs

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(spec.onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConfigError(f"{spec.onnx_path}: ONNX Runtime cannot load it: {exc}") from exc
    check_signature(spec, session)
    session.run(None, warmup_inputs(spec))
    return session


def start_triton(specs: dict[str, ModelSpec], ports: TritonPorts, threads: int, grace_s: float) -> Triton:
    """Start tritonserver with every model loaded; return once it answers (its ports open only then).

    The models are written into PyTriton's workspace model store before tritonserver starts (the
    "local model store" lifecycle), so Triton loads them in parallel at startup and opens its ports
    only afterwards: ServerReady means every model is ready, as with a stock Triton.
    """
    ensure_libpython_on_library_path()
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy, TritonSecurityConfig

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
    triton = Triton(
        config=config,
        triton_lifecycle_policy=TritonLifecyclePolicy(launch_triton_on_startup=True, local_model_store=True),
        security_config=TritonSecurityConfig(restricted_endpoints=RESTRICTED_ENDPOINTS),
    )
    # PyTriton writes complete model configs, so Triton need not auto-complete them; auto-completion
    # launches an extra Python backend stub per model (measured: model load 2.8 s -> 0.5 s without it).
    triton._triton_server_config["strict-model-config"] = "true"
    pool = ThreadPoolExecutor(max_workers=max(1, len(specs)), thread_name_prefix="ort-load")
    try:
        sessions = {name: pool.submit(make_session, spec, threads) for name, spec in specs.items()}
        lock = threading.Lock()
        for spec in specs.values():
            triton.bind(
                model_name=spec.name,
                infer_func=OrtModelCallable(spec, sessions[spec.name], lock),
                inputs=[Tensor(name=t.name, dtype=t.np_dtype, shape=t.dims) for t in spec.inputs],
                outputs=[Tensor(name=t.name, dtype=t.np_dtype, shape=t.dims) for t in spec.outputs],
                config=ModelConfig(batching=spec.max_batch_size > 0, max_batch_size=spec.max_batch_size, batcher=None),
                strict=True,
            )
        t0 = time.monotonic()
        # Triton.run() is _run_server() + connect(), but connect() polls readiness once a second:
        # poll faster ourselves in between.
        triton._run_server()
        _wait_server_ready(triton, ports)
        log.info("tritonserver up with %d models in %.2f s", len(specs), time.monotonic() - t0)
        for future in sessions.values():
            future.result()  # a model ONNX Runtime cannot load fails the start, not the first query
        triton.connect()  # connects the inference handlers to the models' Python backend stubs
    except BaseException:
        triton.stop()
        raise
    finally:
        pool.shutdown(wait=False)
    return triton


def _wait_server_ready(triton: Triton, ports: TritonPorts) -> None:
    """Poll Triton's HTTP health endpoint (HTTP starts after gRPC; PyTriton's own check uses HTTP)."""
    url = f"http://{ports.host}:{ports.http_port}/v2/health/ready"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not triton._triton_server or not triton._triton_server.is_alive():
            raise Unavailable(f"tritonserver exited while starting ({ports}); see its log above")
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
) -> int:
    """Run Triton until SIGTERM/SIGINT, then stop it (and its stubs) cleanly; returns the exit code."""
    started = time.monotonic()
    specs = load_repository(repository)
    if models:
        unknown = sorted(set(models) - set(specs))
        if unknown:
            raise ConfigError(f"--models: {', '.join(unknown)} not in {repository}; allowed: {', '.join(specs)}")
        specs = {name: specs[name] for name in models}
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping Triton (in-flight queries get up to %.1f s)", signal.Signals(signum).name, grace_s)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    triton = None
    try:
        triton = start_triton(specs, ports, threads, grace_s)
        print(
            f"kairosd triton ready: grpc={ports.grpc_url} http={ports.host}:{ports.http_port} "
            f"metrics={ports.host}:{ports.metrics_port} models={','.join(specs)} threads={threads} "
            f"pid={os.getpid()} startup_s={time.monotonic() - started:.2f}",
            flush=True,
        )
        while not stop.wait(timeout=1.0):
            if not triton.is_alive():
                log.error("Triton or one of its models died; exiting")
                return 1
        return 0
    finally:
        if triton is not None:
            triton.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
