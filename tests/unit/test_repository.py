"""Reading a Triton model repository: the committed models, KServe metadata and config, and every refusal."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from kairosd.errors import ConfigError
from kairosd.repository import DTYPE_TO_NP, NP_TO_DTYPE, ModelSpec, TensorSpec, load_repository

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"

GOOD_CONFIG = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] }, { name: "ids", data_type: TYPE_INT64, dims: [ -1 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]
"""


def make_model_dir(root: Path, name: str = "m", config: str = GOOD_CONFIG, versions: tuple[str, ...] = ("1",)) -> Path:
    """A model directory with `config` and an (empty) model.onnx in each version directory."""
    model_dir = root / name
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config)
    for version in versions:
        (model_dir / version).mkdir()
        (model_dir / version / "model.onnx").write_bytes(b"")
    return model_dir


@pytest.fixture(scope="module")
def repo() -> dict[str, ModelSpec]:
    return load_repository(REPOSITORY)


def test_committed_repository_has_both_models(repo: dict[str, ModelSpec]) -> None:
    assert sorted(repo) == ["dlrm", "ncf"]
    dlrm = repo["dlrm"]
    assert (dlrm.name, dlrm.version, dlrm.platform, dlrm.max_batch_size) == ("dlrm", "1", "onnxruntime_onnx", 1024)
    assert dlrm.inputs == (
        TensorSpec("dense_features", "FP32", (13,), np.dtype(np.float32)),
        TensorSpec("sparse_ids", "INT64", (8,), np.dtype(np.int64)),
    )
    assert dlrm.outputs == (TensorSpec("click_probability", "FP32", (1,), np.dtype(np.float32)),)
    assert dlrm.onnx_path == REPOSITORY / "dlrm" / "1" / "model.onnx"
    assert dlrm.onnx_path.is_absolute() and dlrm.onnx_path.is_file()
    assert [t.name for t in repo["ncf"].inputs] == ["user_id", "item_id"]
    assert repo["ncf"].outputs[0].name == "score"


def test_input_lookup(repo: dict[str, ModelSpec]) -> None:
    assert repo["ncf"].input("item_id") == TensorSpec("item_id", "INT64", (1,), np.dtype(np.int64))
    assert repo["ncf"].input("score") is None


def test_metadata_pb_prepends_the_batch_dim_like_triton(repo: dict[str, ModelSpec]) -> None:
    md = repo["dlrm"].metadata_pb()
    assert isinstance(md, service_pb2.ModelMetadataResponse)
    assert (md.name, list(md.versions), md.platform) == ("dlrm", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [
        ("dense_features", "FP32", [-1, 13]),
        ("sparse_ids", "INT64", [-1, 8]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == [("click_probability", "FP32", [-1, 1])]


def test_metadata_json_is_the_rest_form(repo: dict[str, ModelSpec]) -> None:
    assert repo["ncf"].metadata_json() == {
        "name": "ncf",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "user_id", "datatype": "INT64", "shape": [-1, 1]},
            {"name": "item_id", "datatype": "INT64", "shape": [-1, 1]},
        ],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}],
    }


def test_config_pb_and_json(repo: dict[str, ModelSpec]) -> None:
    spec = repo["dlrm"]
    response = spec.config_pb()
    assert isinstance(response, service_pb2.ModelConfigResponse)
    assert response.config == spec.config
    as_json = spec.config_json()
    assert as_json["name"] == "dlrm" and as_json["max_batch_size"] == 1024
    assert as_json["platform"] == "onnxruntime_onnx"
    assert as_json["input"][0] == {"name": "dense_features", "data_type": "TYPE_FP32", "dims": ["13"]}
    assert "dynamic_batching" not in as_json


def test_dtype_tables_round_trip() -> None:
    assert DTYPE_TO_NP["FP32"] == np.float32 and DTYPE_TO_NP["INT64"] == np.int64
    assert all(NP_TO_DTYPE[np_dtype] == name for name, np_dtype in DTYPE_TO_NP.items())
    assert NP_TO_DTYPE[np.dtype("float32")] == "FP32"


