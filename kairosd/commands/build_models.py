"""`kairosd build-models`: write the DLRM and NCF ONNX models and their Triton configs."""

from __future__ import annotations

import argparse
import logging

HELP = "build the recommendation models (ONNX + config.pbtxt) into a Triton model repository"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # No kairosd.modelgen import here: it pulls in onnx, and every kairosd command builds this parser.
    parser.add_argument("--out", default="model_repository", help="model repository directory (default: %(default)s)")
    parser.add_argument("--models", default="", help="comma-separated subset of: dlrm, ncf (default: all)")
    parser.add_argument("--seed", type=int, default=None, help="weight seed (default: modelgen.DEFAULT_SEED)")


def run(args: argparse.Namespace) -> int:
    from kairosd import modelgen

    names = [n.strip() for n in args.models.split(",") if n.strip()] or list(modelgen.MODEL_NAMES)
    unknown = [n for n in names if n not in modelgen.MODEL_NAMES]
    if unknown:
        log.error("--models: unknown %s; allowed: %s", ", ".join(unknown), ", ".join(modelgen.MODEL_NAMES))
        return 2
    seed = modelgen.DEFAULT_SEED if args.seed is None else args.seed
    for name in names:
        model_dir = modelgen.write_model(name, args.out, seed=seed)
        size_mb = (model_dir / "1" / "model.onnx").stat().st_size / 1e6
        print(f"wrote {model_dir}/config.pbtxt and {model_dir}/1/model.onnx ({size_mb:.1f} MB)", flush=True)
    return 0
