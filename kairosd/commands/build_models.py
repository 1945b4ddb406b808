"""`kairosd build-models`: write the DLRM and NCF ONNX models and their Triton configs."""

from __future__ import annotations

import argparse
import logging

HELP = "build the recommendation models (ONNX + config.pbtxt) into a Triton model repository"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kairosd.modelgen import DEFAULT_SEED, MODEL_NAMES

    parser.add_argument("--out", default="model_repository", help="model repository directory (default: %(default)s)")
    parser.add_argument(
        "--models",
        default=",".join(MODEL_NAMES),
        help="comma-separated subset of: " + ", ".join(MODEL_NAMES) + " (default: all)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="weight seed (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from kairosd import modelgen

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in modelgen.MODEL_NAMES]
    if unknown or not names:
        log.error("--models: unknown %s; allowed: %s", ", ".join(unknown) or "(empty)", ", ".join(modelgen.MODEL_NAMES))
        return 2
    for name in names:
        model_dir = modelgen.write_model(name, args.out, seed=args.seed)
        size_mb = (model_dir / "1" / "model.onnx").stat().st_size / 1e6
        print(f"wrote {model_dir}/config.pbtxt and {model_dir}/1/model.onnx ({size_mb:.1f} MB)", flush=True)
    return 0
