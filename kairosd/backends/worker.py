"""The ONNX Runtime CPU worker: a KServe v2 gRPC server (like Triton's) that runs one query at a time.

ModelStreamInfer is served too (`kairosd.backends.streaming`): each request on a stream is a query like a
ModelInfer call, answered on the stream when it has run (or with the error the call would have had)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument
from tritonclient.grpc import service_pb2, service_pb2_grpc

import kairosd
from kairosd import heap
from kairosd.backends.draining import Draining
from kairosd.backends.streaming import error_response, serve_stream, timeout_of
from kairosd.errors import ConfigError, DeadlineExceeded, InvalidInput, KairosError, ModelNotFound, Unavailable
from kairosd.repository import ModelSpec, TensorSpec, load_repository

log = logging.getLogger(__name__)

SERVER_NAME = "kairosd-worker"
DEFAULT_GRACE_S = 5.0
GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", -1),  # a batch of 1024 is well under 4 MB today; do not cap it
    ("grpc.max_send_message_length", -1),
    ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
]

# ONNX Runtime's element types, as KServe v2 names.
_ORT_TO_DTYPE: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# Which InferTensorContents field carries each datatype when a client sends typed contents, not raw bytes.
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def _shape_str(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    """A validated ModelInfer request: numpy feeds by input name, the outputs to return, the batch size."""

    feeds: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    batch: int


def find_model(models: dict[str, ModelSpec], name: str, version: str) -> ModelSpec:
    """The model called `name` (at `version`, "" = newest), or ModelNotFound (worded like Triton's)."""
    spec = models.get(name)
    if spec is None:
        raise ModelNotFound(f"Request for unknown model: '{name}' is not found")
    if version and version != spec.version:
        raise ModelNotFound(f"Request for unknown model: '{name}' version {version} is not found")
    return spec


def _decode_tensor(
    spec: ModelSpec, tensor: service_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> np.ndarray:
    expected = spec.input(tensor.name)
    if expected is None:
        raise InvalidInput(f"unexpected inference input '{tensor.name}' for model '{spec.name}'")
    if tensor.datatype != expected.datatype:
        raise InvalidInput(
            f"inference input '{tensor.name}' data-type is '{tensor.datatype}', "
            f"but model '{spec.name}' expects '{expected.datatype}'"
        )
    shape = tuple(int(d) for d in tensor.shape)
    _check_shape(spec, expected, shape)
    count = math.prod(shape)
    if raw is not None:
        want = count * expected.np_dtype.itemsize
        if len(raw) != want:
            raise InvalidInput(
                f"input '{tensor.name}' for model '{spec.name}': got {len(raw)} bytes of raw content, "
                f"expected {want} for shape {_shape_str(shape)} of {expected.datatype}"
            )
        return np.frombuffer(raw, dtype=expected.np_dtype).reshape(shape)
    field = _CONTENTS_FIELD.get(expected.datatype)
    if field is None:
        raise InvalidInput(f"input '{tensor.name}': {expected.datatype} must be sent as raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input '{tensor.name}' for model '{spec.name}': got {len(values)} {field}, "
            f"expected {count} for shape {_shape_str(shape)}"
        )
    return np.asarray(values, dtype=expected.np_dtype).reshape(shape)


def _check_shape(spec: ModelSpec, expected: TensorSpec, shape: tuple[int, ...]) -> None:
    batched = spec.max_batch_size > 0
    want = expected.shape(batched)
    dims = shape[1:] if batched else shape
    dims_ok = all(e in (-1, d) for e, d in zip(expected.dims, dims, strict=False))  # the rank is checked below
    ok = len(shape) == len(want) and dims_ok and min(shape, default=1) > 0
    if not ok:
        raise InvalidInput(
            f"unexpected shape for input '{expected.name}' for model '{spec.name}'. "
            f"Expected {_shape_str(want)}, got {_shape_str(shape)}"
        )
    if batched and shape[0] > spec.max_batch_size:
        raise InvalidInput(
            f"inference request batch-size must be <= {spec.max_batch_size} for '{spec.name}', "
            f"got {shape[0]} for input '{expected.name}'"
        )


def decode_request(spec: ModelSpec, request: service_pb2.ModelInferRequest) -> DecodedRequest:
    """Check a ModelInfer request against the model's config; InvalidInput names what is wrong."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"expected {len(request.inputs)} raw_input_contents (one per input) for model '{spec.name}', got {len(raw)}"
        )
    feeds: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in feeds:
            raise InvalidInput(f"input '{tensor.name}' appears twice in the request for model '{spec.name}'")
        feeds[tensor.name] = _decode_tensor(spec, tensor, raw[i] if raw else None)
    missing = [t.name for t in spec.inputs if t.name not in feeds]
    if missing:
        raise InvalidInput(
            f"expected {len(spec.inputs)} inputs but got {len(feeds)} inputs for model '{spec.name}'. "
            f"Got input(s) {sorted(feeds)}, but missing required input(s) {missing}"
        )
    batch = 1
    if spec.max_batch_size > 0:
        batch = next(iter(feeds.values())).shape[0]
        for name, array in feeds.items():
            if array.shape[0] != batch:
                raise InvalidInput(f"input '{name}' batch size does not match other inputs for '{spec.name}'")

    output_names: list[str] = []
    for out in request.outputs:
        if spec.output(out.name) is None:
            raise InvalidInput(f"unexpected inference output '{out.name}' for model '{spec.name}'")
        if out.name not in output_names:
            output_names.append(out.name)
    return DecodedRequest(feeds, tuple(output_names) or tuple(t.name for t in spec.outputs), batch)


def encode_response(
    spec: ModelSpec, request_id: str, names: Sequence[str], arrays: Sequence[np.ndarray]
) -> service_pb2.ModelInferResponse:
    """A ModelInferResponse carrying the outputs as raw_output_contents, in the order requested (as Triton does)."""
    response = service_pb2.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=request_id)
    for name, array in zip(names, arrays, strict=True):
        out_spec = spec.output(name)
        assert out_spec is not None
        array = np.ascontiguousarray(array, dtype=out_spec.np_dtype)
        response.outputs.add(name=name, datatype=out_spec.datatype, shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


class OrtRunner:
    """ONNX Runtime sessions for the models, run on one thread: the worker serves one query at a time."""

    def __init__(self, specs: dict[str, ModelSpec], threads: int) -> None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.specs = specs
        self.threads = threads
        self.sessions = {name: make_session(spec, threads) for name, spec in specs.items()}
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort-run")

    def run_sync(self, model: str, decoded: DecodedRequest) -> list[np.ndarray]:
        """Run one query on the calling thread; a failure inside the model (e.g. an id out of range) is InvalidInput."""
        try:
            return self.sessions[model].run(list(decoded.output_names), decoded.feeds)
        except (OrtInvalidArgument, OrtFail) as exc:
            raise InvalidInput(f"model '{model}' rejected the inputs: {exc}") from exc

    async def run(self, model: str, decoded: DecodedRequest) -> list[np.ndarray]:
        """Run one query on the runner's thread, after any query already queued there."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run_sync, model, decoded)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def make_session(spec: ModelSpec, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for `spec` with `threads` intra-op threads, checked and warmed up."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads sleep instead of spinning: on a small machine several instances share the
    # cores, and a spinning pool steals them (measured on 2 busy cores, DLRM batch 1000 with 2 threads:
    # 8.7 ms sleeping vs 15.7 ms spinning; no difference with 1 thread, which has no pool).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only; a failed query is reported to its client
    try:
        session = ort.InferenceSession(str(spec.onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConfigError(f"{spec.onnx_path}: ONNX Runtime cannot load it: {exc}") from exc
    check_signature(spec, session)
    session.run(None, warmup_inputs(spec))  # the first run allocates; keep that off the first query
    return session


def check_signature(spec: ModelSpec, session: ort.InferenceSession) -> None:
    """The ONNX graph's inputs and outputs must be the ones config.pbtxt declares (names, types, ranks)."""
    batched = spec.max_batch_size > 0
    for kind, declared, actual in (
        ("input", spec.inputs, session.get_inputs()),
        ("output", spec.outputs, session.get_outputs()),
    ):
        by_name = {a.name: a for a in actual}
        if sorted(by_name) != sorted(t.name for t in declared):
            raise ConfigError(
                f"{spec.onnx_path}: the model's {kind}s are {sorted(by_name)}, "
                f"config.pbtxt declares {sorted(t.name for t in declared)}"
            )
        for t in declared:
            a = by_name[t.name]
            if _ORT_TO_DTYPE.get(a.type) != t.datatype or len(a.shape) != len(t.shape(batched)):
                raise ConfigError(
                    f"{spec.onnx_path}: {kind} '{t.name}' is {a.type} {a.shape} in the model, "
                    f"config.pbtxt declares {t.datatype} {_shape_str(t.shape(batched))}"
                )


def warmup_inputs(spec: ModelSpec) -> dict[str, np.ndarray]:
    """Zeros of batch 1 for every input (0 is a valid id for every embedding table)."""
    batched = spec.max_batch_size > 0
    return {t.name: np.zeros([1 if d == -1 else d for d in t.shape(batched)], dtype=t.np_dtype) for t in spec.inputs}


class WorkerServicer(service_pb2_grpc.GRPCInferenceServiceServicer, Draining):
    """KServe v2 GRPCInferenceService over an OrtRunner; errors carry the status Triton would send."""

    def __init__(self, runner: OrtRunner) -> None:
        Draining.__init__(self)  # ready, in_flight (ModelInfer calls accepted and not yet answered)
        self.runner = runner
        self.models = runner.specs

    async def ServerLive(
        self, request: service_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self.ready)

    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=kairosd.__version__, extensions=["model_configuration"]
        )

    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelReadyResponse:
        spec = self.models.get(request.name)
        ok = self.ready and spec is not None and request.version in ("", spec.version)
        return service_pb2.ModelReadyResponse(ready=ok)

    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelMetadataResponse:
        try:
            return find_model(self.models, request.name, request.version).metadata_pb()
        except KairosError as exc:
            await context.abort(exc.grpc_code, str(exc))
            raise  # unreachable: abort raises

    async def ModelConfig(
        self, request: service_pb2.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelConfigResponse:
        try:
            return find_model(self.models, request.name, request.version).config_pb()
        except KairosError as exc:
            await context.abort(exc.grpc_code, str(exc))
            raise

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        with self.accepted():
            try:
                if not self.ready:
                    raise Unavailable("the worker is shutting down")
                spec = find_model(self.models, request.model_name, request.model_version)
                decoded = decode_request(spec, request)
                arrays = await self.runner.run(spec.name, decoded)
                return encode_response(spec, request.id, decoded.output_names, arrays)
            except KairosError as exc:
                await context.abort(exc.grpc_code, str(exc))
                raise

    async def _answer_stream_request(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelStreamInferResponse:
        with self.accepted():
            try:
                if not self.ready:
                    raise Unavailable("the worker is shutting down")
                spec = find_model(self.models, request.model_name, request.model_version)
                decoded = decode_request(spec, request)
                timeout_s = timeout_of(request)  # a query on a stream cannot be cancelled: its deadline drops it
                try:
                    arrays = await asyncio.wait_for(self.runner.run(spec.name, decoded), timeout_s)
                except TimeoutError:
                    raise DeadlineExceeded(f"not served within its timeout parameter ({timeout_s:.3g} s)") from None
                return service_pb2.ModelStreamInferResponse(
                    infer_response=encode_response(spec, request.id, decoded.output_names, arrays))
            except KairosError as exc:
                return service_pb2.ModelStreamInferResponse(
                    error_message=str(exc), infer_response=error_response(request.id, exc.grpc_code))
            except Exception as exc:  # noqa: BLE001 - a bug fails this request, not the stream
                log.exception("ModelStreamInfer request for model %r failed", request.model_name)
                return service_pb2.ModelStreamInferResponse(
                    error_message=f"worker internal error: {type(exc).__name__}: {exc}",
                    infer_response=error_response(request.id, grpc.StatusCode.INTERNAL))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> None:
        await serve_stream(request_iterator, context.write, self._answer_stream_request)


async def serve(
    repository: str,
    host: str,
    port: int,
    threads: int,
    models: Sequence[str] | None = None,
    grace_s: float = DEFAULT_GRACE_S,
) -> int:
    """Load the models, serve until SIGTERM/SIGINT (the first drains for `grace_s`, a second stops at once)."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()  # first SIGTERM/SIGINT: drain
    forced = asyncio.Event()  # second: stop now
    servicer: WorkerServicer | None = None

    def on_signal(sig: signal.Signals) -> None:
        if stopping.is_set():
            log.warning("%s again: stopping now", sig.name)
            forced.set()
            return
        log.info("%s: draining for up to %.1f s", sig.name, grace_s)
        if servicer is not None:
            servicer.start_draining()
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    runner: OrtRunner | None = None
    try:
        specs = load_repository(repository, models)
        runner = OrtRunner(specs, threads)
        servicer = WorkerServicer(runner)
        if stopping.is_set():
            servicer.start_draining()
        server = grpc.aio.server(options=GRPC_OPTIONS)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {host}:{port}: {exc}") from exc
        if bound == 0:
            raise Unavailable(f"cannot listen on {host}:{port}")
        await server.start()
        print(
            f"kairosd worker ready: grpc={host}:{bound} models={','.join(specs)} threads={threads} "
            f"pid={os.getpid()} load_s={time.monotonic() - started:.2f}",
            flush=True,
        )
        heap.settle("start-up")
        await stopping.wait()
        # Keep listening while the accepted queries finish, so later ones get a clean UNAVAILABLE
        # (retried elsewhere) rather than a reset connection; then close.
        drain_started = time.monotonic()
        drained = asyncio.ensure_future(servicer.drained(grace_s))
        force = asyncio.ensure_future(forced.wait())
        await asyncio.wait([drained, force], return_when=asyncio.FIRST_COMPLETED)
        force.cancel()
        if not (drained.done() and drained.result()):
            drained.cancel()
            log.warning("%d queries still running; cancelling them", servicer.in_flight)
        remaining_s = 0.0 if forced.is_set() else max(0.0, grace_s - (time.monotonic() - drain_started))
        await server.stop(remaining_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if runner is not None:
            runner.close()
    log.info("stopped")
    return 0
