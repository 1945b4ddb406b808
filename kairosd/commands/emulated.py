"""`kairosd emulated`: an emulated instance of a measured type (KServe v2 gRPC + HTTP; waits, runs no model)."""

from __future__ import annotations

import argparse
import logging

HELP = "run an emulated instance: answers each query after a service time drawn from a measured profile"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", required=True, help="Triton-layout model repository (outputs' names, "
                        "shapes and dtypes come from its config.pbtxt files)")
    parser.add_argument("--emulate", help="the measured instance type to emulate, e.g. g4dn.xlarge (one instance, on "
                        "--port and --http-port)")
    parser.add_argument("--instance", action="append", default=[], metavar="TYPE:GRPC_PORT[:HTTP_PORT]",
                        help="an emulated instance served by this process (repeat for several: an emulated host whose "
                        "instances share one event loop); instead of --emulate")
    parser.add_argument("--data", default="kairos", help="\"kairos\" (the Kairos authors' samples) or a directory of "
                        "`kairosd profile` CSVs (default: %(default)s)")
    parser.add_argument("--models", required=True, help="SERVED=PROFILE pairs, e.g. dlrm=rm2,ncf=ncf: the profile "
                        "model that times each served model (only these models are served)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP/REST port; 0: no HTTP (default: %(default)s)")
    parser.add_argument("--slots", type=int, default=1, help="queries served at once (default: %(default)s)")
    parser.add_argument("--seed", type=int, help="seed of the service-time draws (default: fresh randomness)")
    parser.add_argument(
        "--grace-s", type=float, default=5.0, help="on SIGTERM, seconds in-flight queries get (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    import uvloop

    from kairosd.backends.emulated import HostedInstance, parse_hosted, serve_host
    from kairosd.backends.process import die_with_parent
    from kairosd.emulation import parse_model_map
    from kairosd.errors import ConfigError, KairosError

    die_with_parent()  # started by a daemon: SIGTERM (drain, exit) if the daemon dies without stopping us
    try:
        models = parse_model_map(args.models)
        if (args.emulate is None) == (not args.instance):
            raise ConfigError("give either --emulate TYPE (with --port, --http-port) or --instance TYPE:PORT[:HTTP_PORT]")
        hosted = ([HostedInstance(args.emulate, args.port, args.http_port or None)] if args.emulate
                  else [parse_hosted(x) for x in args.instance])
        return uvloop.run(serve_host(args.model_repository, hosted, args.data, models, args.host, args.slots,
                                     args.seed, args.grace_s))
    except KairosError as exc:
        log.error("%s", exc)
        return 1
