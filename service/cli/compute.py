"""`loss-service compute`: a loss over .npy / .npz files with the service's engine, no server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.cli import answers
from service.cli.progress import ProgressLine
from service.config import Settings
from service.core import BY_NAME, LOSSES, Context, LossSpec
from service.core.offline import offline_loss
from service.engine import select_backend
from service.errors import LossServiceError, shown
from service.npy_files import load_arrays

COMPUTE_EPILOG = """\
Inputs are named as in the HTTP API, with dashes or underscores (--logits a.npy --labels b.npy
--target-logits t.npy); --NAME file.npz takes the array NAME from the file (or its only array)
and --NAME file.npz:KEY the array KEY; positional .npz files give every array they hold, by name.
Options are KEY=VALUE with a JSON value (-o label-smoothing=0.1 -o reduction=none
-o weight=[1,2,0.5]); a value that is not JSON is a string.

The output is the JSON of POST /v1/losses/NAME, on stdout or in --out FILE. --out FILE.npz
writes the answer's arrays (per_sample, grad, grads.INPUT) and its scalars (loss, n_valid,
weight_sum as 0-d arrays; name, backend, dtype as 0-d strings) into one .npz; --out FILE.npy
writes its one array (asking for both per_sample and grad needs a .npz) and prints the scalars
as JSON.
Exit status: 0, 1 (invalid input), 2 (usage).

losses (LOSS, its inputs; `-o` takes the options of GET /v1/losses):
"""


def add_parser(commands: Any) -> None:
    losses = "".join(f"  {spec.name:<32} {_inputs(spec)}\n" for spec in LOSSES)
    compute = commands.add_parser(
        "compute",
        help="compute a loss over .npy / .npz files, offline",
        description="Compute a loss over arrays in files with the service's engine, no server.",
        epilog=COMPUTE_EPILOG + losses,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compute.add_argument(
        "loss", choices=list(BY_NAME), metavar="LOSS", help="a loss of the list below"
    )
    compute.add_argument("npz", nargs="*", metavar="FILE.npz", help="arrays named as inputs")
    inputs = compute.add_argument_group("inputs (each a .npy, .npz or .npz:KEY)")
    for name in sorted({name for spec in LOSSES for name in spec.inputs}):
        flags = dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name}"])  # both spellings
        inputs.add_argument(*flags, metavar="PATH", dest=f"input_{name}")
    compute.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a request field: reduction, return_grad, label_smoothing, ...",
    )
    compute.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="write the JSON here instead of stdout; a .npz or .npy gets arrays (see below)",
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


def _inputs(spec: LossSpec) -> str:
    """`logits, labels, [weight]`: the loss's inputs, optional ones in brackets."""
    return ", ".join(name if name in spec.required_inputs else f"[{name}]" for name in spec.inputs)


def run(args: argparse.Namespace, settings: Settings) -> int:
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

    if answers.wants_arrays(args.out):
        options["output_encoding"] = "json"  # the arrays as they are, not base64
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = ProgressLine(args.loss) if show else None
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
    grads = {f"grads.{name}": grad for name, grad in (response.grads or {}).items()}
    tensors = {"per_sample": response.per_sample, "grad": response.grad, **grads}
    return answers.write(response, args.out, tensors, fail)


def _option(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--option {shown(item)}: expected KEY=VALUE")
    key = key.replace("-", "_")  # label-smoothing, as a command line spells it
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw  # reduction=none: a bare string


def _validation_message(error: Any) -> str:
    """As the HTTP API words a request validation error: `field: message`."""
    name = ".".join(str(part) for part in error.get("loc", ())) or "request"
    return f"{name}: {error.get('msg', 'invalid value')}"
