"""Tests for kairosd.server.tensors: raw ↔ typed contents ↔ JSON, and Triton's BYTES layout."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from kairosd.errors import InvalidInput
from kairosd.server import tensors


def test_serialize_bytes_matches_tritonclient() -> None:
    values = np.array([b"a", b"", "héllo".encode(), b"\x00\x01"], dtype=np.object_)
    ours = tensors.serialize_bytes(list(values))
    assert ours == serialize_byte_tensor(values).item()
    assert tensors.deserialize_bytes(ours) == list(values)
    assert list(deserialize_bytes_tensor(ours)) == list(values)


def test_serialize_bytes_encodes_str_as_utf8() -> None:
    assert tensors.serialize_bytes(["é"]) == b"\x02\x00\x00\x00\xc3\xa9"


@pytest.mark.parametrize("raw", [b"\x05\x00\x00\x00abc", b"\x01\x00"])
def test_deserialize_bytes_rejects_truncation(raw: bytes) -> None:
    with pytest.raises(InvalidInput, match="truncated"):
        tensors.deserialize_bytes(raw)


def test_json_to_raw_flat_and_nested_agree() -> None:
    flat = tensors.json_to_raw([1.5, 2.5, 3.5, 4.5], "FP32", [2, 2], "x")
    nested = tensors.json_to_raw([[1.5, 2.5], [3.5, 4.5]], "FP32", [2, 2], "x")
    assert flat == nested == np.array([1.5, 2.5, 3.5, 4.5], dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT64", [1, -2], np.array([1, -2], dtype="<i8")),
        ("BOOL", [True, False], np.array([True, False])),
        ("UINT8", [0, 255], np.array([0, 255], dtype=np.uint8)),
        ("FP16", [0.5, 1.0], np.array([0.5, 1.0], dtype="<f2")),
        ("INT32", [[7], [8]], np.array([7, 8], dtype="<i4")),
    ],
)
def test_json_to_raw_dtypes(datatype: str, data: list, expected: np.ndarray) -> None:
    assert tensors.json_to_raw(data, datatype, [2, 1] if datatype == "INT32" else [2], "x") == expected.tobytes()


def test_json_to_raw_bytes() -> None:
    assert tensors.json_to_raw([["ab"], ["c"]], "BYTES", [2, 1], "s") == tensors.serialize_bytes([b"ab", b"c"])


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "message"),
    [
        ([1.0, 2.0, 3.0], "FP32", [2, 2], "3 elements in data, shape \\[2, 2\\] needs 4"),
        ([[1.0, 2.0], [3.0]], "FP32", [2, 2], "not a \\(nested\\) list"),
        (["x", "y"], "FP32", [2], "data for FP32 must be a \\(nested\\) list of JSON numbers"),
        ([None], "FP32", [1], "JSON numbers"),
        ([1.5], "INT64", [1], "JSON integers in"),
        ([True, False], "INT32", [2], "JSON integers in"),
        ([-1], "UINT8", [1], "JSON integers in \\[0, 255\\]"),
        ([2**63], "INT64", [1], "JSON integers in"),
        ([2**64], "UINT64", [1], "JSON integers in"),
        ([1], "BOOL", [1], "JSON booleans"),
        ([1e300], "FP32", [1], "numbers within"),
        ({"a": 1}, "FP32", [1], "JSON numbers"),
        ([1, 2], "BYTES", [2], "BYTES data must be strings"),
        ([1.0], "BF16", [1], "BF16 must be sent as binary"),
        ([1.0], "FP8", [1], "unknown datatype"),
    ],
)
def test_json_to_raw_errors_name_the_input(data: list, datatype: str, shape: list[int], message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        tensors.json_to_raw(data, datatype, shape, "dense")
    assert "'dense'" in str(info.value)


def test_raw_to_json_round_trips() -> None:
    arr = np.array([[0.25, -1.0], [3.0, 4.5]], dtype=np.float32)
    assert tensors.raw_to_json(arr.tobytes(), "FP32") == [0.25, -1.0, 3.0, 4.5]
    assert tensors.raw_to_json(np.array([1, 0], dtype=np.bool_).tobytes(), "BOOL") == [True, False]
    assert tensors.raw_to_json(tensors.serialize_bytes([b"hi", b""]), "BYTES") == ["hi", ""]


def test_raw_to_json_bf16_is_high_half_of_fp32() -> None:
    fp32 = np.array([1.5, -2.0], dtype=np.float32)
    bf16 = (fp32.view(np.uint32) >> 16).astype("<u2")
    assert tensors.raw_to_json(bf16.tobytes(), "BF16") == [1.5, -2.0]


def test_raw_to_json_rejects_partial_elements() -> None:
    with pytest.raises(InvalidInput, match="whole number"):
        tensors.raw_to_json(b"\x00\x00\x00", "FP32", "y")


def test_contents_to_raw() -> None:
    c = service_pb2.InferTensorContents(int64_contents=[3, 4, 5, 6])
    assert tensors.contents_to_raw(c, "INT64", [2, 2], "ids") == np.array([3, 4, 5, 6], dtype="<i8").tobytes()
    c = service_pb2.InferTensorContents(int_contents=[-1, 2])
    assert tensors.contents_to_raw(c, "INT16", [2], "s") == np.array([-1, 2], dtype="<i2").tobytes()
    c = service_pb2.InferTensorContents(bytes_contents=[b"x", b"yz"])
    assert tensors.contents_to_raw(c, "BYTES", [2], "b") == tensors.serialize_bytes([b"x", b"yz"])


def test_contents_to_raw_errors() -> None:
    c = service_pb2.InferTensorContents(fp32_contents=[1.0])
    with pytest.raises(InvalidInput, match="'w': 1 elements in contents.fp32_contents, shape \\[2\\] needs 2"):
        tensors.contents_to_raw(c, "FP32", [2], "w")
    with pytest.raises(InvalidInput, match="FP16 has no typed contents"):
        tensors.contents_to_raw(c, "FP16", [1], "w")


def test_element_count() -> None:
    assert tensors.element_count([]) == 1
    assert tensors.element_count([3, 0, 2]) == 0
    assert tensors.element_count([4, 13]) == 52


def test_json_to_raw_empty_tensor() -> None:
    assert tensors.json_to_raw([], "FP32", [0, 2], "x") == b""


@pytest.mark.parametrize(
    ("raw", "count"),
    [(b"", 0), (b"\x00\x00\x00\x00", 1), (tensors.serialize_bytes([b"ab", b"", b"xyz"]), 3)],
)
def test_count_bytes(raw: bytes, count: int) -> None:
    assert tensors.count_bytes(raw, "input 't'") == count


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x05\x00\x00\x00abc", "element 0 declares 5 bytes at offset 0, past the end of the 7 bytes"),
        (b"\x01\x00\x00\x00a\x01", "1 trailing bytes after element 1"),
        (b"\xff\xff\xff\xff", "element 0 declares 4294967295 bytes"),
    ],
)
def test_count_bytes_rejects_bad_prefixes(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        tensors.count_bytes(raw, "input 't'")
    assert str(info.value).startswith("input 't': BYTES data truncated")


_EDGE_VALUES = [0, 1, -1, 127, 128, -129, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -(2**31) - 1, 2**32, 2**63 - 1,
                2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 0.0, 1.5, -2.25, 1e-40, 3.4e38, 3.5e38, 1e300, 65504.0,
                65520.0, float("inf"), float("nan"), True, False, "1", None, 2**53 + 1, 10**400, [1]]


def test_json_to_raw_fast_path_matches_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short flat lists are packed with struct; every pair of edge values, for every datatype and a
    right and a wrong shape, gives the same bytes or the same error as the numpy path."""
    import itertools

    def convert(data: list[object], datatype: str, shape: list[int], fast_max: int) -> bytes | str:
        monkeypatch.setattr(tensors, "_FLAT_MAX", fast_max)
        try:
            return tensors.json_to_raw(data, datatype, shape, "x")
        except InvalidInput as e:
            return str(e)

    for datatype in ("BOOL", "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64", "FP16", "FP32",
                     "FP64", "BYTES"):
        for a, b in itertools.product(_EDGE_VALUES, _EDGE_VALUES):
            for shape in ([2], [3]):
                slow, fast = convert([a, b], datatype, shape, 0), convert([a, b], datatype, shape, 64)
                if isinstance(slow, bytes) and isinstance(fast, bytes) and datatype != "BYTES":
                    dt = tensors.WIRE_NP[datatype]
                    assert np.array_equal(np.frombuffer(slow, dt), np.frombuffer(fast, dt), equal_nan=dt.kind == "f")
                else:
                    assert slow == fast, (datatype, a, b, shape)


def test_json_uint64_on_both_sides_of_2_63() -> None:
    """numpy infers [0, 2^63] as float64; such UINT64 data is still taken exactly, short or long, flat or
    nested, and anything not an integer in [0, 2^64) is still refused."""
    for data, shape in (([0, 2**63], [2]), ([2**64 - 1, 1] * 50, [100]), ([[0], [2**63]], [2, 1])):
        raw = tensors.json_to_raw(data, "UINT64", shape, "x")
        flat = [v for row in data for v in (row if isinstance(row, list) else [row])]
        assert np.frombuffer(raw, "<u8").tolist() == flat
    for bad in ([0.5, 2**63], [-1, 2**63], [True, 2**63], [0, 2**64]):
        with pytest.raises(InvalidInput, match="UINT64"):
            tensors.json_to_raw(bad * 40, "UINT64", [len(bad) * 40], "x")