def test_an_unbatched_model_has_no_batch_dim(tmp_path: Path) -> None:
    make_model_dir(tmp_path, config=GOOD_CONFIG.replace("max_batch_size: 8", "max_batch_size: 0"))
    spec = load_repository(tmp_path)["m"]
    assert [list(t.shape) for t in spec.metadata_pb().inputs] == [[4], [-1]]


def test_empty_name_and_onnxruntime_backend_are_filled_in(tmp_path: Path) -> None:
    config = GOOD_CONFIG.replace('name: "m"', "").replace('platform: "onnxruntime_onnx"', 'backend: "onnxruntime"')
    make_model_dir(tmp_path, config=config)
    spec = load_repository(tmp_path)["m"]
    assert (spec.name, spec.platform) == ("m", "onnxruntime_onnx")


def test_the_newest_version_is_served(tmp_path: Path) -> None:
    make_model_dir(tmp_path, versions=("1", "3", "2"))
    spec = load_repository(tmp_path)["m"]
    assert spec.version == "3" and spec.onnx_path == tmp_path.resolve() / "m" / "3" / "model.onnx"


def test_default_model_filename_is_honoured(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, config=GOOD_CONFIG + 'default_model_filename: "net.onnx"\n')
    (model_dir / "1" / "model.onnx").rename(model_dir / "1" / "net.onnx")
    assert load_repository(tmp_path)["m"].onnx_path.name == "net.onnx"


def test_hidden_directories_are_skipped(tmp_path: Path) -> None:
    make_model_dir(tmp_path)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    assert list(load_repository(tmp_path)) == ["m"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("name: m platform", "not a valid Triton ModelConfig"),
        ('name: "n"', "name 'n' must equal its directory name 'm'"),
        (GOOD_CONFIG.replace("onnxruntime_onnx", "tensorrt_plan"), "platform 'tensorrt_plan'.*allowed: onnxruntime_"),
        (GOOD_CONFIG.replace("max_batch_size: 8", "max_batch_size: -1"), "max_batch_size must be >= 0"),
        ('name: "m" platform: "onnxruntime_onnx" output [ { name: "y" dims: [1] } ]', "at least one input"),
        (GOOD_CONFIG.replace("TYPE_INT64", "TYPE_BF16"), "input 'ids' has data_type TYPE_BF16; allowed: "),
        (GOOD_CONFIG.replace("dims: [ 4 ]", "dims: [ ]"), "input 'x' has no dims"),
        (GOOD_CONFIG.replace("dims: [ 4 ]", "dims: [ 0 ]"), r"input 'x' dims \[0\]: each must be -1 or > 0"),
        (GOOD_CONFIG.replace('name: "ids"', 'name: "x"'), "duplicate input names"),
        (GOOD_CONFIG.replace("dims: [ 4 ] }", "dims: [ 4 ] reshape: { shape: [ 2, 2 ] } }"), "reshape"),
    ],
)
def test_bad_configs_are_refused_naming_the_file(tmp_path: Path, config: str, message: str) -> None:
    model_dir = make_model_dir(tmp_path, config=config)
    with pytest.raises(ConfigError, match=message) as info:
        load_repository(tmp_path)
    assert str(model_dir / "config.pbtxt") in str(info.value)


def test_missing_pieces_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        load_repository(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no model directories"):
        load_repository(tmp_path)

    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match=r"m/config.pbtxt: missing"):
        load_repository(tmp_path)
    shutil.rmtree(tmp_path / "m")

    model_dir = make_model_dir(tmp_path, versions=())
    with pytest.raises(ConfigError, match="no version directory"):
        load_repository(tmp_path)
    (model_dir / "1").mkdir()
    with pytest.raises(ConfigError, match=r"m/1/model.onnx: missing"):
        load_repository(tmp_path)
