"""The options of a label-noise report: which rows count as issues, how they are ranked."""

from __future__ import annotations

from typing import Literal

import numpy as np

from service.engine._checks import require

FilterBy = Literal[
    "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"
]
FILTERS: tuple[FilterBy, ...] = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
)
RankBy = Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"]
RANKINGS: tuple[RankBy, ...] = (
    "self_confidence",
    "normalized_margin",
    "confidence_weighted_entropy",
)


def check_options(filter_by: FilterBy, rank_by: RankBy, max_issues: int | None) -> None:
    require(
        filter_by in FILTERS,
        "filter_by",
        f"expected one of {', '.join(FILTERS)}, got {filter_by!r}",
    )
    require(
        rank_by in RANKINGS, "rank_by", f"expected one of {', '.join(RANKINGS)}, got {rank_by!r}"
    )
    if max_issues is not None:
        whole = isinstance(max_issues, int | np.integer) and not isinstance(max_issues, bool)
        require(
            whole and max_issues >= 0,
            "max_issues",
            f"expected a whole number >= 0 or null, got {max_issues!r}",
        )
