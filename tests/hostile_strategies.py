"""Shared pieces of the hostile-input property tests: a model repository with fixed, wildcard, BYTES and
non-batching inputs, an ONNX Runtime service that asserts every query it receives is well formed, both
front ends on real sockets, hypothesis strategies for valid and broken requests, and the judges.

Core rule of every judge: a request either fails with a client status (gRPC INVALID_ARGUMENT / NOT_FOUND,
HTTP 4xx) and a non-empty reason, or succeeds with exactly the outputs ONNX Runtime computes from the
tensors as sent. The service raises AssertionError (so the front end answers INTERNAL / 500, which every
judge rejects) when validation lets through a query whose names, datatypes, shapes or byte counts are
wrong; data the model itself refuses (an id out of range) is a BackendError INVALID_ARGUMENT, as an
instance's ONNX Runtime reports it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2 as pb

from kairosd.backends.http_client import HttpForward
from kairosd.backends.process import free_port
from kairosd.errors import BackendError
from kairosd.modelgen import ID_RANGES, example_inputs
from kairosd.repository import ModelSpec, load_repository
from kairosd.server.grpc_frontend import start_grpc_server
from kairosd.server.http_frontend import start_http_server
from kairosd.server.http_limits import HttpLimits
from kairosd.server.tensors import ITEMSIZE, WIRE_NP, deserialize_bytes, element_count, serialize_bytes

REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
MAX_BODY_BYTES = 256 * 1024
TIMEOUT_S = 10.0  # any request slower than this is a hang

# Bounded, reproducible runs: the same examples on every run (derandomize), no example database.
HOSTILE = settings(
    max_examples=int(os.environ.get("KAIROSD_HOSTILE_EXAMPLES", "120")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

DATATYPES = list(WIRE_NP)
TEXT_MAX_BATCH = 8


# ---------------------------------------------------------------- repository and service


def _write_model(root: Path, name: str, config: str, model: onnx.ModelProto) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    onnx.save(model, str(root / name / "1" / "model.onnx"))


def _onnx(name: str, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
          outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def build_repository(root: Path) -> Path:
    """dlrm and ncf (fixed dims, batching) plus `text` (BYTES, dims [-1], max batch 8: Identity) and
    `pairs` (FP32, dims [-1, 2], no batching: y = x + x)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dlrm", "ncf"):
        (root / name).symlink_to(REPOSITORY / name, target_is_directory=True)
    vi = helper.make_tensor_value_info
    _write_model(
        root, "text",
        f'name: "text"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {TEXT_MAX_BATCH}\n'
        'input [ { name: "text" data_type: TYPE_STRING dims: [ -1 ] } ]\n'
        'output [ { name: "text_out" data_type: TYPE_STRING dims: [ -1 ] } ]\n',
        _onnx("text", [helper.make_node("Identity", ["text"], ["text_out"])],
              [vi("text", TensorProto.STRING, [None, None])], [vi("text_out", TensorProto.STRING, [None, None])]),
    )
    _write_model(
        root, "pairs",
        'name: "pairs"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 2 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 2 ] } ]\n',
        _onnx("pairs", [helper.make_node("Add", ["x", "x"], ["y"])],
              [vi("x", TensorProto.FLOAT, [None, 2])], [vi("y", TensorProto.FLOAT, [None, 2])]),
    )
    return root


