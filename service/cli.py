"""`loss-service serve` starts the server; `loss-service openapi` prints the OpenAPI document;
`loss-service compute` computes a loss over .npy / .npz files, offline; `loss-service upload`
sends .npy / .npz files into an evaluation run; `loss-service db upgrade` applies the database
migrations of evaluation runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from service import upload
from service.client import LossClient
from service.client import LossServiceError as ClientError
from service.client._client import DEFAULT_BASE_URL
from service.codecs import body_pieces
from service.config import Settings, get_settings
from service.core import BY_NAME, LOSSES, Context
from service.core.offline import offline_loss
from service.core.responses import render_json
from service.engine import select_backend
from service.errors import LossServiceError, shown
from service.npy_files import load_arrays

API_KEY_VARIABLE = "LOSS_SERVICE_API_KEY"  # the upload's key, kept off the command line

COMPUTE_EPILOG = """\
Inputs are named as in the HTTP API: --logits a.npy --labels b.npy; --NAME file.npz takes the
array NAME from the file (or its only array) and --NAME file.npz:KEY the array KEY; positional
.npz files give every array they hold, by name. Options are KEY=VALUE with a JSON value
(-o label_smoothing=0.1 -o reduction=none -o weight=[1,2,0.5]); a value that is not JSON is a
string. The output is the JSON of POST /v1/losses/NAME.
Exit status: 0, 1 (invalid input), 2 (usage).
"""

UPLOAD_EPILOG = """\
Each FILE.npz holds arrays named logits and labels; --logits a.npy --labels b.npy (or .npz,
.npz:KEY) is one more source. Rows (axis 0) are sent in batches, each under an id derived from
its content (rows-START-STOP-HASH), after asking the run whether it holds it already: running
the same command again after an interruption sends only what is missing, and nothing counts
twice. Resume with the same --batch-rows. Failed requests are retried (502, 503, 504, dropped
connections), honouring Retry-After. Prints a JSON summary: batches, sent, stored_before, rows.
Exit status: 0, 1 (an error: unreadable files, the service refused), 2 (usage), 130 (interrupted).
"""


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
    _add_compute(commands)
    _add_upload(commands)
    database = commands.add_parser("db", help="the database of evaluation runs")
    database.add_argument("action", choices=["upgrade"], help="apply the schema migrations")
    database.add_argument("--url", help="default: LOSS_SERVICE_DATABASE_URL (SQLite file)")
    args = parser.parse_args(argv)

    settings = get_settings()
    if args.command == "compute":
        sys.exit(_compute(args, settings))
    if args.command == "upload":
        sys.exit(_upload(args))
    if args.command == "db":
        sys.exit(_upgrade(args.url or settings.database_url))
    # The server's modules (FastAPI, uvicorn) are imported only by the commands that use them.
    from service.api import server

    if args.command == "openapi":
        json.dump(server.openapi_document(settings), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    server.serve(settings, host=args.host, port=args.port, workers=args.workers)


def _add_compute(commands: Any) -> None:
    compute = commands.add_parser(
        "compute",
        help="compute a loss over .npy / .npz files, offline",
        description="Compute a loss over arrays in files with the service's engine, no server.",
        epilog=COMPUTE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compute.add_argument("loss", choices=list(BY_NAME), metavar="LOSS", help="e.g. cross-entropy")
    compute.add_argument("npz", nargs="*", metavar="FILE.npz", help="arrays named as inputs")
    inputs = compute.add_argument_group("inputs (each a .npy, .npz or .npz:KEY)")
    for name in sorted({name for spec in LOSSES for name in spec.inputs}):
        inputs.add_argument(f"--{name}", metavar="PATH", dest=f"input_{name}")
    compute.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a request field: reduction, return_grad, label_smoothing, ...",
    )
    compute.add_argument(
        "--out", type=Path, metavar="PATH", help="write the JSON here instead of stdout"
    )
    compute.add_argument(
        "--chunk-rows",
        type=int,
        metavar="N",
        help="rows per chunk (default: about 64 MiB of the per-sample inputs)",
    )
    compute.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress line on stderr (default: when stderr is a terminal)",
    )


def _compute(args: argparse.Namespace, settings: Settings) -> int:
    def fail(message: str) -> int:
        print(f"loss-service compute: error: {message}", file=sys.stderr)
        return 1

    try:
        options = dict(_option(item) for item in args.option)
        arrays: dict[str, Any] = {}
        for path in args.npz:
            arrays.update(load_arrays(path))
        for key, path in vars(args).items():
            if key.startswith("input_") and path is not None:
                name = key.removeprefix("input_")
                arrays.update(load_arrays(path, default_key=name))
    except (OSError, ValueError) as error:
        return fail(str(error))
    if args.chunk_rows is not None and args.chunk_rows < 1:
        return fail("--chunk-rows must be at least 1")

    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = _ProgressLine(args.loss) if show else None
    ctx = Context(select_backend(settings.device), settings)
    try:
        response = offline_loss(
            BY_NAME[args.loss],
            arrays,
            options,
            ctx=ctx,
            chunk_rows=args.chunk_rows,
            progress=progress,
        )
    except ValidationError as error:
        return fail("; ".join(_validation_message(e) for e in error.errors()))
    except LossServiceError as error:
        return fail(error.detail)
    finally:
        if progress is not None:
            progress.close()
    # Rendered as the HTTP route renders it: the same bytes the API would send.
    text = b"".join(body_pieces(render_json(response))) + b"\n"
    if args.out is None:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
    else:
        args.out.write_bytes(text)
    return 0


def _add_upload(commands: Any) -> None:
    parser = commands.add_parser(
        "upload",
        help="send .npy / .npz files into an evaluation run, resumably",
        description="Send logits and labels from files into an evaluation run, batch by batch.",
        epilog=UPLOAD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="the run (POST /v1/runs made it)")
    parser.add_argument("npz", nargs="*", metavar="FILE.npz", help="arrays logits and labels")
    parser.add_argument("--logits", metavar="PATH", help="a .npy, .npz or .npz:KEY")
    parser.add_argument("--labels", metavar="PATH", help="a .npy, .npz or .npz:KEY")
    parser.add_argument("--url", default=DEFAULT_BASE_URL, help=f"default: {DEFAULT_BASE_URL}")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        metavar="KEY",
        help=f"sent as a Bearer token (default: {API_KEY_VARIABLE}, which keeps it out of ps)",
    )
    parser.add_argument(
        "--batch-rows",
        type=int,
        metavar="N",
        help=f"rows per batch (default: about {upload.BATCH_BYTES >> 20} MiB of logits and labels)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress line on stderr (default: when stderr is a terminal)",
    )


def _upload(args: argparse.Namespace) -> int:
    """Resumable: see `service.upload`. Uses the client only, never the server's modules."""

    def fail(message: str) -> int:
        print(f"loss-service upload: error: {message}", file=sys.stderr)
        return 1

    try:
        sources = upload.read_sources(args.npz, args.logits, args.labels)
    except (OSError, ValueError) as error:
        return fail(str(error))
    rows = upload.default_batch_rows(sources) if args.batch_rows is None else args.batch_rows
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = _ProgressLine("upload", unit="batches") if show else None
    try:
        with LossClient(args.url, api_key=args.api_key) as client:
            summary = upload.upload(client.run(args.run_id), sources, rows, progress)
    except KeyboardInterrupt:
        fail("interrupted: run the same command again to send the rest")
        return 130
    except (ValueError, TypeError, upload.UploadError, ClientError) as error:
        return fail(str(error))
    except httpx.TransportError as error:
        return fail(f"{args.url}: {error} (after retries)")
    finally:
        if progress is not None:
            progress.close()
    print(json.dumps({"run_id": args.run_id, **vars(summary)}))
    return 0


