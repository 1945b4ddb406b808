"""Builds the recommendation models (DLRM-style and NCF) as ONNX graphs with a fixed seed, in Triton layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # onnxruntime >= 1.14 runs opset 17
IR_VERSION = 8  # the IR version that goes with opset 17; older runtimes refuse newer IRs
MAX_BATCH_SIZE = 1024
DEFAULT_SEED = 20230620

# DLRM, shaped like the DLRM paper's Criteo Kaggle configuration (bottom 13-512-256-64-16, top 512-256-1,
# embedding dim 16): 13 dense features (Criteo's I1..I13) and one categorical id per table (8 tables).
# Worked size: 60,000 rows x 16 x 4 B = 3.8 MB of tables + ~0.3 M MLP weights (1.3 MB) = ~5 MB;
# compute ~0.32 M multiply-adds per sample, so a batch of 1000 is ~0.3 GMAC on the CPU.
DLRM_DENSE_FEATURES = 13
DLRM_EMBEDDING_DIM = 16
DLRM_TABLE_ROWS: tuple[int, ...] = (20_000, 10_000, 5_000, 5_000, 5_000, 5_000, 5_000, 5_000)
DLRM_BOTTOM_MLP: tuple[int, ...] = (512, 256, 64, DLRM_EMBEDDING_DIM)  # last = embedding dim
DLRM_TOP_MLP: tuple[int, ...] = (512, 256, 1)  # input: 16 + 36 pairwise dot products

# NCF (NeuMF): a GMF tower and an MLP tower (MLPerf's NCF shape, narrower) over user and item embeddings.
# Worked size: 15,000 rows x (16 + 64) x 4 B = 4.8 MB + 74 k MLP weights; ~74 k multiply-adds per sample.
NCF_USERS = 10_000
NCF_ITEMS = 5_000
NCF_GMF_DIM = 16
NCF_MLP_DIM = 64
NCF_MLP: tuple[int, ...] = (256, 128, 64)  # input: 2 x 64

# Valid id ranges per INT64 input, as half-open [low, high). Clients must draw ids in range:
# ONNX Runtime fails the query with INVALID_ARGUMENT for an id >= rows (ONNX Gather would wrap
# ids in [-rows, 0) around from the end; they are outside the documented range all the same).
ID_RANGES: dict[str, dict[str, tuple[tuple[int, int], ...]]] = {
    "dlrm": {"sparse_ids": tuple((0, rows) for rows in DLRM_TABLE_ROWS)},  # one range per column
    "ncf": {"user_id": ((0, NCF_USERS),), "item_id": ((0, NCF_ITEMS),)},
}


@dataclass(frozen=True, slots=True)
class TensorDef:
    """One model input or output: name, ONNX element type and dims without the batch dim."""

    name: str
    elem_type: int  # onnx.TensorProto.FLOAT / INT64
    dims: tuple[int, ...]
    comment: str = ""


MODEL_IO: dict[str, tuple[tuple[TensorDef, ...], tuple[TensorDef, ...]]] = {
    "dlrm": (
        (
            TensorDef("dense_features", TensorProto.FLOAT, (DLRM_DENSE_FEATURES,), "13 dense features, any real value"),
            TensorDef(
                "sparse_ids",
                TensorProto.INT64,
                (len(DLRM_TABLE_ROWS),),
                "column t indexes table t: 0 <= id < " + str(list(DLRM_TABLE_ROWS)) + "[t]",
            ),
        ),
        (TensorDef("click_probability", TensorProto.FLOAT, (1,), "sigmoid output in (0, 1)"),),
    ),
    "ncf": (
        (
            TensorDef("user_id", TensorProto.INT64, (1,), f"0 <= user_id < {NCF_USERS}"),
            TensorDef("item_id", TensorProto.INT64, (1,), f"0 <= item_id < {NCF_ITEMS}"),
        ),
        (TensorDef("score", TensorProto.FLOAT, (1,), "sigmoid output in (0, 1)"),),
    ),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_IO)

_TRITON_TYPE: dict[int, str] = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64"}


class _GraphBuilder:
    """Accumulates nodes and initializers; every helper returns the name of the tensor it made."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name=name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str, **attrs: Any) -> str:
        out = self.fresh(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def dense(self, x: str, fan_in: int, fan_out: int, prefix: str, relu: bool) -> str:
        """y = x @ W + b (Gemm), He-initialised so activations neither vanish nor explode."""
        w = (self.rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (self.rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        y = self.node("Gemm", [x, self.const(f"{prefix}.weight", w), self.const(f"{prefix}.bias", b)], prefix)
        return self.node("Relu", [y], f"{prefix}_relu") if relu else y

    def mlp(self, x: str, fan_in: int, widths: tuple[int, ...], prefix: str, relu_last: bool) -> str:
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            x = self.dense(x, fan_in, width, f"{prefix}.{i}", relu=relu_last or not last)
            fan_in = width
        return x

    def embedding(self, rows: int, dim: int, name: str) -> str:
        table = self.rng.uniform(-1.0, 1.0, size=(rows, dim)) / np.sqrt(dim)
        return self.const(name, table.astype(np.float32))


def _value_info(t: TensorDef) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(t.name, t.elem_type, ["batch", *t.dims])


def _finish(g: _GraphBuilder, name: str, result: str, doc: str) -> onnx.ModelProto:
    inputs, outputs = MODEL_IO[name]
    g.nodes.append(helper.make_node("Identity", [result], [outputs[0].name], name="output"))
    graph = helper.make_graph(
        g.nodes, name, [_value_info(t) for t in inputs], [_value_info(t) for t in outputs], g.initializers
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kairosd.modelgen", doc_string=doc
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build_dlrm(seed: int = DEFAULT_SEED) -> onnx.ModelProto:
    """DLRM: bottom MLP on dense features, 8 embedding lookups, pairwise dot products, top MLP, sigmoid."""
    g = _GraphBuilder(np.random.default_rng(seed))
    n_tables = len(DLRM_TABLE_ROWS)
    d = DLRM_EMBEDDING_DIM
    bottom = g.mlp("dense_features", DLRM_DENSE_FEATURES, DLRM_BOTTOM_MLP, "bottom_mlp", relu_last=True)  # [B,d]

    # One Gather per table; Split keeps the column axis, so each lookup is [B,1,d].
    columns = [g.fresh("sparse_col") for _ in range(n_tables)]
    g.nodes.append(helper.make_node("Split", ["sparse_ids"], columns, name="split_sparse", axis=1))
    lookups = [
        g.node("Gather", [g.embedding(rows, d, f"emb_table_{t}"), columns[t]], f"lookup_{t}", axis=0)
        for t, rows in enumerate(DLRM_TABLE_ROWS)
    ]
    bottom_3d = g.node("Unsqueeze", [bottom, g.const("axis_1", np.array([1], dtype=np.int64))], "bottom_3d")
    features = g.node("Concat", [bottom_3d, *lookups], "features", axis=1)  # [B, F, d], F = 1 + 8 = 9

    # Interaction: Z = T T^T, keep the F(F-1)/2 = 36 entries strictly below the diagonal.
    f = n_tables + 1
    z = g.node("MatMul", [features, g.node("Transpose", [features], "features_t", perm=[0, 2, 1])], "dots")
    z_flat = g.node("Reshape", [z, g.const("shape_flat", np.array([-1, f * f], dtype=np.int64))], "dots_flat")
    pairs = np.array([i * f + j for i in range(f) for j in range(i)], dtype=np.int64)
    lower = g.node("Gather", [z_flat, g.const("pair_index", pairs)], "pairs", axis=1)  # [B, 36]
    top_in = g.node("Concat", [bottom, lower], "top_in", axis=1)  # [B, d + 36]

    logit = g.mlp(top_in, d + len(pairs), DLRM_TOP_MLP, "top_mlp", relu_last=False)
    prob = g.node("Sigmoid", [logit], "sigmoid")
    return _finish(g, "dlrm", prob, "DLRM-style click-through model built by kairosd.modelgen")


def build_ncf(seed: int = DEFAULT_SEED) -> onnx.ModelProto:
    """NeuMF: GMF (element-wise product of embeddings) beside an MLP tower, joined by a linear layer, sigmoid."""
    g = _GraphBuilder(np.random.default_rng(seed + 1))

    def lookup(table: str, ids: str, dim: int) -> str:
        rows = g.node("Gather", [table, ids], f"{table}_lookup", axis=0)  # [B,1,dim]
        return g.node("Reshape", [rows, g.const(f"{table}_shape", np.array([-1, dim], dtype=np.int64))], f"{table}_2d")

    gmf_user = lookup(g.embedding(NCF_USERS, NCF_GMF_DIM, "gmf_user_emb"), "user_id", NCF_GMF_DIM)
    gmf_item = lookup(g.embedding(NCF_ITEMS, NCF_GMF_DIM, "gmf_item_emb"), "item_id", NCF_GMF_DIM)
    gmf = g.node("Mul", [gmf_user, gmf_item], "gmf")  # [B,16]

    mlp_user = lookup(g.embedding(NCF_USERS, NCF_MLP_DIM, "mlp_user_emb"), "user_id", NCF_MLP_DIM)
    mlp_item = lookup(g.embedding(NCF_ITEMS, NCF_MLP_DIM, "mlp_item_emb"), "item_id", NCF_MLP_DIM)
    mlp_in = g.node("Concat", [mlp_user, mlp_item], "mlp_in", axis=1)  # [B,128]
    mlp = g.mlp(mlp_in, 2 * NCF_MLP_DIM, NCF_MLP, "mlp", relu_last=True)  # [B,64]

    joined = g.node("Concat", [gmf, mlp], "neumf_in", axis=1)  # [B,80]
    logit = g.dense(joined, NCF_GMF_DIM + NCF_MLP[-1], 1, "predict", relu=False)
    prob = g.node("Sigmoid", [logit], "sigmoid")
    return _finish(g, "ncf", prob, "Neural Collaborative Filtering (NeuMF) model built by kairosd.modelgen")


BUILDERS = {"dlrm": build_dlrm, "ncf": build_ncf}


def config_pbtxt(name: str) -> str:
    """The Triton config.pbtxt for one model; `#` comments carry the valid id ranges."""
    inputs, outputs = MODEL_IO[name]

    def tensors(ts: tuple[TensorDef, ...]) -> str:
        blocks = []
        for t in ts:
            dims = ", ".join(str(d) for d in t.dims)
            blocks.append(
                f'  {{\n    # {t.comment}\n    name: "{t.name}"\n'
                f"    data_type: {_TRITON_TYPE[t.elem_type]}\n    dims: [ {dims} ]\n  }}"
            )
        return ",\n".join(blocks)

    ranges = "\n".join(
        f"#   {tensor}: " + ", ".join(f"[{lo}, {hi})" for lo, hi in spans) for tensor, spans in ID_RANGES[name].items()
    )
    return (
        f"# Generated by `kairosd build-models` (kairosd/modelgen.py); do not edit by hand.\n"
        f"# Valid ids (half-open ranges; one per column where there are several):\n{ranges}\n"
        f"# No dynamic_batching: each request is one query and is run as sent (Kairos schedules queries).\n"
        f"# No instance_group: Triton places the model on a GPU when it has one, else on the CPU.\n"
        f'name: "{name}"\n'
        f'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        f"input [\n{tensors(inputs)}\n]\n"
        f"output [\n{tensors(outputs)}\n]\n"
    )


def write_model(name: str, out_dir: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write `out_dir/name/1/model.onnx` and `out_dir/name/config.pbtxt`; returns the model directory."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    model_dir = Path(out_dir) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save_model(BUILDERS[name](seed), str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.pbtxt").write_text(config_pbtxt(name))
    return model_dir


def example_inputs(name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid random inputs for `name` with batch size `batch` (ids drawn inside their ranges)."""
    if name not in MODEL_IO:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for t in MODEL_IO[name][0]:
        shape = (batch, *t.dims)
        if t.elem_type == TensorProto.FLOAT:
            inputs[t.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            highs = np.array([hi for _, hi in ID_RANGES[name][t.name]], dtype=np.int64)
            inputs[t.name] = (rng.random(shape) * highs).astype(np.int64)  # highs broadcasts over columns
    return inputs
