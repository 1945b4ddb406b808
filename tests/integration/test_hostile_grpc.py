"""Hostile input to the gRPC front end over a real socket: random and truncated protobuf, valid messages
with wrong contents, huge / negative / zero shapes, lying raw sizes, bad BYTES prefixes. Every request
gets INVALID_ARGUMENT / NOT_FOUND with a reason, or succeeds with ONNX Runtime's own outputs; the
server keeps serving (a valid query is checked after each property)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from kairosd.server.tensors import CONTENTS_FIELD, WIRE_NP, deserialize_bytes
from tests.hostile_strategies import (
    BREAKAGES,
    HOSTILE,
    TIMEOUT_S,
    HostileServers,
    Query,
    assert_close,
    broken_queries,
    build_repository,
    bytes_outputs,
    hostile_names,
    hostile_shapes,
    valid_queries,
)

METHOD = "/inference.GRPCInferenceService/ModelInfer"
CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


class Client:
    """Raw-bytes ModelInfer over one channel: sends what tritonclient would refuse to build."""

    def __init__(self, servers: HostileServers) -> None:
        self.servers = servers
        self.channel = grpc.insecure_channel(f"127.0.0.1:{servers.grpc_port}")
        self.infer = self.channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    def send(self, data: bytes) -> tuple[grpc.StatusCode, bytes | str]:
        """(OK, response bytes) or (error code, details)."""
        try:
            return grpc.StatusCode.OK, self.infer(data, timeout=TIMEOUT_S)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    servers = HostileServers(build_repository(tmp_path_factory.mktemp("hostile-grpc") / "models"))
    c = Client(servers)
    yield c
    c.channel.close()
    servers.close()


@pytest.fixture(autouse=True)
def still_serves(client: Client) -> Iterator[None]:
    """After each hostile batch the server answers a valid query correctly."""
    yield
    arrays = {"user_id": np.array([[3], [9]], dtype=np.int64), "item_id": np.array([[1], [4]], dtype=np.int64)}
    q = Query("ncf", [])
    request = encode(q, contents=False)
    for name, arr in arrays.items():
        request.inputs.add(name=name, datatype="INT64", shape=arr.shape)
        request.raw_input_contents.append(arr.tobytes())
    code, body = client.send(request.SerializeToString())
    assert code == grpc.StatusCode.OK, f"server no longer serves: {code} {body!r}"
    assert isinstance(body, bytes)
    assert_close(response_arrays(pb.ModelInferResponse.FromString(body)), client.servers.service.run("ncf", arrays))


# ---------------------------------------------------------------- encoding and judging


def encode(q: Query, contents: bool) -> pb.ModelInferRequest:
    """The query as a ModelInferRequest: raw_input_contents, or typed contents where the data allows."""
    request = pb.ModelInferRequest(model_name=q.model, model_version=q.version, id=q.id)
    typed = contents and all(_typed_values(t.datatype, t.data) is not None for t in q.inputs)
    for t in q.inputs:
        tensor = request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        if typed:
            values = _typed_values(t.datatype, t.data)
            assert values is not None
            getattr(tensor.contents, CONTENTS_FIELD[t.datatype]).extend(values)
        else:
            request.raw_input_contents.append(t.data)
    for name in q.outputs or ():
        request.outputs.add(name=name)
    return request


def _typed_values(datatype: str, data: bytes) -> list | None:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        return None
    if datatype == "BYTES":
        try:
            return deserialize_bytes(data)
        except Exception:  # noqa: BLE001 - not expressible as typed contents: sent raw
            return None
    dtype = WIRE_NP[datatype]
    if len(data) % dtype.itemsize:
        return None
    return np.frombuffer(data, dtype=dtype).tolist()


def request_arrays(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's inputs decoded the way the test understands the protocol (raw or typed)."""
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        shape = list(t.shape)
        if request.raw_input_contents:
            raw = request.raw_input_contents[i]
            if t.datatype == "BYTES":
                values = [e.decode() for e in deserialize_bytes(raw)]
                out[t.name] = np.array(values, dtype=np.object_).reshape(shape)
            else:
                out[t.name] = np.frombuffer(raw, dtype=WIRE_NP[t.datatype]).reshape(shape)
        else:
            values = list(getattr(t.contents, CONTENTS_FIELD[t.datatype]))
            if t.datatype == "BYTES":
                out[t.name] = np.array([v.decode() for v in values], dtype=np.object_).reshape(shape)
            else:
                out[t.name] = np.array(values, dtype=WIRE_NP[t.datatype]).reshape(shape)
    return out


