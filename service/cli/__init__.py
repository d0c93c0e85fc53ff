"""`loss-service serve` starts the server; `loss-service openapi` prints the OpenAPI document;
`loss-service compute` computes a loss over .npy / .npz files, offline; `loss-service
label-noise` finds likely label errors in them; `loss-service upload`
sends .npy / .npz files into an evaluation run; `loss-service db upgrade` applies the database
migrations of evaluation runs."""

from __future__ import annotations

import argparse
import json
import logging.config
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from service.cli import compute, database, label_noise, upload
from service.config import get_settings
from service.engine import set_engine_path
from service.engine._warm_up import warm_up_in_background
from service.logs import logging_config


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loss-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--host", help="default: LOSS_SERVICE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: LOSS_SERVICE_PORT or 8000")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port (default: LOSS_SERVICE_WORKERS or 1); each "
        "holds its own compute slots and buffers",
    )
    commands.add_parser("openapi", help="print the OpenAPI document as JSON")
    compute.add_parser(commands)
    label_noise.add_parser(commands)
    upload.add_parser(commands)
    database.add_parser(commands)
    args = parser.parse_args(argv)

    try:
        settings = get_settings()
    except ValidationError as error:  # a bad LOSS_SERVICE_* value: say which, no traceback
        sys.exit(f"loss-service {args.command}: " + "; ".join(map(_problem, error.errors())))
    set_engine_path(settings.engine)  # every loss of this process takes this path
    if args.command == "compute":
        sys.exit(compute.run(args, settings))
    if args.command == "label-noise":
        sys.exit(label_noise.run(args, settings))
    if args.command == "upload":
        sys.exit(upload.run(args))
    if args.command == "db":
        sys.exit(database.upgrade(args.url or settings.database_url))
    if args.command == "serve":
        # The kernels load (or compile) on a thread while the web stack imports, below: the
        # server is ready about a second sooner. Its start finds this warm-up under way. The
        # logs are configured first (uvicorn applies the same configuration again), so that the
        # warm-up's lines are not lost.
        logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
        try:
            warm_up_in_background()
        except RuntimeError as error:  # LOSS_SERVICE_ENGINE=fused without numba
            sys.exit(f"loss-service serve: {error}")
    # The server's modules (FastAPI, uvicorn) are imported only by the commands that use them.
    from service.api import server

    if args.command == "openapi":
        json.dump(server.openapi_document(settings), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    server.serve(settings, host=args.host, port=args.port, workers=args.workers)


def _problem(error: Any) -> str:
    """One settings error as a line: the validator's own message, else the setting and why."""
    cause = error.get("ctx", {}).get("error")
    if cause is not None:
        return str(cause)
    name = "LOSS_SERVICE_" + "_".join(map(str, error["loc"])).upper()
    return f"{name}: {error['msg']}"
