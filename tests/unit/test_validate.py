"""Tests for kairosd.server.validate: signature checks, batch size, typed contents moved to raw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.grpc.model_config_pb2 import ModelConfig

from kairosd.errors import InvalidInput, ModelNotFound
from kairosd.repository import DTYPE_TO_NP, ModelSpec, TensorSpec
from kairosd.server.validate import resolve_model, validate_request


def make_tensor(name: str, datatype: str, dims: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name=name, datatype=datatype, dims=dims, np_dtype=DTYPE_TO_NP[datatype])


def make_spec(max_batch_size: int = 64, **kw: object) -> ModelSpec:
    """A DLRM-like signature: dense FP32 [B,13], sparse INT64 [B,-1] → prob FP32 [B,1]."""
    fields: dict[str, object] = dict(
        name="m",
        version="1",
        platform="onnxruntime_onnx",
        max_batch_size=max_batch_size,
        inputs=(make_tensor("dense", "FP32", (13,)), make_tensor("sparse", "INT64", (-1,))),
        outputs=(make_tensor("prob", "FP32", (1,)),),
        onnx_path=Path("/nonexistent/model.onnx"),
        config=ModelConfig(name="m"),
    )
    fields.update(kw)
    return ModelSpec(**fields)  # type: ignore[arg-type]


def make_request(batch: int = 4, sparse_width: int = 8, raw: bool = True) -> service_pb2.ModelInferRequest:
    dense = np.arange(batch * 13, dtype=np.float32).reshape(batch, 13)
    sparse = np.arange(batch * sparse_width, dtype=np.int64).reshape(batch, sparse_width)
    request = service_pb2.ModelInferRequest(model_name="m")
    d = request.inputs.add(name="dense", datatype="FP32", shape=dense.shape)
    s = request.inputs.add(name="sparse", datatype="INT64", shape=sparse.shape)
    if raw:
        request.raw_input_contents.extend([dense.tobytes(), sparse.tobytes()])
    else:
        d.contents.fp32_contents.extend(dense.ravel().tolist())
        s.contents.int64_contents.extend(sparse.ravel().tolist())
    return request


def test_returns_batch_size() -> None:
    assert validate_request(make_request(batch=5), make_spec()) == 5


def test_wildcard_dim_accepts_any_width() -> None:
    assert validate_request(make_request(batch=2, sparse_width=3), make_spec()) == 2


def test_inputs_in_any_order() -> None:
    request = make_request(batch=3)
    reordered = service_pb2.ModelInferRequest(model_name="m")
    reordered.inputs.extend([request.inputs[1], request.inputs[0]])
    reordered.raw_input_contents.extend([request.raw_input_contents[1], request.raw_input_contents[0]])
    assert validate_request(reordered, make_spec()) == 3


def test_typed_contents_become_raw_in_place() -> None:
    request = make_request(batch=2, raw=False)
    expected = make_request(batch=2)
    assert validate_request(request, make_spec()) == 2
    assert list(request.raw_input_contents) == list(expected.raw_input_contents)
    assert not any(t.HasField("contents") for t in request.inputs)


def test_typed_contents_with_wrong_count_names_input() -> None:
    request = make_request(batch=2, raw=False)
    request.inputs[1].contents.int64_contents.append(1)
    with pytest.raises(InvalidInput, match="'sparse'.*17 elements"):
        validate_request(request, make_spec())


def test_unknown_input_named() -> None:
    request = make_request()
    request.inputs[0].name = "dense_typo"
    with pytest.raises(InvalidInput, match="unexpected inference input 'dense_typo'.*dense, sparse"):
        validate_request(request, make_spec())


def test_missing_input_named() -> None:
    request = make_request()
    del request.inputs[1]
    del request.raw_input_contents[1]
    with pytest.raises(InvalidInput, match="missing input\\(s\\) sparse"):
        validate_request(request, make_spec())


def test_duplicate_input_named() -> None:
    request = make_request()
    request.inputs[1].CopyFrom(request.inputs[0])
    request.raw_input_contents[1] = request.raw_input_contents[0]
    with pytest.raises(InvalidInput, match="'dense' appears more than once"):
        validate_request(request, make_spec())


def test_wrong_datatype_named() -> None:
    request = make_request()
    request.inputs[1].datatype = "INT32"
    with pytest.raises(InvalidInput, match="'sparse'.*datatype INT32, expected INT64"):
        validate_request(request, make_spec())


def test_wrong_rank_named() -> None:
    request = make_request()
    request.inputs[0].shape[:] = [4 * 13]
    with pytest.raises(InvalidInput, match="'dense'.*shape \\[52\\], expected \\[batch, 13\\]"):
        validate_request(request, make_spec())


def test_wrong_dim_named() -> None:
    request = make_request()
    request.inputs[0].shape[:] = [4, 12]
    with pytest.raises(InvalidInput, match="'dense'.*does not match dims \\[13\\]"):
        validate_request(request, make_spec())


def test_inconsistent_batch_named() -> None:
    request = make_request(batch=4)
    request.inputs[1].shape[:] = [2, 16]
    with pytest.raises(InvalidInput, match="'sparse'.*batch size 2 differs from 4"):
        validate_request(request, make_spec())


def test_batch_over_model_maximum() -> None:
    with pytest.raises(InvalidInput, match="batch size 8 exceeds the maximum of 4"):
        validate_request(make_request(batch=8), make_spec(max_batch_size=4))


def test_batch_over_caller_maximum() -> None:
    assert validate_request(make_request(batch=8), make_spec()) == 8
    with pytest.raises(InvalidInput, match="maximum of 6"):
        validate_request(make_request(batch=8), make_spec(), max_batch=6)


def test_zero_batch_rejected() -> None:
    with pytest.raises(InvalidInput, match="batch size 0"):
        validate_request(make_request(batch=0), make_spec())


def test_raw_size_mismatch_named() -> None:
    request = make_request(batch=4)
    request.raw_input_contents[1] = request.raw_input_contents[1][:-8]
    with pytest.raises(InvalidInput, match="'sparse'.*248 bytes of raw data.*needs 256"):
        validate_request(request, make_spec())


def test_raw_count_mismatch() -> None:
    request = make_request()
    del request.raw_input_contents[1]
    with pytest.raises(InvalidInput, match="1 raw_input_contents for 2 inputs"):
        validate_request(request, make_spec())


def test_mixing_raw_and_contents_named() -> None:
    request = make_request()
    request.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="'dense' of model 'm': both raw_input_contents and contents"):
        validate_request(request, make_spec())


def test_input_without_data_named() -> None:
    request = make_request(raw=False)
    request.inputs[0].ClearField("contents")
    with pytest.raises(InvalidInput, match="'dense'.*no data"):
        validate_request(request, make_spec())


def _bytes_request(shape: list[int], raw: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="text", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(raw)
    return request


def test_bytes_input_counts_elements_not_bytes() -> None:
    spec = make_spec(inputs=(make_tensor("text", "BYTES", (1,)),))
    assert validate_request(_bytes_request([2, 1], b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"), spec) == 2


@pytest.mark.parametrize(
    ("shape", "raw", "message"),
    [
        ([2, 1], b"\x01\x00\x00\x00a", "1 BYTES elements in its data.*needs 2"),
        ([1, 1], b"\x01\x00\x00\x00a\x00\x00\x00\x00", "2 BYTES elements"),
        ([1, 1], b"\xff\xff\xff\xffa", "element 0 declares 4294967295 bytes"),
        ([1, 1], b"\x01\x00\x00\x00a\x01\x00", "2 trailing bytes after element 1"),
    ],
    ids=["too-few", "too-many", "prefix-past-end", "partial-prefix"],
)
def test_bytes_input_with_bad_length_prefixes_named(shape: list[int], raw: bytes, message: str) -> None:
    spec = make_spec(inputs=(make_tensor("text", "BYTES", (1,)),))
    with pytest.raises(InvalidInput, match=message) as info:
        validate_request(_bytes_request(shape, raw), spec)
    assert "'text'" in str(info.value)


def test_duplicate_output_refused() -> None:
    request = make_request()
    request.outputs.add(name="prob")
    request.outputs.add(name="prob")
    with pytest.raises(InvalidInput, match="prob requested more than once"):
        validate_request(request, make_spec())


def test_echoed_values_are_cut_short() -> None:
    """Error reasons echo names and shapes; a gRPC reason travels in a trailer of limited size."""
    request = make_request()
    request.inputs[0].name = "d" * 100_000
    with pytest.raises(InvalidInput, match=r"d\.\.\. \(100000 characters\)") as info:
        validate_request(request, make_spec())
    assert len(str(info.value)) < 300
    request = make_request(batch=1)
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([1] + [13] * 10_000)
    with pytest.raises(InvalidInput, match=r"\(10001 dims\)") as info:
        validate_request(request, make_spec())
    assert len(str(info.value)) < 300
    with pytest.raises(ModelNotFound) as not_found:
        resolve_model({}, "m" * 100_000)
    assert len(str(not_found.value)) < 300


def test_huge_shape_products_are_size_errors() -> None:
    request = make_request(batch=1)
    request.inputs[1].shape[1] = 2**62
    with pytest.raises(InvalidInput, match="'sparse'.*needs 36893488147419103232"):
        validate_request(request, make_spec())


def test_unknown_output_named() -> None:
    request = make_request()
    request.outputs.add(name="logits")
    with pytest.raises(InvalidInput, match="unexpected inference output 'logits'.*prob"):
        validate_request(request, make_spec())
    request.outputs[0].name = "prob"
    assert validate_request(request, make_spec()) == 4


def test_shared_memory_refused() -> None:
    request = make_request()
    request.inputs[0].parameters["shared_memory_region"].string_param = "r0"
    with pytest.raises(InvalidInput, match="shared-memory"):
        validate_request(request, make_spec())


def test_non_batching_model_is_batch_one() -> None:
    spec = make_spec(
        max_batch_size=0, inputs=(make_tensor("dense", "FP32", (4, 13)),), outputs=(make_tensor("prob", "FP32", (4,)),)
    )
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="dense", datatype="FP32", shape=[4, 13])
    request.raw_input_contents.append(bytes(4 * 13 * 4))
    assert validate_request(request, spec) == 1
    request.inputs[0].shape[:] = [1, 4, 13]
    with pytest.raises(InvalidInput, match="expected \\[4, 13\\]"):
        validate_request(request, spec)


def test_resolve_model() -> None:
    spec = make_spec()
    repo = {"m": spec}
    assert resolve_model(repo, "m") is spec
    assert resolve_model(repo, "m", "1") is spec
    with pytest.raises(ModelNotFound, match="'x' is not found"):
        resolve_model(repo, "x")
    with pytest.raises(ModelNotFound, match="'m' version 2 is not found"):
        resolve_model(repo, "m", "2")
