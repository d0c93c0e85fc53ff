"""`loss-service serve` starts the server; `loss-service openapi` prints the OpenAPI document."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import uvicorn

from service.api import create_app
from service.config import get_settings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loss-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--host", help="default: LOSS_SERVICE_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: LOSS_SERVICE_PORT or 8000")
    commands.add_parser("openapi", help="print the OpenAPI document as JSON")
    args = parser.parse_args(argv)

    settings = get_settings()
    if args.command == "openapi":
        json.dump(create_app(settings).openapi(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level="info",
    )


if __name__ == "__main__":
    main()
