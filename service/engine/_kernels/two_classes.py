"""Plain cross-entropy over rows of two classes, in one pass.

Two classes are the commonest few-class case (a binary classifier with a softmax head), and the
one the block kernel (`few_classes`) serves worst: its twenty passes over a block of rows, each
reloading and storing its per-row arrays, cost more than the two exponentials of a row. Here one
loop over the rows does everything, reading each row's two logits where they are (LLVM
vectorises the loop across rows, the pairs split into two vectors by shuffles), for the
commonest call only: class-index labels, no weights, smoothing or z-loss (`cpu.class_index_rows`).

Of a row's two shifted logits the larger is 0 and its exponential exactly 1 (`exp_f32(0)`, and
the C library's `exp(0)`): one exponential per row, e, that of the smaller one, and a row sum
1 + e. The loss is log(1 + e) minus the shifted label logit, the gradient
`(e_c * factor - 0 - [c = y]) * scale` with factor 1 / (1 + e), as in the block kernel.

- float64 rows take the block kernel's steps in its order (the float64 sum, `log_of_sum`, the
  factor), so its bits.
- float32 rows (and 16-bit ones, computed in float32) take log(1 + e) as `log1p_unit_f32(e)`,
  the binary cross-entropy's, and the factor as a float32 division: no float64 in the loop,
  twice the lanes per vector (the float64 log was most of the loop). The sum 1 + e is not
  rounded at all (log1p of e itself), so the loss of a confident row keeps every digit where
  the block kernel's float64 sum rounds at 2^-53 (its loss off by that much, absolute); where
  the loss is above 1e-6 the two are within 3 ulp of each other, and the gradients within an
  ulp of 1 times the scale (both subtract the one-hot from factors that close).

The labels come as int32 with -1 for a row that is not counted (`count_and_narrow_class_indices`):
int64 labels halved the loop's vectors. A counted row whose maximum is not finite (an inf or NaN
logit) has a shifted label logit of -inf or NaN, so a loss of inf or NaN: the sum of the losses
is then not finite and the caller takes the general path, whose answer such rows need. An
ignored row gets a zero loss and gradient.

The kernel writes the losses in the compute dtype and returns their float64 sum, added in vector
lanes (another order than the general path's, within 1e-13 relative).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import types
from numba.extending import overload

from service.engine._kernels.few_classes import exp_shifted, log_of_sum
from service.engine._kernels.numerics import (
    ONE,
    compiled,
    convert,
    float64_sum,
    from_ordered_key,
    log1p_unit_f32,
    ordered_key,
    widen,
)


def log_and_inverse_of_sum(e: Any) -> Any:
    """(log(1 + e), 1 / (1 + e)) for a row's other exponential e in [0, 1]: per type (overload)."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(log_and_inverse_of_sum, inline="always")
def _log_and_inverse_of_sum_impl(e: Any) -> Callable[[Any], Any] | None:
    if e == types.float32:

        def single(e: Any) -> Any:
            return log1p_unit_f32(e), ONE / (ONE + e)

        return single
    if e == types.float64:

        def double(e: Any) -> Any:
            exp_sum = 1.0 + e
            return log_of_sum(exp_sum), 1.0 / exp_sum

        return double
    return None


@compiled(error_model="numpy")
def _two_class_losses(
    x: Any, labels: Any, ignored: int, scale: Any, per_sample: Any, grad: Any
) -> None:
    """Rows x [2M] (flat, 16-bit ones as their bits), labels [M] (int32) each a class or
    `ignored`: per_sample [M] and `scale` times the gradient [2M], in the compute dtype."""
    zero = convert(0.0, scale)
    one = convert(1.0, scale)
    for r in range(labels.shape[0]):
        key_0, key_1 = ordered_key(x[2 * r]), ordered_key(x[2 * r + 1])
        first_on_top = key_0 >= key_1
        peak = widen(from_ordered_key(key_0 if first_on_top else key_1, x[2 * r]))
        x_0, x_1 = widen(x[2 * r]), widen(x[2 * r + 1])
        label = labels[r]
        counted = label != ignored  # against a constant (-1, or `label >= 0`): 2x slower
        shifted_at_label = (x_1 if label == 1 else x_0) - peak
        e = exp_shifted(x_1 if first_on_top else x_0, peak)  # the top one's is 1
        log_sum, inverse_sum = log_and_inverse_of_sum(e)
        loss = log_sum - shifted_at_label
        factor = convert(inverse_sum, scale)
        e_0 = one if first_on_top else e
        e_1 = e if first_on_top else one
        grad_0 = (e_0 * factor - zero - (one if label == 0 else zero)) * scale
        grad_1 = (e_1 * factor - zero - (one if label == 1 else zero)) * scale
        grad[2 * r] = grad_0 if counted else zero
        grad[2 * r + 1] = grad_1 if counted else zero
        per_sample[r] = convert(loss, scale) if counted else zero


@compiled(error_model="numpy", nogil=True)
def two_class_rows(
    x: Any, labels: Any, ignored: int, grad_scale: float, per_sample: Any, grad: Any
) -> float:
    """Plain cross-entropy of rows x [2M] (flat) against int32 `labels` [M], each a class (0, 1)
    or `ignored` (-1, as `count_and_narrow_class_indices` writes them; an argument, not a
    constant, for the loop's sake): writes per_sample [M] and `grad_scale` times the gradient
    [2M] in the compute dtype (that of `per_sample`), and returns the float64 sum of the losses
    (not finite where a counted row has an inf or NaN logit)."""
    scale = convert(grad_scale, per_sample[0])
    _two_class_losses(x, labels, ignored, scale, per_sample, grad)
    total: float = float64_sum(per_sample)
    return total
