"""The softmax-row kernel for rows of few classes (up to `FEW_CLASSES`), vectorised across rows.

`softmax` vectorises along a row: a row of 2 or 8 classes fills no vector register, and the
per-row steps (the loops' set-up, `log1p`, the label's terms) cost more than the row's elements.
Here the class count is a constant of the compiled code (one kernel per count, compiled on first
use or loaded from numba's cache): the loops over a row's classes unroll, and LLVM vectorises the
loop over rows, reading the rows' elements as interleaved groups. It does so for rows of up to 8
classes; rows of 9 to `FEW_CLASSES` it leaves scalar, still faster than `softmax`'s per-row
loops (65536 x 10 float32: 5.5 against 8.5 ms on one loaded core), which win from 16 classes.

Three passes over the rows (loops over blocks of rows would keep the exponentials in the L1
cache, but LLVM then vectorises none of them):

1. per row, the maximum (on `ordered_key`s, as `softmax`), the exponentials written into the
   gradient rows, and their float64 sum, added in class order;
2. per row, `log_sum = log(sum)` by `log_row_sum` (within 1 ulp of the C library's
   `log1p(sum - 1)`, which `softmax` calls: a call per row does not vectorise), `lse`, the loss,
   and the gradient factor, in `softmax`'s formulas and order;
3. the gradient rows: `(exp * factor - spread - mass e_label) * scale`, as `softmax`.

The numbers are `softmax`'s but for the last bit of `log_sum` and the order of the float64 row
sums (float32 rows: well within the 1e-7 relative of the reference; float64 rows: 1e-15).
Focal and poly-1 take the label terms of each row from `label_terms` (library calls: that pass
is not vectorised). It runs serially, whatever the size of the call: one kernel per class count
gives one result, and a call large enough to gain from threads is rare with rows this short.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Final

import numba
import numpy as np

from service.engine._kernels.interface import CROSS_ENTROPY
from service.engine._kernels.label_terms import label_terms
from service.engine._kernels.numerics import (
    compiled,
    convert,
    exp_nonpositive,
    from_ordered_key,
    log_row_sum,
    ordered_key,
    widen,
)

FEW_CLASSES: Final = 12
_LOG_ROW_SUM_BELOW: Final = 90.0  # `log_row_sum`'s domain: a row's sum is at most its length


# The exp with its own flags, as `softmax._store_exp`: `contract` fuses the polynomial's
# multiply-adds (each rounds once). LLVM inlines it into the loop, flags and all.
@compiled(fastmath={"contract"}, error_model="numpy")
def _exp_contracted(t: Any) -> Any:
    return exp_nonpositive(t)


@numba.njit(inline="always")
def _log_sum(total: float) -> float:
    """log(total) for a row sum: `log_row_sum` where it holds (1 <= total < 90), -inf for 0 (an
    all -inf row), and inf or NaN as they are."""
    inside = (total >= 1.0) & (total < _LOG_ROW_SUM_BELOW)  # `and` would branch: no vectors
    value = log_row_sum(total if inside else 1.0)
    return value if inside else (-math.inf if total == 0 else total)


@functools.cache
def few_class_kernel(n_classes: int) -> Any:
    """The compiled kernel for rows of `n_classes` (1 to `FEW_CLASSES`); arguments as
    `softmax.softmax_rows_serial`'s, with the rows `x` and the gradient `grad` flattened, and
    at least one row."""
    if not 1 <= n_classes <= FEW_CLASSES:
        raise ValueError(f"few_class_kernel: 1 to {FEW_CLASSES} classes, not {n_classes}")
    classes = n_classes  # a constant of the compiled code (numba's cache keys on it too)

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
        wide: Any,
        narrow: Any,
        labels: Any,
    ) -> None:
        n_rows = y.shape[0]
        smoothing = spread.shape[0] > 0
        weighted = alpha.shape[0] > 0
        like = widen(x[0])  # a value of the compute dtype (the caller passes rows)
        sums, logs = wide[:n_rows], wide[n_rows:]
        shift, factor = narrow[:n_rows], narrow[n_rows : 2 * n_rows]
        mass, at = narrow[2 * n_rows : 3 * n_rows], narrow[3 * n_rows :]
        scale_out = convert(grad_scale, like)  # as `reduce_loss` casts its factor
        zero = convert(0.0, like)
        # 1. maximum, exponentials, their sum
        for i in range(n_rows):
            base = i * classes
            top = ordered_key(x[base])
            for c in range(1, classes):
                key = ordered_key(x[base + c])
                top = key if key > top else top
            peak = widen(from_ordered_key(top, x[base]))
            peak = peak if math.isfinite(peak) else zero  # all -inf: no inf - inf
            row_sum = 0.0
            for c in range(classes):
                e = _exp_contracted(widen(x[base + c]) - peak)
                grad[base + c] = e
                row_sum += np.float64(e)
            shift[i] = peak
            sums[i] = row_sum
        # 2. the row's loss and gradient factor. Short loops over few arrays each: LLVM
        # vectorises a loop only when it can check cheaply that its arrays do not overlap.
        for i in range(n_rows):
            logs[i] = _log_sum(sums[i])
        # labels: -1 for a row that is not counted
        for i in range(n_rows):
            counted = np.int64(valid[i])
            labels[i] = (y[i] + 1) * counted - 1  # a select of y[i] vectorises less well
        # at: x_y - shift
        for i in range(n_rows):
            label = labels[i] if labels[i] >= 0 else 0
            at[i] = widen(x[i * classes + label]) - shift[i]
        keep_lse = z_loss != 0
        for i in range(n_rows):
            row_lse = shift[i] + logs[i]
            lse[i] = row_lse if (labels[i] >= 0) | keep_lse else 0.0
        if kind == CROSS_ENTROPY:
            for i in range(n_rows):
                m = at_label[i]
                per_sample[i] = total[i] * logs[i] - (0.0 if m == 0 else m * at[i])
            if smoothing:  # the dot product comes before the label term, as in `softmax`
                for i in range(n_rows):
                    base = i * classes
                    dot = 0.0
                    for c in range(classes):
                        w = spread[c]
                        shifted = widen(x[base + c]) - shift[i]
                        dot += 0.0 if w == 0 else np.float64(w) * np.float64(shifted)
                    m = at_label[i]
                    loss = total[i] * logs[i] - dot
                    per_sample[i] = loss - (0.0 if m == 0 else m * at[i])
            for i in range(n_rows):
                mass[i] = at_label[i]
                scale = np.float64(total[i])
                if keep_lse:
                    scale += (2 * z_loss) * lse[i]
                factor[i] = convert(scale / sums[i], like)
        else:
            for i in range(n_rows):
                label = labels[i] if labels[i] >= 0 else 0
                loss, s = label_terms(kind, param, np.float64(at[i]) - logs[i])
                if weighted:
                    alpha_y = alpha[label]
                    s = alpha_y * s
                    loss = 0.0 if alpha_y == 0 else alpha_y * loss  # alpha_y = 0 at -inf: 0
                m = convert(s, like)
                mass[i] = m
                factor[i] = convert(m / sums[i], like)
                per_sample[i] = loss
        for i in range(n_rows):
            per_sample[i] = per_sample[i] if labels[i] >= 0 else 0.0
        # 3. the gradient rows (those of ignored rows are zeroed by the caller)
        if smoothing:
            for i in range(n_rows):
                base = i * classes
                for c in range(classes):
                    step = grad[base + c] * factor[i] - spread[c]
                    grad[base + c] = (step - (mass[i] if c == labels[i] else zero)) * scale_out
        else:
            for i in range(n_rows):
                base = i * classes
                for c in range(classes):
                    step = grad[base + c] * factor[i]  # `- 0` would change no bit
                    grad[base + c] = (step - (mass[i] if c == labels[i] else zero)) * scale_out

    return compiled(fastmath=False, error_model="numpy", nogil=True)(few_class_rows)
