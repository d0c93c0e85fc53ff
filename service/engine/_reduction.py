"""The one reduction every loss goes through: `mean`, `sum` or `none`.

A loss function returns a `LossResult`: the loss of each sample (0 where masked), the gradient of
the *sum* of those losses with respect to each input, and the divisor that `mean` uses. The divisor
is what makes the PyTorch conventions differ per loss (`sum(weight[y])` over non-ignored labels for
weighted cross-entropy, the number of samples for probability targets, the number of elements for
BCE), so each loss states it and this module applies it the same way for all.

Scaling a gradient by `1 / divisor` is a pass over it, as long as the kernel that wrote it. A loss
that knows the reduction beforehand (its `grad_reduction` option) and writes its gradient in one
kernel may fold `grad_scale(reduction, divisor)` into it instead, and say so in
`LossResult.grad_scale`; `reduce_loss` then only rescales by the factor still missing, usually none.
The reference code never folds: its gradient is the gradient of the sum, `grad_scale` 1.
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
    grads: Mapping[str, Array]  # input name -> grad_scale * d sum(per_sample) / d input
    n_valid: int  # samples that count (not ignored)
    divisor: float  # what `mean` divides the sum by
    grad_scale: float = 1.0  # the factor `grads` already carry (see `grad_scale`)
    total: float | None = None  # sum(per_sample) in float64, where the kernel added it up


@dataclass(frozen=True)
class ReducedLoss:
    loss: float  # the reduced value; for `none`, the sum of `per_sample`
    per_sample: Array | None  # only for `none`
    grads: Mapping[str, Array]  # gradient of `loss` (of sum(per_sample) for `none`)
    n_valid: int
    weight_sum: float  # the divisor of `mean`, reported for every reduction


def grad_scale(reduction: Reduction, divisor: float) -> float:
    """The factor on the gradient of the sum that the gradient of `reduction` carries, for a loss
    to fold into its kernel: `1 / divisor` for `mean`, else 1. A zero divisor gives 1 (nothing to
    fold: `reduce_loss` zeroes that gradient, whatever its scale)."""
    return 1.0 / divisor if reduction == "mean" and divisor != 0 else 1.0


def reduce_total(
    total: float, divisor: float, reduction: Reduction, *, empty: EmptyPolicy = "zero"
) -> float:
    """The reduced loss from the float64 sum of the per-sample losses and the divisor of `mean`
    (see `reduce_loss`). Sums of disjoint batches add up, so this also reduces a whole dataset
    sent in pieces (evaluation runs)."""
    if reduction != "mean":
        return total
    if divisor == 0:
        return 0.0 if empty == "zero" else float("nan")
    return total / divisor


def reduce_loss(
    result: LossResult, reduction: Reduction = "mean", *, empty: EmptyPolicy = "zero"
) -> ReducedLoss:
    """Apply `reduction`; the gradients are scaled in place (the result owns them), by the factor
    `result.grad_scale` leaves missing: none when the loss folded this reduction's scale in.

    With `mean` and a zero divisor (every label ignored, an empty batch, or all weights 0) PyTorch
    returns 0/0 = NaN. The default `empty="zero"` returns 0 with a zero gradient instead, so one
    fully padded shard does not poison an average; `empty="nan"` gives PyTorch's NaN. Either way
    the gradient is 0: no sample contributed.
    """
    xp = array_namespace(result.per_sample)
    # Accumulate in float64 whatever the compute dtype: float32 sums over 1e6 tokens drift.
    total = result.total
    if total is None:
        total = float(result.per_sample.sum(dtype=xp.float64))
    loss = reduce_total(total, result.divisor, reduction, empty=empty)
    if reduction == "mean" and result.divisor == 0:
        for grad in result.grads.values():
            grad[...] = 0
    else:
        # the same float operations as the loss's: exactly 1 when it folded this reduction's scale
        factor = grad_scale(reduction, result.divisor) / result.grad_scale
        if factor != 1:
            for grad in result.grads.values():
                grad *= grad.dtype.type(factor)
    return ReducedLoss(
        loss=loss,
        per_sample=result.per_sample if reduction == "none" else None,
        grads=result.grads,
        n_valid=result.n_valid,
        weight_sum=result.divisor,
    )
