"""`loss-service label-noise`: confident learning over .npy / .npz files, no server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from service.cli import answers
from service.config import Settings
from service.core import Context
from service.core.label_noise import label_noise_of
from service.core.offline import checked_array
from service.engine import select_backend
from service.engine.label_noise import FilterBy, RankBy
from service.errors import LossServiceError
from service.npy_files import load_arrays
from service.schemas.label_noise import OUT_OF_SAMPLE, LabelNoiseRequest

EPILOG = f"""\
{OUT_OF_SAMPLE}

The output is the JSON of POST /v1/label-noise, on stdout or in --out FILE; --out FILE.npz
writes its arrays (label_issues, label_quality, confident_joint, class_thresholds,
transition_matrix) and its numbers (n_issues, noise_rate, n, n_classes). transition_matrix is
forward-corrected-cross-entropy's option as it is:
  loss-service compute forward-corrected-cross-entropy --logits x.npy --labels y.npy \\
      --transition-matrix out.npz:transition_matrix
Exit status: 0, 1 (invalid input), 2 (usage).
"""
TENSORS = ("label_issues", "label_quality", "confident_joint", "class_thresholds")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "label-noise",
        help="likely label errors and the noise matrix of a dataset, from files",
        description="Confident learning (Northcutt et al. 2021, as cleanlab 2.x) over arrays "
        "in files, with the service's engine, no server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scores = parser.add_mutually_exclusive_group(required=True)
    scores.add_argument("--probs", metavar="PATH", help="[N, C] out-of-sample probabilities")
    scores.add_argument("--logits", metavar="PATH", help="[N, C] out-of-sample logits")
    parser.add_argument("--labels", metavar="PATH", required=True, help="[N] given labels")
    parser.add_argument("--filter-by", choices=get_args(FilterBy), default="prune_by_noise_rate")
    parser.add_argument("--rank-by", choices=get_args(RankBy), default="self_confidence")
    parser.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="calibrate the confident joint to the label counts (default: yes)",
    )
    parser.add_argument("--max-issues", type=int, metavar="N", help="at most N issues listed")
    parser.add_argument("--out", type=Path, metavar="PATH", help=".json, .npz or .npy")


def run(args: argparse.Namespace, settings: Settings) -> int:
    def fail(message: str) -> int:
        print(f"loss-service label-noise: error: {message}", file=sys.stderr)
        return 1

    name = "probs" if args.probs is not None else "logits"
    try:
        scores = load_arrays(getattr(args, name), default_key=name)[name]
        labels = load_arrays(args.labels, default_key="labels")["labels"]
    except (OSError, ValueError) as error:
        return fail(str(error))
    try:
        # The options as the HTTP route checks them; the files' arrays stand in for the
        # tensors, checked as the codecs check a request's (dtype, finiteness).
        body = LabelNoiseRequest.model_validate(
            {
                name: [],
                "labels": [],
                "filter_by": args.filter_by,
                "rank_by": args.rank_by,
                "calibrate": args.calibrate,
                "max_issues": args.max_issues,
            }
        )
        scores = checked_array(name, scores, allow_neg_inf=name == "logits", start=0)
        labels = checked_array("labels", labels, allow_neg_inf=False, start=0)
        ctx = Context(select_backend(settings.device), settings)
        answer = label_noise_of(name, scores, labels, body, "json", ctx=ctx)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "request"
        return fail(f"{where}: {first.get('msg')}")
    except LossServiceError as error:
        return fail(error.detail)
    tensors = {key: getattr(answer, key) for key in (*TENSORS, "transition_matrix")}
    return answers.write(answer, args.out, tensors, fail)
