"""`kairosd triton`: a real Triton (PyTriton) answers like the worker, is ready only with its models, stops cleanly."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from kairosd.backends.process import ChildProcess, free_port, group_pids, kairosd_argv, wait_ready_sync
from kairosd.modelgen import NCF_USERS, example_inputs
from kairosd.repository import load_repository
from tests.integration.test_worker import (
    ERROR_CASES,
    MODELS,
    REPOSITORY,
    check_config,
    check_error,
    check_health,
    check_metadata,
    check_outputs_match_onnxruntime,
    check_requested_outputs_and_id,
    grpc_inputs,
    reference_sessions,
)

pytestmark = pytest.mark.triton

START_TIMEOUT_S = 120.0
STOP_GRACE_S = 30.0  # PyTriton's orderly stop takes ~5 s (Python backend stubs unload one poll tick at a time)


@dataclass
class LocalTriton:
    child: ChildProcess
    url: str


@pytest.fixture(scope="module")
def triton() -> Iterator[LocalTriton]:
    """One Triton for the module; its teardown checks that SIGTERM stops it and all its helpers, exit code 0."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    argv = kairosd_argv(
        "triton", "--model-repository", str(REPOSITORY), "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--metrics-port", str(metrics_port), "--threads", "1",
    )  # fmt: skip
    child = ChildProcess(argv, name="triton").start()
    try:
        # No `models=`: ServerReady alone must mean the models are loaded (Triton opens its ports after loading).
        wait_ready_sync(f"127.0.0.1:{grpc_port}", START_TIMEOUT_S, child)
        yield LocalTriton(child, f"127.0.0.1:{grpc_port}")
        # Nothing may have signalled tritonserver before we stop it (e.g. a parent-death signal fired
        # because the thread that started it ended): it would drain and exit under the tests' feet.
        assert "Signal (" not in child.log_tail(1_000_000), child.log_tail()
        helpers = group_pids(child.pid or 0)
        assert any("tritonserver" in _cmdline(pid) for pid in helpers), helpers
        code = child.stop(STOP_GRACE_S)
        assert code == 0, child.log_tail()
        assert child.leftover_pids == [], [_cmdline(pid) for pid in child.leftover_pids]
        assert "kairosd triton ready" in child.log_tail(200_000)
    finally:
        child.stop(STOP_GRACE_S)


def _cmdline(pid: int) -> str:
    result = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
    return result.stdout.strip()


@pytest.fixture(scope="module")
def client(triton: LocalTriton) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(triton.url)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def sessions() -> dict[str, ort.InferenceSession]:
    return reference_sessions()


def test_models_are_ready_as_soon_as_the_server_is(client: grpcclient.InferenceServerClient) -> None:
    check_health(client)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", [1, 100, 1024])
def test_outputs_match_onnxruntime(
    client: grpcclient.InferenceServerClient, sessions: dict[str, ort.InferenceSession], model: str, batch: int
) -> None:
    check_outputs_match_onnxruntime(client, sessions, model, batch)


def test_requested_outputs_and_id_are_echoed(client: grpcclient.InferenceServerClient) -> None:
    check_requested_outputs_and_id(client)


@pytest.mark.parametrize(("case", "call", "status", "words"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_carry_the_same_codes_as_the_worker(
    client: grpcclient.InferenceServerClient, case: str, call: Callable[..., object], status: str, words: str
) -> None:
    check_error(client, call, status, words)


def test_an_id_out_of_range_is_internal_on_triton(client: grpcclient.InferenceServerClient) -> None:
    """Triton cannot tell a model's input error from a crash: the Python backend reports INTERNAL
    (so does Triton's own ONNX Runtime backend); the worker says INVALID_ARGUMENT."""
    arrays = example_inputs("ncf", 2)
    arrays["user_id"][1, 0] = NCF_USERS
    check_error(client, lambda c: c.infer("ncf", grpc_inputs(arrays)), "INTERNAL", "out of data bounds")


def test_metadata_and_config_match_the_repository(client: grpcclient.InferenceServerClient) -> None:
    for spec in load_repository(REPOSITORY).values():
        check_metadata(client, spec)
        check_config(client, spec)
        assert client.get_model_metadata(spec.name).platform == "python"  # PyTriton's models are Python models
    assert client.get_server_metadata().name == "triton"