def _upgrade(url: str) -> int:
    """Migrate the database to the newest schema (the server also does it at start)."""
    from service import db

    try:
        db.upgrade(url)
    except LossServiceError as error:
        print(f"loss-service db upgrade: error: {error.detail}", file=sys.stderr)
        return 1
    print("loss-service db upgrade: the database is at the newest schema")
    return 0


def _option(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--option {shown(item)}: expected KEY=VALUE")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw  # reduction=none: a bare string


def _validation_message(error: Any) -> str:
    """As the HTTP API words a request validation error: `field: message`."""
    name = ".".join(str(part) for part in error.get("loc", ())) or "request"
    return f"{name}: {error.get('msg', 'invalid value')}"


class _ProgressLine:
    """`cross-entropy:  40% (393216/983040 rows, 3 chunks, 2.1 s)`, redrawn on stderr."""

    def __init__(self, label: str, unit: str = "chunks") -> None:
        self.label = label
        self.unit = unit
        self.start = time.monotonic()
        self.chunks = 0
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        self.chunks += 1
        now = time.monotonic()
        if done < total and now - self.last < 0.1:  # redrawn at most ten times a second
            return
        self.last = now
        percent = 100 * done // max(total, 1)
        elapsed = now - self.start
        sys.stderr.write(
            f"\r{self.label}: {percent:3d}% ({done}/{total} rows, "
            f"{self.chunks} {self.unit}, {elapsed:.1f} s)"
        )
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


if __name__ == "__main__":
    main()
