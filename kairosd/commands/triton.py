"""`kairosd triton`: a real Triton server (via PyTriton) serving the repository's ONNX models on the CPU."""

from __future__ import annotations

import argparse
import logging

HELP = "run a local Triton server (PyTriton) that serves the ONNX models through ONNX Runtime"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", required=True, help="Triton-layout model repository")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: %(default)s)")
    parser.add_argument("--models", default="", help="comma-separated models to load (default: all)")
    parser.add_argument(
        "--grace-s", type=float, default=5.0, help="on SIGTERM, seconds in-flight queries get (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    from kairosd.backends.process import die_with_parent
    from kairosd.backends.triton_local import PARENT_DIED_SIGNAL, TritonPorts, serve
    from kairosd.errors import KairosError

    # started by a daemon: PARENT_DIED_SIGNAL if the daemon dies without stopping us (Triton stops at once)
    armed = die_with_parent(PARENT_DIED_SIGNAL)

    ports = TritonPorts(args.host, args.grpc_port, args.http_port, args.metrics_port)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        return serve(args.model_repository, ports, args.threads, models, args.grace_s,
                     parent_died_signal=PARENT_DIED_SIGNAL if armed else None)
    except KairosError as exc:
        log.error("%s", exc)
        return 1