def response_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for t, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if t.datatype == "BYTES":
            values = [e.decode() for e in deserialize_bytes(raw)]
            out[t.name] = np.array(values, dtype=np.object_).reshape(list(t.shape))
        else:
            out[t.name] = np.frombuffer(raw, dtype=WIRE_NP[t.datatype]).reshape(list(t.shape))
    return out


def judge(client: Client, data: bytes, must_fail: bool = False) -> grpc.StatusCode:
    """Send `data`; a failure must be a client error with a reason, a success ONNX Runtime's answer to
    the request as the test parses it."""
    try:
        return _judge(client, data, must_fail)
    except AssertionError:
        client.servers.settle()
        raise


def _judge(client: Client, data: bytes, must_fail: bool) -> grpc.StatusCode:
    code, body = client.send(data)
    if code != grpc.StatusCode.OK:
        assert code in CLIENT_CODES, f"{code}: {body!r}"
        assert isinstance(body, str) and len(body) > 10, f"{code} without a reason: {body!r}"
        assert len(body) < 2000, f"reason of {len(body)} characters"
        return code
    assert not must_fail, "an invalid request succeeded"
    assert isinstance(body, bytes)
    request = pb.ModelInferRequest.FromString(data)
    response = pb.ModelInferResponse.FromString(body)
    feeds = request_arrays(request)
    names = [o.name for o in request.outputs] or None
    want = client.servers.service.run(request.model_name, feeds, names)
    want = {k: bytes_outputs(v) if v.dtype == np.object_ else v for k, v in want.items()}
    assert_close(response_arrays(response), want)
    assert response.id == request.id and response.model_name == request.model_name
    return code


# ---------------------------------------------------------------- properties


@HOSTILE
@given(q=valid_queries(), contents=st.booleans())
def test_valid_queries_match_onnxruntime(client: Client, q: Query, contents: bool) -> None:
    assert judge(client, encode(q, contents).SerializeToString()) == grpc.StatusCode.OK


@HOSTILE
@given(data=st.one_of(st.binary(max_size=256), st.binary(min_size=1, max_size=8).map(lambda b: b * 64)))
def test_random_bytes(client: Client, data: bytes) -> None:
    judge(client, data)


@HOSTILE
@given(q=valid_queries(), contents=st.booleans(), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_valid_messages(client: Client, q: Query, contents: bool, cut: float) -> None:
    data = encode(q, contents).SerializeToString()
    judge(client, data[: int(len(data) * cut)])


@HOSTILE
@given(q=valid_queries(), contents=st.booleans(), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                          st.integers(1, 255)), min_size=1, max_size=4))
def test_corrupted_valid_messages(client: Client, q: Query, contents: bool, flips: list[tuple[float, int]]) -> None:
    data = bytearray(encode(q, contents).SerializeToString())
    for where, mask in flips:
        data[int(len(data) * where)] ^= mask
    judge(client, bytes(data))


