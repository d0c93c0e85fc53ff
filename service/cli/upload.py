"""`loss-service upload`: .npy / .npz files into an evaluation run, resumably (`service.upload`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

from service import upload
from service.cli.progress import ProgressLine
from service.client import LossClient
from service.client import LossServiceError as ClientError
from service.client._client import DEFAULT_BASE_URL

API_KEY_VARIABLE = "LOSS_SERVICE_API_KEY"  # the upload's key, kept off the command line

UPLOAD_EPILOG = """\
Each FILE.npz holds arrays named logits and labels; --logits a.npy --labels b.npy (or .npz,
.npz:KEY) is one more source. Rows (axis 0) are sent in batches, each under an id derived from
its content (rows-START-STOP-HASH), after asking the run whether it holds it already: running
the same command again after an interruption sends only what is missing, and nothing counts
twice. Resume with the same --batch-rows. Failed requests are retried (502, 503, 504, dropped
connections), honouring Retry-After. Prints a JSON summary: batches, sent, stored_before, rows.
Exit status: 0, 1 (an error: unreadable files, the service refused), 2 (usage), 130 (interrupted).
"""


def add_parser(commands: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
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
    progress = ProgressLine("upload", unit="batch", units="batches") if show else None
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