def decode_inputs(request: pb.ModelInferRequest, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The request's raw tensors as arrays (BYTES as UTF-8 str objects, as ONNX Runtime takes strings)."""
    arrays: dict[str, np.ndarray] = {}
    for t, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        shape = [int(d) for d in t.shape]
        if t.datatype == "BYTES":
            elements = [e.decode("utf-8") for e in deserialize_bytes(raw)]
            arrays[t.name] = np.array(elements, dtype=np.object_).reshape(shape)
        else:
            arrays[t.name] = np.frombuffer(raw, dtype=WIRE_NP[t.datatype]).reshape(shape)
    return arrays


def structure_errors(request: pb.ModelInferRequest, spec: ModelSpec, batch: int) -> list[str]:
    """What is wrong with a query that passed validation (empty when it is well formed). Written
    independently of kairosd.server.validate, as the test's oracle."""
    problems: list[str] = []
    names = [t.name for t in request.inputs]
    if sorted(names) != sorted(t.name for t in spec.inputs):
        problems.append(f"inputs {names}")
    if len(request.raw_input_contents) != len(request.inputs):
        problems.append(f"{len(request.raw_input_contents)} raw contents for {len(request.inputs)} inputs")
        return problems
    batching = spec.max_batch_size > 0
    for t, raw in zip(request.inputs, request.raw_input_contents, strict=True):
        want = spec.input(t.name)
        if want is None:
            continue
        shape = [int(d) for d in t.shape]
        dims = list(want.dims)
        if t.datatype != want.datatype or t.HasField("contents"):
            problems.append(f"{t.name}: datatype {t.datatype} / contents")
            continue
        if batching:
            if len(shape) != len(dims) + 1 or not 1 <= shape[0] <= spec.max_batch_size or shape[0] != batch:
                problems.append(f"{t.name}: shape {shape}, batch {batch}")
                continue
            shape_rest = shape[1:]
        else:
            shape_rest = shape
            if batch != 1:
                problems.append(f"batch {batch} for a model that does not batch")
        if len(shape_rest) != len(dims) or any(g < 0 or (w >= 0 and g != w) for g, w in zip(shape_rest, dims, strict=False)):
            problems.append(f"{t.name}: shape {shape} for dims {dims}")
            continue
        count = element_count(shape)
        if t.datatype == "BYTES":
            try:
                if len(deserialize_bytes(raw)) != count:
                    problems.append(f"{t.name}: BYTES element count")
            except Exception as e:  # noqa: BLE001 - any failure here is the oracle's finding
                problems.append(f"{t.name}: BYTES layout {e}")
        elif len(raw) != count * ITEMSIZE[t.datatype]:
            problems.append(f"{t.name}: {len(raw)} bytes for shape {shape}")
    outs = [o.name for o in request.outputs]
    if len(set(outs)) != len(outs) or not set(outs) <= {o.name for o in spec.outputs}:
        problems.append(f"outputs {outs}")
    return problems


class CheckedOrtService:
    """A real InferenceService (ONNX Runtime in process) that refuses, with AssertionError, any query
    validation should have refused."""

    def __init__(self, repository: Mapping[str, ModelSpec]) -> None:
        self._repository = dict(repository)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.sessions = {
            name: ort.InferenceSession(str(spec.onnx_path), options, providers=["CPUExecutionProvider"])
            for name, spec in self._repository.items()
        }
        self.served = 0

    @property
    def repository(self) -> Mapping[str, ModelSpec]:
        return self._repository

    def is_live(self) -> bool:
        return True

    def is_ready(self) -> bool:
        return True

    def model_ready(self, name: str) -> bool:
        return name in self._repository

    def run(self, model: str, feeds: dict[str, np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
        session = self.sessions[model]
        names = names or [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))

    async def infer(
        self, request: pb.ModelInferRequest, spec: ModelSpec, batch: int, timeout_s: float | None = None,
        raw: bytes | None = None,
    ) -> bytes:
        problems = structure_errors(request, spec, batch)
        assert not problems, f"validation let through a malformed query for {spec.name}: {problems}"
        if raw is not None:
            assert pb.ModelInferRequest.FromString(raw) == request, "forwarded bytes differ from the validated request"
        names = [o.name for o in request.outputs] or None
        try:
            feeds = decode_inputs(request, spec)
            results = self.run(spec.name, feeds, names)
        except (UnicodeDecodeError, ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument, ort.capi.onnxruntime_pybind11_state.RuntimeException) as e:
            raise BackendError(f"model {spec.name} refused the data: {e}", grpc.StatusCode.INVALID_ARGUMENT, False) from None
        self.served += 1
        response = pb.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=request.id)
        for name, arr in results.items():
            if arr.dtype == np.object_:
                response.outputs.add(name=name, datatype="BYTES", shape=arr.shape)
                response.raw_output_contents.append(serialize_bytes([str(e) for e in arr.ravel()]))
            else:
                want = spec.output(name)
                assert want is not None
                response.outputs.add(name=name, datatype=want.datatype, shape=arr.shape)
                response.raw_output_contents.append(np.ascontiguousarray(arr).tobytes())
        return response.SerializeToString()

    async def infer_http(
        self, forward: HttpForward, spec: ModelSpec, batch: int, timeout_s: float | None = None
    ) -> bytes:
        """Like an instance with no HTTP endpoint: the request converted to gRPC, the answer rendered back."""
        return await self.infer(forward.to_grpc(), spec, batch, timeout_s)


class HostileServers:
    """Both front ends on one event loop in a background thread; tests drive them with blocking clients."""

    def __init__(self, repository: Path) -> None:
        self.repository_path = repository
        self.service = CheckedOrtService(load_repository(repository))
        self.grpc_port = free_port()
        self.http_port = 0
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    async def _start(self) -> None:
        self._grpc = await start_grpc_server(self.service, "127.0.0.1", self.grpc_port, MAX_BODY_BYTES)
        # with limits, as kairosd's client port: plain infer calls take the lean path (kairosd.server.http_lean)
        self._http = await start_http_server(self.service, "127.0.0.1", 0, MAX_BODY_BYTES, limits=HttpLimits())
        self.http_port = int(self._http.addresses[0][1])

    async def _stop(self) -> None:
        assert self._grpc is not None and self._http is not None
        await self._grpc.stop(grace=None)
        await self._http.cleanup()

    def settle(self) -> None:
        """Wait until the server thread has finished what a reply set off (aiohttp logs a failed body after
        replying). Called before a test reports a failure: CPython 3.11's traceback formatting runs
        ast.parse, whose recursion counter is shared between threads, so a traceback formatted here while
        the server formats one raises SystemError inside pytest (an INTERNALERROR ending the session)."""
        time.sleep(0.2)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(timeout=TIMEOUT_S)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


# ---------------------------------------------------------------- requests as data


@dataclass(slots=True)
class Tensor:
    """One input as sent: its raw wire bytes (whatever the encoding the test then picks)."""

    name: str
    datatype: str
    shape: list[int]
    data: bytes


@dataclass(slots=True)
class Query:
    model: str
    inputs: list[Tensor]
    outputs: list[str] | None = None  # None: ask for every output
    version: str = ""
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


def tensor_of(name: str, arr: np.ndarray) -> Tensor:
    if arr.dtype == np.object_:
        return Tensor(name, "BYTES", list(arr.shape), serialize_bytes([e for e in arr.ravel()]))
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}[arr.dtype]
    return Tensor(name, datatype, list(arr.shape), np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())


