"""Class-balanced weights from class counts (Cui et al., "Class-Balanced Loss Based on Effective
Number of Samples", CVPR 2019).

The effective number of samples of a class seen n times is (1 - beta^n) / (1 - beta); its weight is
the inverse, normalised so the weights sum to C. beta = 0 gives equal weights, beta -> 1 inverse
class frequency.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from service.engine._checks import check_option_range, require
from service.engine._namespace import Array
from service.engine._rows import class_weight
from service.errors import InvalidInput

DEFAULT_BETA = 0.999


def class_balanced_weight(
    class_counts: Array, beta: float, n_classes: int, dtype: np.dtype, *, xp: ModuleType
) -> Array:
    """Weights [C] in `dtype` from counts [C] (finite, > 0) and 0 <= beta < 1."""
    check_option_range(beta, "class_balance_beta", low=0.0, high=1.0, open_high=True)
    counts = class_weight(
        class_counts, n_classes, np.dtype(np.float64), xp=xp, field="class_counts"
    )
    require(
        bool(xp.all(counts > 0)),
        "class_counts",
        "every count must be > 0: an unseen class would get an infinite weight",
    )
    if beta == 0:
        return xp.ones(n_classes, dtype=dtype)
    # 1 - beta^n as -expm1(n log beta): exact when beta^n is close to 1 (small n, beta near 1).
    effective = -xp.expm1(counts * np.log(beta)) / (1 - beta)
    weight = 1 / effective
    return (weight * (n_classes / xp.sum(weight))).astype(dtype)


def resolve_class_weight(
    given: Array | None,
    given_field: str,
    class_counts: Array | None,
    class_balance_beta: float | None,
    n_classes: int,
    dtype: np.dtype,
    *,
    xp: ModuleType,
) -> Array | None:
    """The per-class factor of a loss: `given` as is, or derived from `class_counts`."""
    if class_counts is None:
        if class_balance_beta is not None:
            raise InvalidInput(
                "class_balance_beta: only used with class_counts", field="class_balance_beta"
            )
        return (
            None
            if given is None
            else class_weight(given, n_classes, dtype, xp=xp, field=given_field)
        )
    if given is not None:
        raise InvalidInput(
            f"{given_field}: give {given_field} or class_counts, not both", field=given_field
        )
    beta = DEFAULT_BETA if class_balance_beta is None else class_balance_beta
    return class_balanced_weight(class_counts, beta, n_classes, dtype, xp=xp)
