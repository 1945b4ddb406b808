"""Reads a Triton model repository (`NAME/config.pbtxt`, `NAME/<version>/model.onnx`) into model specs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import service_pb2
from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig, ModelInput, ModelOutput

from kairosd.errors import ConfigError

# KServe v2 tensor datatypes and their numpy dtypes (BYTES is a length-prefixed string per element).
DTYPE_TO_NP: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
NP_TO_DTYPE: dict[np.dtype, str] = {np_dtype: name for name, np_dtype in DTYPE_TO_NP.items()}

# Triton's config enum TYPE_X -> KServe name X (TYPE_STRING is BYTES on the wire).
_CONFIG_TO_DTYPE: dict[int, str] = {
    DataType.Value(f"TYPE_{name}" if name != "BYTES" else "TYPE_STRING"): name for name in DTYPE_TO_NP
}

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILENAME = "model.onnx"
SUPPORTED_PLATFORMS = ("onnxruntime_onnx",)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model, as its config declares it."""

    name: str
    datatype: str  # KServe v2 name: "FP32", "INT64", ...
    dims: tuple[int, ...]  # WITHOUT the batch dim; -1 = any
    np_dtype: np.dtype

    def shape(self, batched: bool) -> list[int]:
        """The shape clients see: `[-1, *dims]` when the model batches (as Triton reports it)."""
        return [-1, *self.dims] if batched else list(self.dims)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model of the repository: its signature, where its ONNX file is, and the parsed config."""

    name: str
    version: str  # "1"
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    onnx_path: Path
    config: ModelConfig  # the parsed protobuf

    def input(self, name: str) -> TensorSpec | None:
        """The input called `name`, or None."""
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        """The output called `name`, or None."""
        return next((t for t in self.outputs if t.name == name), None)

    def metadata_pb(self) -> service_pb2.ModelMetadataResponse:
        """KServe v2 gRPC model metadata; shapes carry a leading -1 batch dim when the model batches, like Triton."""
        batched = self.max_batch_size > 0

        tensor_metadata = service_pb2.ModelMetadataResponse.TensorMetadata

        def tensors(specs: tuple[TensorSpec, ...]) -> list[service_pb2.ModelMetadataResponse.TensorMetadata]:
            return [tensor_metadata(name=t.name, datatype=t.datatype, shape=t.shape(batched)) for t in specs]

        return service_pb2.ModelMetadataResponse(
            name=self.name,
            versions=[self.version],
            platform=self.platform,
            inputs=tensors(self.inputs),
            outputs=tensors(self.outputs),
        )

    def config_pb(self) -> service_pb2.ModelConfigResponse:
        """KServe v2 gRPC model config response (Triton's extension)."""
        response = service_pb2.ModelConfigResponse()
        response.config.CopyFrom(self.config)
        return response

    def metadata_json(self) -> dict[str, Any]:
        """KServe v2 REST model metadata (`GET /v2/models/{name}`)."""
        batched = self.max_batch_size > 0

        def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": t.shape(batched)} for t in specs]

        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": tensors(self.inputs),
            "outputs": tensors(self.outputs),
        }

    def config_json(self) -> dict[str, Any]:
        """Like Triton's `GET /v2/models/{name}/config`: the config as JSON with proto field names."""
        return json_format.MessageToDict(self.config, preserving_proto_field_name=True)


def load_repository(path: str | Path, only: Sequence[str] | None = None) -> dict[str, ModelSpec]:
    """Every model under `path` (or just those named in `only`), by name. Raises ConfigError naming
    the file and what is wrong, or the unknown names and the allowed ones."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise ConfigError(f"model repository {root}: not a directory")
    models: dict[str, ModelSpec] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        spec = load_model(model_dir)
        models[spec.name] = spec
    if not models:
        raise ConfigError(f"model repository {root}: no model directories (expected NAME/{CONFIG_FILE})")
    if only:
        unknown = sorted(set(only) - set(models))
        if unknown:
            raise ConfigError(f"--models: {', '.join(unknown)} not in {root}; allowed: {', '.join(models)}")
        models = {name: models[name] for name in only}
    return models


def load_model(model_dir: str | Path) -> ModelSpec:
    """One model directory: parse and check its config.pbtxt and find its newest version's ONNX file."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: missing (every model directory needs a {CONFIG_FILE})")
    try:
        config = text_format.Parse(config_path.read_text(), ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: not a valid Triton ModelConfig: {exc}") from exc

    if not config.name:
        config.name = model_dir.name  # Triton fills an empty name from the directory
    if config.name != model_dir.name:
        raise ConfigError(f"{config_path}: name {config.name!r} must equal its directory name {model_dir.name!r}")
    if not config.platform and config.backend == "onnxruntime":
        config.platform = "onnxruntime_onnx"
    if config.platform not in SUPPORTED_PLATFORMS:
        raise ConfigError(
            f"{config_path}: platform {config.platform!r} (backend {config.backend!r}) is not supported; "
            f"allowed: {', '.join(SUPPORTED_PLATFORMS)}"
        )
    if config.max_batch_size < 0:
        raise ConfigError(f"{config_path}: max_batch_size must be >= 0, got {config.max_batch_size}")
    if not config.input or not config.output:
        raise ConfigError(f"{config_path}: needs at least one input and one output")

    inputs = tuple(_tensor(config_path, "input", t) for t in config.input)
    outputs = tuple(_tensor(config_path, "output", t) for t in config.output)
    for kind, tensors in (("input", inputs), ("output", outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ConfigError(f"{config_path}: duplicate {kind} names in {names}")

    version, onnx_path = _newest_version(model_dir, config.default_model_filename or DEFAULT_MODEL_FILENAME)
    return ModelSpec(
        name=config.name,
        version=version,
        platform=config.platform,
        max_batch_size=config.max_batch_size,
        inputs=inputs,
        outputs=outputs,
        onnx_path=onnx_path,
        config=config,
    )


def _tensor(config_path: Path, kind: str, t: ModelInput | ModelOutput) -> TensorSpec:
    if not t.name:
        raise ConfigError(f"{config_path}: an {kind} has no name")
    datatype = _CONFIG_TO_DTYPE.get(t.data_type)
    if datatype is None:
        allowed = ", ".join(DataType.Name(v) for v in _CONFIG_TO_DTYPE)
        raise ConfigError(
            f"{config_path}: {kind} {t.name!r} has data_type {DataType.Name(t.data_type)}; allowed: {allowed}"
        )
    if not t.dims:
        raise ConfigError(f"{config_path}: {kind} {t.name!r} has no dims (give the dims without the batch dim)")
    if any(d < -1 or d == 0 for d in t.dims):
        raise ConfigError(f"{config_path}: {kind} {t.name!r} dims {list(t.dims)}: each must be -1 or > 0")
    if t.HasField("reshape"):
        raise ConfigError(f"{config_path}: {kind} {t.name!r} uses reshape, which kairosd does not support")
    dims = tuple(int(d) for d in t.dims)
    return TensorSpec(name=t.name, datatype=datatype, dims=dims, np_dtype=DTYPE_TO_NP[datatype])


def _newest_version(model_dir: Path, filename: str) -> tuple[str, Path]:
    """Triton's default version policy (latest 1): the highest numeric version directory."""
    versions = sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
    if not versions:
        raise ConfigError(f"{model_dir}: no version directory (expected {model_dir}/1/{filename})")
    path = model_dir / str(versions[0]) / filename
    if not path.is_file():
        raise ConfigError(f"{path}: missing (the newest version, {versions[0]}, needs its model file)")
    return str(versions[0]), path