MODELS = ("dlrm", "ncf", "text", "pairs")
OUTPUTS = {"dlrm": ["click_probability"], "ncf": ["score"], "text": ["text_out"], "pairs": ["y"]}

_texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)


@st.composite
def valid_queries(draw: st.DrawFn, models: tuple[str, ...] = MODELS) -> Query:
    """A well-formed query for one of the models, with data the model accepts (ids in range)."""
    model = draw(st.sampled_from(models))
    if model in ID_RANGES:
        arrays = example_inputs(model, draw(st.integers(1, 8)), seed=draw(st.integers(0, 2**16)))
    elif model == "text":
        batch, width = draw(st.integers(1, TEXT_MAX_BATCH)), draw(st.integers(0, 3))
        words = draw(st.lists(_texts, min_size=batch * width, max_size=batch * width))
        arrays = {"text": np.array([w.encode() for w in words], dtype=np.object_).reshape(batch, width)}
    else:
        rows = draw(st.integers(0, 5))
        values = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=rows * 2, max_size=rows * 2))
        arrays = {"x": np.array(values, dtype=np.float32).reshape(rows, 2)}
    inputs = [tensor_of(name, arr) for name, arr in arrays.items()]
    inputs = draw(st.permutations(inputs))
    outputs = draw(st.sampled_from([None, OUTPUTS[model]]))
    rid = draw(st.sampled_from(["", "r-1", "ünï"]))
    return Query(model, list(inputs), outputs, version=draw(st.sampled_from(["", "1"])), id=rid)


# Dimension values that break things: negative, zero, 2**31, int64 extremes, products that overflow int64.
HOSTILE_DIMS = st.one_of(
    st.sampled_from([-(2**63), -(2**31), -2, -1, 0, 1, 2, 3, 8, 13, 1024, 1025, 2**31, 2**32, 2**62, 2**63 - 1]),
    st.integers(-(2**63), 2**63 - 1),
)
hostile_shapes = st.lists(HOSTILE_DIMS, max_size=6)
hostile_names = st.one_of(
    st.sampled_from(["", "dense_features ", "DENSE_FEATURES", "x\x00", "score", "text_out", "sparse_ids"]),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    st.text(min_size=300, max_size=400, alphabet="n"),  # long names must not blow up the error's size
)


BREAKAGES = (
    "dtype", "shape", "size", "duplicate", "missing", "extra", "rename", "unknown-output", "duplicate-output",
    "unknown-model", "unknown-version", "bytes-prefix", "batch-mismatch", "batch-too-large",
)


