"""`kairosd worker`: serve the repository's ONNX models on the CPU behind KServe v2 gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging

HELP = "run an ONNX Runtime CPU worker (a KServe v2 gRPC server, like Triton's)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", required=True, help="Triton-layout model repository")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port; 0 = any free port (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: %(default)s)")
    parser.add_argument("--models", default="", help="comma-separated models to load (default: all)")
    parser.add_argument(
        "--grace-s", type=float, default=5.0, help="on SIGTERM, seconds in-flight queries get (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    from kairosd.backends.process import die_with_parent
    from kairosd.backends.worker import serve
    from kairosd.errors import KairosError

    die_with_parent()  # started by a daemon: SIGTERM (drain, exit) if the daemon dies without stopping us

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        return asyncio.run(serve(args.model_repository, args.host, args.port, args.threads, models, args.grace_s))
    except KairosError as exc:
        log.error("%s", exc)
        return 1
