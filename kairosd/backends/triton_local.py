"""A real Triton server on this machine (via PyTriton) serving the repository's ONNX models through ONNX Runtime."""

from __future__ import annotations

import logging
import os
import signal
import sysconfig
import threading
import time
from collections.abc import MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    `lock`, so the instance serves one query at a time, as the scheduler assumes.
    """

    def __init__(self, spec: ModelSpec, session: ort.InferenceSession, lock: threading.Lock) -> None:
        self.spec = spec
        self.session = session
        self.lock = lock
        self.output_names = [t.name for t in spec.outputs]

    def __call__(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            feeds = {t.name: np.ascontiguousarray(request[t.name], dtype=t.np_dtype) for t in self.spec.inputs}
            with self.lock:
                arrays = self.session.run(self.output_names, feeds)
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
    """Start tritonserver, load every model (in parallel), return once all are ready."""
    ensure_libpython_on_library_path()
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

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
    triton = Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=RESTRICTED_ENDPOINTS))
    # PyTriton sends complete model configs, so Triton need not auto-complete them; auto-completion
    # launches an extra Python backend stub per model (measured: model load 2.8 s -> 0.5 s without it).
    triton._triton_server_config["strict-model-config"] = "true"
    try:
        # Sessions load while tritonserver starts; PyTriton's own readiness poll sleeps 1 s between
        # tries, so poll faster ourselves before handing over to connect().
        with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
            sessions_future = pool.map(lambda s: (s.name, make_session(s, threads)), specs.values())
            t0 = time.monotonic()
            triton._run_server()  # the first half of Triton.run(); connect() below is the second
            _wait_server_ready(triton, ports)
            log.info("tritonserver up in %.2f s", time.monotonic() - t0)
            sessions = dict(sessions_future)
        t0 = time.monotonic()
        triton.connect()
        log.info("PyTriton connected in %.2f s", time.monotonic() - t0)
        lock = threading.Lock()

        def bind(spec: ModelSpec) -> None:
            t0 = time.monotonic()
            triton.bind(
                model_name=spec.name,
                infer_func=OrtModelCallable(spec, sessions[spec.name], lock),
                inputs=[Tensor(name=t.name, dtype=t.np_dtype, shape=t.dims) for t in spec.inputs],
                outputs=[Tensor(name=t.name, dtype=t.np_dtype, shape=t.dims) for t in spec.outputs],
                config=ModelConfig(batching=spec.max_batch_size > 0, max_batch_size=spec.max_batch_size, batcher=None),
                strict=True,
            )
            log.info("model %s loaded in %.2f s", spec.name, time.monotonic() - t0)

        # Binding after connect() loads the model at once; one thread per model overlaps the stubs' start.
        with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
            list(pool.map(bind, specs.values()))
    except BaseException:
        triton.stop()
        raise
    return triton


def _wait_server_ready(triton: Triton, ports: TritonPorts) -> None:
    import tritonclient.grpc as grpcclient

    from kairosd.backends.process import FAST_RECONNECT_ARGS

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    client = grpcclient.InferenceServerClient(ports.grpc_url, channel_args=FAST_RECONNECT_ARGS)
    try:
        while time.monotonic() < deadline:
            if not triton._triton_server or not triton._triton_server.is_alive():
                raise Unavailable(f"tritonserver exited while starting (ports {ports}); see its log above")
            try:
                if client.is_server_ready(client_timeout=1.0):
                    return
            except Exception:
                pass
            time.sleep(READY_POLL_S)
    finally:
        client.close()
    raise Unavailable(f"tritonserver not ready on {ports.grpc_url} after {STARTUP_TIMEOUT_S:.0f} s")


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