@pytest.mark.parametrize("kind", BREAKAGES)
@settings(HOSTILE, max_examples=max(10, HOSTILE.max_examples // 5))
@given(data=st.data(), contents=st.booleans())
def test_wrong_field_contents(client: Client, kind: str, data: st.DataObject, contents: bool) -> None:
    """One thing wrong in an otherwise valid query: dtype, shape, sizes, duplicate / missing / extra /
    renamed inputs, unknown or duplicate outputs, unknown model or version, BYTES prefixes, batch sizes."""
    q, sure = data.draw(broken_queries(kind))
    code = judge(client, encode(q, contents).SerializeToString(), must_fail=sure)
    if kind in ("unknown-model", "unknown-version"):
        assert code == grpc.StatusCode.NOT_FOUND


@HOSTILE
@given(q=valid_queries(("dlrm", "text", "pairs")), shape=hostile_shapes, contents=st.booleans())
def test_hostile_shapes(client: Client, q: Query, shape: list[int], contents: bool) -> None:
    """Huge products ([2**31, 2**31], past int64), negative and zero dimensions, on fixed and wildcard dims."""
    q.inputs[0].shape = shape
    judge(client, encode(q, contents).SerializeToString())


@HOSTILE
@given(
    q=valid_queries(),
    how=st.sampled_from(["both", "too-few-raw", "too-many-raw", "wrong-field", "shared-memory", "param", "names"]),
    name=hostile_names,
    value=st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=8)),
)
def test_protocol_misuse(client: Client, q: Query, how: str, name: str, value: bool | int | float | str) -> None:
    """Raw and typed contents mixed, raw counts off, contents in the wrong field, shared memory, and
    unknown parameters (accepted: they are passed on)."""
    request = encode(q, contents=False)
    must_fail = True
    t = request.inputs[0]
    if how == "both":
        t.contents.bytes_contents.append(b"x")
    elif how == "too-few-raw":
        del request.raw_input_contents[-1]
        must_fail = len(request.raw_input_contents) > 0 or len(request.inputs) > 0
    elif how == "too-many-raw":
        request.raw_input_contents.append(b"\x00" * 8)
    elif how == "wrong-field":
        del request.raw_input_contents[:]
        for x in request.inputs:
            x.contents.uint64_contents.append(1)
    elif how == "shared-memory":
        t.parameters["shared_memory_region"].string_param = name
    elif how == "param":
        must_fail = False
        target = request.parameters if len(name) % 2 else t.parameters
        if name.startswith("shared_memory"):
            name = "x" + name
        p = target[name]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = value
    else:
        request.model_name = name
        must_fail = name not in ("dlrm", "ncf", "text", "pairs")
    judge(client, request.SerializeToString(), must_fail=must_fail)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x0a\x04dl\xffm", "ModelInferRequest"),  # invalid UTF-8 in model_name (a proto3 string)
        (b"\x0a\x04dlrm" + b"\x22\x0b\x0a\x04dens\xc3\x28" + b"\x12\x04FP32", "ModelInferRequest"),  # ... in an input name
        (b"\x0a\x04dlrm\x22\xff\xff\xff\xff\x0f", "ModelInferRequest"),  # an input longer than the message
        (b"\x0a\x04dlrm" + b"\x33" * 200_000, "ModelInferRequest"),  # 200,000 unterminated groups, nested
        (b"\x0a\x08deadbeef", "'deadbeef'"),
    ],
    ids=["utf8-model", "utf8-input", "length-overrun", "nested-groups", "unknown-model"],
)
def test_malformed_protobuf_examples(client: Client, data: bytes, reason: str) -> None:
    code, body = client.send(data)
    assert code in CLIENT_CODES and isinstance(body, str) and reason in body, (code, body)


def test_long_names_give_short_reasons(client: Client) -> None:
    """An error naming a 100 kB input must not exceed gRPC's trailer limits (the client would see INTERNAL)."""
    request = pb.ModelInferRequest(model_name="dlrm")
    request.inputs.add(name="n" * 100_000, datatype="FP32", shape=[1, 13])
    request.raw_input_contents.append(bytes(52))
    code, body = client.send(request.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and isinstance(body, str) and "nnnn" in body and len(body) < 2000
    code, body = client.send(pb.ModelInferRequest(model_name="m" * 100_000).SerializeToString())
    assert code == grpc.StatusCode.NOT_FOUND and isinstance(body, str) and len(body) < 2000


def test_huge_shape_products(client: Client) -> None:
    for shape in ([2**31, 2**31], [1, 2**62, 2**62], [1] + [2**63 - 1] * 64, [2**31, 13]):
        request = pb.ModelInferRequest(model_name="text")
        request.inputs.add(name="text", datatype="BYTES", shape=shape)
        request.raw_input_contents.append(b"\x01\x00\x00\x00a")
        code, body = client.send(request.SerializeToString())
        assert code == grpc.StatusCode.INVALID_ARGUMENT and isinstance(body, str) and "'text'" in body, (shape, body)

