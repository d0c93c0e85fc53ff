"""The softmax-row kernel for rows of few classes (up to `FEW_CLASSES`), vectorised across rows.

`softmax` vectorises along a row: a row of 2 or 10 classes fills no vector register, and the
per-row steps (the loops' set-up, `log1p`, the label's terms) cost more than the row's elements.
Here the rows go `BLOCK_ROWS` at a time through a block transposed into class-major order
(`block[c, r]`: class c of row r, in the compute dtype), which stays in the L1 cache. Every pass
is then a loop over the rows of the block, with contiguous reads and writes, which LLVM
vectorises: one vector holds eight rows' elements of a class. The class count is a constant of
the compiled code (one kernel per count, compiled on first use or loaded from numba's cache), so
the loops over classes unroll.

For each block:

1. the rows are read, widened and transposed into the block;
2. per row the maximum (on `ordered_key`s, as `softmax`), the label's shifted logit, and with
   label smoothing the dot product of the spread with the shifted logits;
3. the exponentials, in place, then their float64 sums, added in class order;
4. per row `log_sum` by `log_row_sum` (within 1 ulp of the C library's `log1p(sum - 1)`, which
   `softmax` calls: a call per row does not vectorise), `lse`, the loss and the gradient factor,
   in `softmax`'s formulas and order;
5. the gradient, `(exp * factor - spread - mass e_label) * scale` as `softmax`, transposed back.

The numbers are `softmax`'s but for the last bit of `log_sum` and the order of the float64 row
sums (float32 rows: well within the 1e-7 relative of the reference; float64 rows: 1e-15).
Focal and poly-1 take the label terms of each row from `label_terms` (library calls: that pass
is not vectorised). A row's numbers do not depend on where its block starts, so a large call
runs as spans of whole blocks on several threads (`cpu`), with the numbers of one span.
Plain cross-entropy over two classes with class-index labels has a kernel of its own, one pass
with one exponential per row (`two_classes`): these numbers for float64 rows, within 3 ulp of
them for float32 ones (where the loss is above 1e-6).

Each pass over a block's class is a function of its own: compiled with its own fast-math flags
and vectorised on its own, then inlined by LLVM. They index the block with a class and a row from
`range`, never with a computed offset: numba wraps negative indices around, and a select per
element on an index LLVM cannot prove non-negative stops the vectoriser.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Final

import numpy as np

from service.engine._kernels.interface import CROSS_ENTROPY
from service.engine._kernels.label_terms import label_terms
from service.engine._kernels.numerics import (
    compiled,
    convert,
    exp_nonpositive,
    f32_from_bits,
    f32_pair_bits,
    from_ordered_key,
    log_row_sum,
    ordered_key,
    widen,
)

FEW_CLASSES: Final = 12
BLOCK_ROWS: Final = 512  # 12 float32 classes and the per-row values: 32 KiB, an L1 cache
# Class counts whose float32 rows and gradients move in and out of the block two classes at a
# time, as uint64 (`x_pairs`, `grad_pairs`). LLVM transposes rows of up to 8 elements with
# vector shuffles, longer ones with gathers and scatters, which some processors run slowly (AMD
# Zen 4: 3-6 ns per row of 10 or 12 float32, against 1 ns as 5 or 6 pairs).
PAIRED_CLASSES: Final = (10, 12)
_HIGH_HALF: Final = np.uint64(32)
# The block's extra rows (after the classes): per-row values in the compute dtype.
_PEAK, _AT, _FACTOR, _MASS = range(4)
BLOCK_EXTRA_ROWS: Final = 4
# The float64 scratch rows: the exponentials' sums, their logs, the spread's dot products.
_SUM, _LOG, _DOT = range(3)
WIDE_ROWS: Final = 3


# --- passes over class c of a block (rows 0 .. n - 1) --------------------------------------
# One array written per loop: LLVM vectorises a loop only after checking at run time that its
# arrays do not overlap, and gives up when that takes more than a few comparisons.


@compiled(error_model="numpy")
def _first_keys(block: Any, n: int, keys: Any) -> None:
    for r in range(n):
        keys[r] = ordered_key(block[0, r])


@compiled(error_model="numpy")
def _running_max(block: Any, c: int, n: int, keys: Any) -> None:
    for r in range(n):
        key = ordered_key(block[c, r])
        keys[r] = key if key > keys[r] else keys[r]


@compiled(error_model="numpy")
def _add_shifted(block: Any, c: int, n: int, peak: Any, weight: Any, dot: Any) -> None:
    """dot += w_c (x_c - shift), in float64; the caller skips a zero weight (adds 0, even at
    x_c = -inf)."""
    w = np.float64(weight)
    for r in range(n):
        dot[r] += w * np.float64(block[c, r] - peak[r])  # shifted in the compute dtype


# `contract` fuses the exp polynomial's multiply-adds (each rounds once), as `softmax._store_exp`
@compiled(fastmath={"contract"}, error_model="numpy")
def exp_shifted(value: Any, peak: Any) -> Any:
    """exp(value - peak) for value <= peak, in their compute dtype; inlined where it is called,
    with its own flags."""
    return exp_nonpositive(value - peak)


@compiled(error_model="numpy")
def _exp_in_place(block: Any, c: int, n: int, peak: Any) -> None:
    for r in range(n):
        block[c, r] = exp_shifted(block[c, r], peak[r])


# Loops of their own: added in the exp's loop, the float64 sums cost as much as the exp.
@compiled(error_model="numpy")
def _start_sums(block: Any, n: int, sums: Any) -> None:
    for r in range(n):
        sums[r] = np.float64(block[0, r])  # 0 + e_0, exactly


@compiled(error_model="numpy")
def _add_to_sums(block: Any, c: int, n: int, sums: Any) -> None:
    for r in range(n):
        sums[r] += np.float64(block[c, r])


@compiled(error_model="numpy")
def _gradient(
    block: Any, c: int, n: int, factor: Any, spread: Any, labels: Any, mass: Any, scale: Any
) -> None:
    zero = convert(0.0, scale)
    for r in range(n):
        step = block[c, r] * factor[r] - spread  # `- 0` changes no bit (-0 included)
        block[c, r] = (step - (mass[r] if labels[r] == c else zero)) * scale


# --- passes over the rows of a block -------------------------------------------------------


@compiled(error_model="numpy")
def _labels_of(y: Any, valid: Any, n: int, labels: Any) -> None:
    """The label of each row, -1 for a row that is not counted (a select vectorises less well)."""
    for r in range(n):
        labels[r] = (y[r] + 1) * np.int64(valid[r]) - 1


@compiled(error_model="numpy")
def _label_logits(block: Any, n: int, labels: Any, at: Any) -> None:
    """x_y per row (x_0 for a row that is not counted): a gather, one load per row. A select
    per class instead, `at = x_c if y == c else at`, becomes a branch on the label, which the
    processor mispredicts as often as labels change."""
    for r in range(n):
        at[r] = block[max(labels[r], 0), r]


@compiled(error_model="numpy")
def _peaks(keys: Any, n: int, peak: Any) -> None:
    """The row maxima from their keys; 0 for an all -inf row (no inf - inf)."""
    zero = convert(0.0, peak[0])
    for r in range(n):
        p = from_ordered_key(keys[r], peak[0])
        peak[r] = p if math.isfinite(p) else zero


@compiled(error_model="numpy")
def _shift(values: Any, n: int, peak: Any) -> None:
    for r in range(n):
        values[r] = values[r] - peak[r]


# `contract`: the series' multiply-adds fused, 30% faster (a chain of dependent operations
# bounds a loop of it) and still within 1 ulp of `log1p(sum - 1)`.
@compiled(fastmath={"contract"}, error_model="numpy")
def log_of_sum(total: float) -> float:
    """log(total) of a row's float64 sum of exponentials: `log_row_sum` where it holds
    (1 <= total < inf), -inf for 0 (an all -inf row), and inf or NaN as they are."""
    inside = (total >= 1.0) & (total < math.inf)  # `and` would branch: no vectors
    value = log_row_sum(total if inside else 1.0)
    return value if inside else (-math.inf if total == 0 else total)


@compiled(error_model="numpy")
def _log_sums(sums: Any, n: int, logs: Any) -> None:
    for r in range(n):
        logs[r] = log_of_sum(sums[r])


@compiled(error_model="numpy")
def _lse_rows(n: int, peak: Any, logs: Any, labels: Any, keep_lse: bool, lse: Any) -> None:
    for r in range(n):
        row_lse = peak[r] + logs[r]
        lse[r] = row_lse if (labels[r] >= 0) | keep_lse else 0.0


@compiled(error_model="numpy")
def _cross_entropy_losses(
    n: int, logs: Any, at: Any, dot: Any, at_label: Any, total: Any, labels: Any, per_sample: Any
) -> None:
    """`A log_sum - dot - m (x_y - shift)` per row, as `softmax._softmax_row`; 0 for a row that
    is not counted."""
    for r in range(n):
        m = at_label[r]
        loss = total[r] * logs[r] - dot[r]
        loss -= 0.0 if m == 0 else m * at[r]  # no mass on -inf: 0
        per_sample[r] = loss if labels[r] >= 0 else 0.0


@compiled(error_model="numpy")
def _cross_entropy_factors(
    n: int, total: Any, lse: Any, z_loss: float, sums: Any, factor: Any
) -> None:
    """The gradient factor `(A + 2 z lse) / sum` per row."""
    for r in range(n):
        scale = np.float64(total[r])
        if z_loss != 0:
            scale += (2 * z_loss) * lse[r]
        factor[r] = convert(scale / sums[r], total[r])


@functools.cache
def few_class_kernel(n_classes: int) -> Any:
    """The compiled kernel for rows of `n_classes` (1 to `FEW_CLASSES`); arguments as
    `softmax.softmax_rows_serial`'s (`x` and `grad` flat), then `x_pairs` and `grad_pairs`
    (for `PAIRED_CLASSES`: uint64 views of float32 `x` and `grad`, or empty where they are not
    float32 or not 8-byte aligned), then the scratch: `block` [n_classes + BLOCK_EXTRA_ROWS,
    BLOCK_ROWS] of the compute dtype, `wide` [WIDE_ROWS, BLOCK_ROWS] float64 and `labels`
    [BLOCK_ROWS] int64."""
    if not 1 <= n_classes <= FEW_CLASSES:
        raise ValueError(f"few_class_kernel: 1 to {FEW_CLASSES} classes, not {n_classes}")
    classes = n_classes  # a constant of the compiled code (numba's cache keys on it too)
    paired = n_classes in PAIRED_CLASSES
    half = n_classes // 2

    def few_class_rows(
        x: Any,
        y: Any,
        valid: Any,
        kind: int,
        at_label: Any,
        total: Any,
        spread: Any,
        z_loss: float,
        param: float,
        alpha: Any,
        grad_scale: float,
        per_sample: Any,
        lse: Any,
        grad: Any,
        x_pairs: Any,
        grad_pairs: Any,
        block: Any,
        wide: Any,
        labels: Any,
        keys: Any,
    ) -> None:
        smoothing = spread.shape[0] > 0
        weighted = alpha.shape[0] > 0
        keep_lse = z_loss != 0
        peak, at = block[classes + _PEAK], block[classes + _AT]
        factor, mass = block[classes + _FACTOR], block[classes + _MASS]
        sums, logs, dot = wide[_SUM], wide[_LOG], wide[_DOT]
        like = peak[0]  # a value of the compute dtype
        scale_out = convert(grad_scale, like)  # as `reduce_loss` casts its factor
        zero = convert(0.0, like)
        for first in range(0, y.shape[0], BLOCK_ROWS):
            n = min(BLOCK_ROWS, y.shape[0] - first)
            rows = x[first * classes : (first + n) * classes]
            grad_rows = grad[first * classes : (first + n) * classes]
            y_rows, valid_rows = y[first : first + n], valid[first : first + n]
            loss_rows, lse_rows = per_sample[first : first + n], lse[first : first + n]
            mass_rows, total_rows = at_label[first : first + n], total[first : first + n]
            # 1. transposed in (16-bit rows widened)
            if paired and x_pairs.shape[0] > 0:
                pairs = x_pairs[first * half : (first + n) * half]
                for r in range(n):
                    for j in range(half):
                        both = pairs[r * half + j]
                        block[2 * j, r] = f32_from_bits(both)  # the low half: the first
                        block[2 * j + 1, r] = f32_from_bits(both >> _HIGH_HALF)
            else:
                for r in range(n):
                    for c in range(classes):
                        block[c, r] = widen(rows[r * classes + c])
            # 2. maximum, label logit, dot product
            _labels_of(y_rows, valid_rows, n, labels)
            _label_logits(block, n, labels, at)
            _first_keys(block, n, keys)
            for c in range(1, classes):
                _running_max(block, c, n, keys)
            _peaks(keys, n, peak)
            _shift(at, n, peak)
            dot[:n] = 0.0
            if smoothing:  # the dot product comes before the label term, as in `softmax`
                for c in range(classes):
                    if spread[c] != 0:
                        _add_shifted(block, c, n, peak, spread[c], dot)
            # 3. exponentials and their sums
            _exp_in_place(block, 0, n, peak)
            _start_sums(block, n, sums)
            for c in range(1, classes):
                _exp_in_place(block, c, n, peak)
                _add_to_sums(block, c, n, sums)
            # 4. the row's loss and gradient factor
            _log_sums(sums, n, logs)
            _lse_rows(n, peak, logs, labels, keep_lse, lse_rows)
            if kind == CROSS_ENTROPY:
                _cross_entropy_losses(
                    n, logs, at, dot, mass_rows, total_rows, labels, loss_rows
                )  # fmt: skip
                _cross_entropy_factors(n, total_rows, lse_rows, z_loss, sums, factor)
                mass[:n] = mass_rows
            else:
                for r in range(n):
                    label = labels[r] if labels[r] >= 0 else 0
                    loss, s = label_terms(kind, param, np.float64(at[r]) - logs[r])
                    if weighted:
                        alpha_y = alpha[label]
                        s = alpha_y * s
                        loss = 0.0 if alpha_y == 0 else alpha_y * loss  # alpha_y = 0 at -inf: 0
                    m = convert(s, like)
                    mass[r] = m
                    factor[r] = convert(m / sums[r], like)
                    loss_rows[r] = loss if labels[r] >= 0 else 0.0
            # 5. the gradient (that of an ignored row is zeroed by the caller), transposed out
            for c in range(classes):
                w = spread[c] if smoothing else zero
                _gradient(block, c, n, factor, w, labels, mass, scale_out)
            if paired and grad_pairs.shape[0] > 0:
                pairs_out = grad_pairs[first * half : (first + n) * half]
                for r in range(n):
                    for j in range(half):
                        first_class, second_class = block[2 * j, r], block[2 * j + 1, r]
                        pairs_out[r * half + j] = f32_pair_bits(first_class, second_class)
            else:
                for r in range(n):
                    for c in range(classes):
                        grad_rows[r * classes + c] = block[c, r]

    return compiled(fastmath=False, error_model="numpy", nogil=True)(few_class_rows)