@st.composite
def broken_queries(draw: st.DrawFn, kind: str) -> tuple[Query, bool]:
    """A valid query with one thing made wrong (`kind`, one of BREAKAGES): (query, whether it is invalid
    for sure)."""
    q = draw(valid_queries(("text",) if kind == "bytes-prefix" else MODELS))
    q = replace(q, inputs=[replace(t) for t in q.inputs])
    i = draw(st.integers(0, len(q.inputs) - 1))
    t = q.inputs[i]
    sure = True
    if kind == "dtype":
        t.datatype = draw(st.sampled_from([d for d in DATATYPES if d != t.datatype] + ["", "fp32", "FP8", "STRING"]))
    elif kind == "shape":
        t.shape = draw(hostile_shapes.filter(lambda s: s != t.shape))
        sure = False  # a wildcard dim may make the new shape fit the data
    elif kind == "size":
        cut = draw(st.integers(1, 16))
        t.data = t.data[:-cut] if draw(st.booleans()) and len(t.data) >= cut else t.data + bytes(cut)
        sure = t.datatype != "BYTES"  # zeros appended to BYTES data are whole empty elements
    elif kind == "duplicate":
        q.inputs.insert(draw(st.integers(0, len(q.inputs))), replace(t))
    elif kind == "missing":
        del q.inputs[i]
    elif kind == "extra":
        q.inputs.append(Tensor(draw(hostile_names.filter(lambda n: n not in {x.name for x in q.inputs})),
                               t.datatype, list(t.shape), t.data))
    elif kind == "rename":
        t.name = draw(hostile_names.filter(lambda n: n not in {x.name for x in q.inputs}))
    elif kind == "unknown-output":
        q.outputs = [*(q.outputs or []), draw(hostile_names.filter(lambda n: n not in OUTPUTS[q.model]))]
    elif kind == "duplicate-output":
        q.outputs = OUTPUTS[q.model] * 2
    elif kind == "unknown-model":
        q.model = draw(hostile_names.filter(lambda n: n not in MODELS and n.strip() != "" and "/" not in n))
    elif kind == "unknown-version":
        q.version = draw(st.sampled_from(["0", "2", "01", "-1", "latest", "1 "]))
    elif kind == "bytes-prefix":
        if t.datatype == "BYTES":
            t.data = draw(bad_bytes_layouts(element_count([max(d, 0) for d in t.shape]), t.data))
        else:
            sure = len(t.data) > 0  # halving no data leaves it valid
            t.data = t.data[:len(t.data) // 2]
    elif kind == "batch-mismatch":
        if q.model in ("dlrm", "ncf") and len(q.inputs) > 1:
            per = len(t.data) // t.shape[0]
            t.shape = [t.shape[0] + 1, *t.shape[1:]]
            t.data = t.data + t.data[:per]
        else:
            t.shape = [-1, *t.shape]
    elif kind == "batch-too-large":
        if q.model == "ncf":
            batch = draw(st.integers(1025, 1100))
            q.inputs = [Tensor(x.name, "INT64", [batch, 1], bytes(8 * batch)) for x in q.inputs]
        elif q.model == "text":
            t.shape = [TEXT_MAX_BATCH + 1, 0]
            t.data = b""
        else:
            t.shape = [0, *t.shape[1:]] if q.model == "dlrm" else [1, *t.shape]
            t.data = b"" if q.model == "dlrm" else t.data
    return q, sure


@st.composite
def bad_bytes_layouts(draw: st.DrawFn, count: int, good: bytes) -> bytes:
    """A BYTES tensor whose length prefixes do not describe `count` elements ending exactly at its end."""
    how = draw(st.sampled_from(["past-end", "short-tail", "huge", "extra-element", "missing-element", "random"]))
    if how == "past-end":
        return good + (len(good) + 5).to_bytes(4, "little") + b"abc"
    if how == "short-tail":
        return good + draw(st.binary(min_size=1, max_size=3))
    if how == "huge":
        return (2**32 - 1).to_bytes(4, "little") + good
    if how == "extra-element":
        return good + serialize_bytes([b"x"])
    if how == "missing-element" and count > 0:
        return serialize_bytes(deserialize_bytes(good)[:-1])
    return draw(st.binary(max_size=64).filter(lambda b: not _bytes_layout_fits(b, count)))


def _bytes_layout_fits(raw: bytes, count: int) -> bool:
    try:
        return len(deserialize_bytes(raw)) == count
    except Exception:  # noqa: BLE001 - any layout error means it does not fit
        return False


# ---------------------------------------------------------------- expectations


def query_arrays(q: Query) -> dict[str, np.ndarray]:
    """The query's tensors as arrays, as ONNX Runtime takes them."""
    out: dict[str, np.ndarray] = {}
    for t in q.inputs:
        if t.datatype == "BYTES":
            out[t.name] = np.array([e.decode() for e in deserialize_bytes(t.data)], dtype=np.object_).reshape(t.shape)
        else:
            out[t.name] = np.frombuffer(t.data, dtype=WIRE_NP[t.datatype]).reshape(t.shape)
    return out


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want), f"outputs {sorted(got)}, expected {sorted(want)}"
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, f"{name}: shape {g.shape}, expected {w.shape}"
        if w.dtype == np.object_:
            assert g.tolist() == w.tolist()
        else:
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


def bytes_outputs(arr: np.ndarray) -> np.ndarray:
    """A reference BYTES output as the front end returns it (str elements)."""
    return np.array([str(e) for e in arr.ravel()], dtype=np.object_).reshape(arr.shape)
