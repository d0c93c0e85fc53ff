"""The one reduction every loss goes through: `mean`, `sum` or `none`.

A loss function returns a `LossResult`: the loss of each sample (0 where masked), the gradient of
the *sum* of those losses with respect to each input, and the divisor that `mean` uses. The divisor
is what makes the PyTorch conventions differ per loss (`sum(weight[y])` over non-ignored labels for
weighted cross-entropy, the number of samples for probability targets, the number of elements for
BCE), so each loss states it and this module applies it the same way for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from service.engine._namespace import Array, array_namespace

Reduction = Literal["mean", "sum", "none"]
EmptyPolicy = Literal["zero", "nan"]


@dataclass(frozen=True)
class LossResult:
    per_sample: Array  # loss per sample, the input's leading shape; 0 where masked
    grads: Mapping[str, Array]  # input name -> d sum(per_sample) / d input
    n_valid: int  # samples that count (not ignored)
    divisor: float  # what `mean` divides the sum by


@dataclass(frozen=True)
class ReducedLoss:
    loss: float  # the reduced value; for `none`, the sum of `per_sample`
    per_sample: Array | None  # only for `none`
    grads: Mapping[str, Array]  # gradient of `loss` (of sum(per_sample) for `none`)
    n_valid: int
    weight_sum: float  # the divisor of `mean`, reported for every reduction


def reduce_loss(
    result: LossResult, reduction: Reduction = "mean", *, empty: EmptyPolicy = "zero"
) -> ReducedLoss:
    """Apply `reduction`; the gradients are scaled in place (the result owns them).

    With `mean` and a zero divisor (every label ignored, an empty batch, or all weights 0) PyTorch
    returns 0/0 = NaN. The default `empty="zero"` returns 0 with a zero gradient instead, so one
    fully padded shard does not poison an average; `empty="nan"` gives PyTorch's NaN. Either way
    the gradient is 0: no sample contributed.
    """
    xp = array_namespace(result.per_sample)
    # Accumulate in float64 whatever the compute dtype: float32 sums over 1e6 tokens drift.
    total = float(xp.sum(result.per_sample, dtype=xp.float64))
    loss = total
    if reduction == "mean":
        if result.divisor == 0:
            loss = 0.0 if empty == "zero" else float("nan")
            for grad in result.grads.values():
                grad[...] = 0
        else:
            loss = total / result.divisor
            for grad in result.grads.values():
                grad *= grad.dtype.type(1.0 / result.divisor)
    return ReducedLoss(
        loss=loss,
        per_sample=result.per_sample if reduction == "none" else None,
        grads=result.grads,
        n_valid=result.n_valid,
        weight_sum=result.divisor,
    )
