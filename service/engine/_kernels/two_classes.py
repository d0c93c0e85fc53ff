"""Plain cross-entropy over rows of two classes, in one pass: the few-class kernel's numbers at a
third of its cost.

Two classes are the commonest few-class case (a binary classifier with a softmax head), and the
one the block kernel (`few_classes`) serves worst: its twenty passes over a block of rows, each
reloading and storing its per-row arrays, cost more than the two exponentials of a row. Here one
loop over the rows does everything, reading each row's two logits where they are (LLVM
vectorises the loop across rows, the pairs split into two vectors by shuffles), for the
commonest call only: class-index labels, no weights, smoothing or z-loss (`cpu.class_index_rows`).

Of a row's two shifted logits the larger is 0 and its exponential exactly 1 (`exp_f32(0)`, and
the C library's `exp(0)`): one exponential per row, that of the smaller one. Every other step is
the block kernel's, in its order and dtypes (the row sum `1 + e` in float64, `log_of_sum`, the
loss, the factor `1 / sum`, the gradient `(e_c * factor - 0 - [c = y]) * scale`), so the bits
are its bits, wherever the loss is finite. A counted row whose maximum is not finite (an inf or
NaN logit) has a shifted label logit of -inf or NaN, so a loss of inf or NaN: the sum of the
losses is then not finite and the caller takes the general path, whose answer such rows need.
An ignored row gets a zero loss and gradient.

The kernel writes the losses in the compute dtype and returns their float64 sum, added in vector
lanes (another order than the general path's, within 1e-13 relative).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.engine._kernels.few_classes import exp_shifted, log_of_sum
from service.engine._kernels.numerics import (
    compiled,
    convert,
    float64_sum,
    from_ordered_key,
    ordered_key,
    widen,
)


@compiled(error_model="numpy")
def _two_class_losses(
    x: Any, labels: Any, ignore_index: int, scale: Any, per_sample: Any, grad: Any
) -> None:
    """Rows x [2M] (flat, 16-bit ones as their bits), labels [M] each a class or
    `ignore_index`: per_sample [M] and `scale` times the gradient [2M], in the compute dtype."""
    zero = convert(0.0, scale)
    one = convert(1.0, scale)
    for r in range(labels.shape[0]):
        key_0, key_1 = ordered_key(x[2 * r]), ordered_key(x[2 * r + 1])
        first_on_top = key_0 >= key_1
        peak = widen(from_ordered_key(key_0 if first_on_top else key_1, x[2 * r]))
        x_0, x_1 = widen(x[2 * r]), widen(x[2 * r + 1])
        label = labels[r]
        counted = label != ignore_index  # against a constant (-1, or `label >= 0`): 1.5x slower
        shifted_at_label = (x_1 if label == 1 else x_0) - peak
        e = exp_shifted(x_1 if first_on_top else x_0, peak)  # the top one's is 1
        exp_sum = 1.0 + np.float64(e)
        loss = log_of_sum(exp_sum) - np.float64(shifted_at_label)
        factor = convert(1.0 / exp_sum, scale)
        e_0 = one if first_on_top else e
        e_1 = e if first_on_top else one
        grad_0 = (e_0 * factor - zero - (one if label == 0 else zero)) * scale
        grad_1 = (e_1 * factor - zero - (one if label == 1 else zero)) * scale
        grad[2 * r] = grad_0 if counted else zero
        grad[2 * r + 1] = grad_1 if counted else zero
        per_sample[r] = convert(loss, scale) if counted else zero


@compiled(error_model="numpy", nogil=True)
def two_class_rows(
    x: Any, labels: Any, ignore_index: int, grad_scale: float, per_sample: Any, grad: Any
) -> float:
    """Plain cross-entropy of rows x [2M] (flat) against int64 `labels` [M], each a class (0, 1)
    or `ignore_index`: writes per_sample [M] and `grad_scale` times the gradient [2M] in the
    compute dtype (that of `per_sample`), and returns the float64 sum of the losses (not
    finite where a counted row has an inf or NaN logit)."""
    scale = convert(grad_scale, per_sample[0])
    _two_class_losses(x, labels, ignore_index, scale, per_sample, grad)
    total: float = float64_sum(per_sample)
    return total
