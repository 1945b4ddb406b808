"""The model builder: valid ONNX graphs of the promised shape, deterministic, matching the committed repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

from kairosd import cli, modelgen

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


@pytest.fixture(scope="module")
def models() -> dict[str, onnx.ModelProto]:
    return {name: build() for name, build in modelgen.BUILDERS.items()}


@pytest.fixture(scope="module")
def sessions(models: dict[str, onnx.ModelProto]) -> dict[str, ort.InferenceSession]:
    return {
        name: ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        for name, model in models.items()
    }


def test_models_are_valid_onnx_at_opset_17(models: dict[str, onnx.ModelProto]) -> None:
    for model in models.values():
        onnx.checker.check_model(model, full_check=True)
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_dlrm_is_a_few_megabytes_with_eight_tables(models: dict[str, onnx.ModelProto]) -> None:
    size_mb = models["dlrm"].ByteSize() / 1e6
    assert 3 <= size_mb <= 8, size_mb
    tables = {t.name: tuple(t.dims) for t in models["dlrm"].graph.initializer if t.name.startswith("emb_table_")}
    assert len(tables) == 8
    assert sorted(rows for rows, _ in tables.values()) == sorted(modelgen.DLRM_TABLE_ROWS)
    assert all(5_000 <= rows <= 20_000 and dim == modelgen.DLRM_EMBEDDING_DIM for rows, dim in tables.values())


@pytest.mark.parametrize("name", modelgen.MODEL_NAMES)
def test_signature_has_a_dynamic_batch_dim(models: dict[str, onnx.ModelProto], name: str) -> None:
    inputs, outputs = modelgen.MODEL_IO[name]
    graph = models[name].graph
    for declared, actual in ((inputs, graph.input), (outputs, graph.output)):
        assert [t.name for t in declared] == [v.name for v in actual]
        for t, v in zip(declared, actual, strict=True):
            dims = v.type.tensor_type.shape.dim
            assert v.type.tensor_type.elem_type == t.elem_type
            assert dims[0].dim_param == "batch"
            assert tuple(d.dim_value for d in dims[1:]) == t.dims


@pytest.mark.parametrize("name", modelgen.MODEL_NAMES)
@pytest.mark.parametrize("batch", [1, 100, modelgen.MAX_BATCH_SIZE])
def test_models_run_and_give_probabilities(sessions: dict[str, ort.InferenceSession], name: str, batch: int) -> None:
    (out,) = sessions[name].run(None, modelgen.example_inputs(name, batch, seed=batch))
    assert out.shape == (batch, 1) and out.dtype == np.float32
    assert np.all((out > 0) & (out < 1))
    if batch > 1:
        assert out.std() > 1e-3  # the inputs matter


def test_building_is_deterministic_and_the_seed_matters() -> None:
    assert modelgen.build_ncf(seed=1).SerializeToString() == modelgen.build_ncf(seed=1).SerializeToString()
    assert modelgen.build_ncf(seed=1).SerializeToString() != modelgen.build_ncf(seed=2).SerializeToString()


@pytest.mark.parametrize("name", modelgen.MODEL_NAMES)
def test_example_inputs_are_in_range_and_reproducible(name: str) -> None:
    inputs = modelgen.example_inputs(name, 5000, seed=3)
    declared = {t.name: t for t in modelgen.MODEL_IO[name][0]}
    assert list(inputs) == list(declared)
    for tensor_name, array in inputs.items():
        assert array.shape == (5000, *declared[tensor_name].dims)
        if array.dtype == np.int64:
            ranges = modelgen.ID_RANGES[name][tensor_name]
            for column, (low, high) in enumerate(ranges):
                assert low <= array[:, column].min() and array[:, column].max() < high
                assert array[:, column].max() >= 0.9 * high  # the whole range is used
        else:
            assert array.dtype == np.float32
    again = modelgen.example_inputs(name, 5000, seed=3)
    assert all(np.array_equal(inputs[k], again[k]) for k in inputs)


def test_example_inputs_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown model 'bert'"):
        modelgen.example_inputs("bert", 1)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        modelgen.example_inputs("ncf", 0)


def test_an_id_out_of_range_is_refused_by_onnxruntime(sessions: dict[str, ort.InferenceSession]) -> None:
    inputs = modelgen.example_inputs("ncf", 2)
    inputs["user_id"][1, 0] = modelgen.NCF_USERS
    with pytest.raises(Exception, match="out of data bounds"):
        sessions["ncf"].run(None, inputs)


@pytest.mark.parametrize("name", modelgen.MODEL_NAMES)
def test_config_pbtxt_parses_and_matches_the_model(name: str) -> None:
    text = modelgen.config_pbtxt(name)
    config = text_format.Parse(text, ModelConfig())
    assert config.name == name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 1024
    assert not config.HasField("dynamic_batching")
    inputs, outputs = modelgen.MODEL_IO[name]
    for declared, actual in ((inputs, config.input), (outputs, config.output)):
        assert [(t.name, tuple(t.dims)) for t in declared] == [(a.name, tuple(a.dims)) for a in actual]
    for tensor_name, ranges in modelgen.ID_RANGES[name].items():
        assert tensor_name in text and f"[0, {ranges[0][1]})" in text  # the valid ids are documented


def test_build_models_command_reproduces_the_committed_repository(tmp_path: Path) -> None:
    assert cli.main(["build-models", "--out", str(tmp_path)]) == 0
    for name in modelgen.MODEL_NAMES:
        for rel in ("config.pbtxt", "1/model.onnx"):
            built, committed = tmp_path / name / rel, REPOSITORY / name / rel
            assert built.read_bytes() == committed.read_bytes(), f"{committed} is stale: run kairosd build-models"


def test_build_models_command_refuses_an_unknown_model(tmp_path: Path) -> None:
    assert cli.main(["build-models", "--out", str(tmp_path), "--models", "ncf,bert"]) == 2
    assert not (tmp_path / "ncf").exists()
