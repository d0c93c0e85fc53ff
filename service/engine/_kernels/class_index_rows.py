"""The checks and sums around the few-class kernel for the most common cross-entropy: class-index
labels, without class weights, label smoothing or z-loss (and for focal without alpha and
poly-1, whose kernel calls take the same arguments).

On a small batch the kernel is the smaller part of a call: checking the labels, making the target
vectors, counting the valid rows and adding up the losses took a dozen NumPy calls around it,
each of which costs microseconds on an array of 32 (and several times that once a served request
found the processor's caches cold). `cpu.class_index_rows` makes them compiled calls, before
the kernel (`count_class_indices`, and `mask_ignored` where some label is `ignore_index`) and
after it (`class_index_total`), with the same numbers but for the order of the float64 sum of
the losses.

They only take the regular case, every label a class or `ignore_index`, and finite losses; for
anything else the caller takes the general path, whose checks name the problem. Cross-entropy
over two classes goes from `count_and_narrow_class_indices` (its labels as int32, ignored ones
-1) to `two_classes.two_class_rows`, which zeroes the ignored rows and sums the losses itself.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from service.engine._kernels.numerics import compiled, convert


@numba.njit(inline="always")
def _label_counts(label: Any, ignore_index: int, n_classes: int) -> tuple[bool, bool]:
    """(whether `label` counts, whether it counts but is not a class)."""
    counted = label != ignore_index
    return counted, counted & ((label < 0) | (label >= n_classes))


@compiled(error_model="numpy")
def count_class_indices(labels: Any, ignore_index: int, n_classes: int) -> tuple[int, int]:
    """Of class indices `labels` [M] (int64): (how many are neither a class nor `ignore_index`,
    how many are not `ignore_index`). Reductions only: LLVM vectorises the loop."""
    outside = 0
    ignored = 0
    for r in range(labels.shape[0]):
        counted, not_a_class = _label_counts(labels[r], ignore_index, n_classes)
        outside += not_a_class
        ignored += not counted
    return outside, labels.shape[0] - ignored


@compiled(error_model="numpy")
def count_and_narrow_class_indices(
    labels: Any, ignore_index: int, n_classes: int, narrowed: Any
) -> tuple[int, int]:
    """`count_class_indices`, writing each label into int32 `narrowed` [M] on the way, -1 where
    it is `ignore_index` (a label that is not a class: whatever its low 32 bits say). The
    two-class kernel's loop, which mixes labels with float32 rows, vectorises twice as well over
    int32 labels as over int64 ones (wider lanes halve its vectors)."""
    outside = 0
    ignored = 0
    for r in range(labels.shape[0]):
        label = labels[r]
        counted, not_a_class = _label_counts(label, ignore_index, n_classes)
        outside += not_a_class
        ignored += not counted
        narrowed[r] = np.int32(label) if counted else np.int32(-1)
    return outside, labels.shape[0] - ignored


@compiled(error_model="numpy")
def mask_ignored(labels: Any, ignore_index: int, valid: Any, y: Any, mass: Any) -> None:
    """Where a label is `ignore_index`: `valid` False, class (`y`) and target mass 0; elsewhere
    True, the label and 1."""
    one, zero = convert(1.0, mass[0]), convert(0.0, mass[0])
    for r in range(labels.shape[0]):
        counted = labels[r] != ignore_index
        valid[r] = counted
        y[r] = labels[r] if counted else 0
        mass[r] = one if counted else zero


@compiled(error_model="numpy")
def class_index_total(per_sample: Any, grad: Any, valid: Any, like: Any) -> float:
    """Zero the gradient rows [M, C] that do not count (the kernel leaves them unspecified) and
    return the float64 sum of `per_sample` (0 where a row does not count) rounded to the type of
    `like`, as the response carries them: in four running sums, as one would wait on each
    addition before the next."""
    zero = convert(0.0, like)
    for r in range(valid.shape[0]):
        if not valid[r]:
            grad[r, :] = zero
    a = b = c = d = 0.0
    whole = per_sample.shape[0] // 4 * 4
    for r in range(0, whole, 4):
        a += np.float64(convert(per_sample[r], like))
        b += np.float64(convert(per_sample[r + 1], like))
        c += np.float64(convert(per_sample[r + 2], like))
        d += np.float64(convert(per_sample[r + 3], like))
    for r in range(whole, per_sample.shape[0]):
        a += np.float64(convert(per_sample[r], like))
    return (a + b) + (c + d)
