"""The passes of confident learning over `[N, C]` probabilities, compiled with numba.

Each kernel replaces a NumPy expression of cleanlab (named in its docstring) and returns the same
bits, not just the same values to a tolerance, because what follows compares and sorts them:

- sums are NumPy's pairwise summation (`_pairwise_sum`, numpy/_core/src/umath/loops_utils.h.src),
  in the dtype NumPy accumulates in, over the elements NumPy would visit in the same order;
- `xlogy(p, p)` is `p * log(p)` in the dtype of `p` with the C library's `log` (`logf` for
  float32), as SciPy's `xlogy` loops compute it;
- differences of float32 probabilities are float32 differences, as NumPy forms them.

Selecting the `m` largest margins (or smallest probabilities) is the one place where the order of
ties matters: cleanlab keeps `np.argsort(...)[:m]`, and which of several equal values NumPy's
unstable sort puts first is its own affair. The selection kernels therefore decide only the
cells where the m-th and (m + 1)-th values differ; they return the others as `ambiguous`, and the
caller settles those with the very `np.argsort` call cleanlab makes (`_filters`).

This module imports numba: reach it only through `label_noise._compiled_kernels`, so that
`import service.engine` stays free of it.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from service.engine._fused import _compiled
from service.engine.label_noise._inputs import OUTSIDE_UNIT_INTERVAL, SUM_OFF

# Rows of class k are gathered into a [columns, rows] buffer of margins at most this many
# elements large (64 MB of float64); a class with more rows than this takes one column at a time.
MARGIN_BUFFER_ELEMENTS = 1 << 23

# Up to this many margins to keep, a sorted buffer finds the m-th largest in one pass (nearly every
# element fails the first comparison); above it, quickselect over a copy.
INSERTION_LIMIT = 64


@numba.njit
def _pairwise_sum(a: Any, lo: int, n: int) -> Any:
    """`np.add.reduce(a[lo:lo + n])`: NumPy's pairwise summation, blocks of 128 with 8 partial
    sums, accumulated in the dtype of `a`."""
    if n < 8:
        total = a[lo] - a[lo]  # a zero of a's dtype (numba would widen `0` to float64)
        for i in range(n):
            total += a[lo + i]
        return total
    if n <= 128:
        r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
        r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
        i = 8
        while i < n - n % 8:
            r0 += a[lo + i]
            r1 += a[lo + i + 1]
            r2 += a[lo + i + 2]
            r3 += a[lo + i + 3]
            r4 += a[lo + i + 4]
            r5 += a[lo + i + 5]
            r6 += a[lo + i + 6]
            r7 += a[lo + i + 7]
            i += 8
        total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            total += a[lo + i]
            i += 1
        return total
    half = n // 2
    half -= half % 8
    return _pairwise_sum(a, lo, half) + _pairwise_sum(a, lo + half, n - half)


@_compiled(nogil=True)
def group_by_class(labels: Any, n_classes: int) -> tuple[Any, Any]:
    """Row indices ordered by label, ascending within a class (a counting sort), and the start
    of each class in that order (`starts[k]:starts[k + 1]`)."""
    starts = np.zeros(n_classes + 1, dtype=np.int64)
    for label in labels:
        starts[label + 1] += 1
    for k in range(n_classes):
        starts[k + 1] += starts[k]
    order = np.empty(labels.size, dtype=np.int64)
    fill = starts[:-1].copy()
    for i in range(labels.size):
        order[fill[labels[i]]] = i
        fill[labels[i]] += 1
    return order, starts


@_compiled(nogil=True)
def class_sums(values: Any, starts: Any) -> Any:
    """Per class, `values[starts[k]:starts[k + 1]].sum()` as NumPy forms it (0 when empty)."""
    n_classes = starts.size - 1
    out = np.zeros(n_classes, dtype=values.dtype)
    for k in range(n_classes):
        if starts[k + 1] > starts[k]:
            out[k] = _pairwise_sum(values, starts[k], starts[k + 1] - starts[k])
    return out


@_compiled(nogil=True)
def scan_rows(
    probs: Any, labels: Any, cut: Any, nudged: Any, sum_tolerance: float
) -> tuple[Any, Any, Any, Any, Any]:
    """One pass over the rows: the checks and every per-row quantity of cleanlab's filters.

    Per row i with label k, `status` (0 when fine, `OUTSIDE_UNIT_INTERVAL` for a value outside [0, 1]
    or NaN, `SUM_OFF` for a row sum, in float64, off 1 by more than `sum_tolerance`) and:

    - `guess`: the class `compute_confident_joint` counts the row in, -1 for none: the only class
      with `p >= cut`, or the argmax where several are (`cut = thresholds - 1e-6`);
    - `argmax`: the first largest probability (`np.argmax`);
    - `other`: the largest probability of another class (normalized margin);
    - `kept`: `_reduce_issues`, the row's label is the first argmax once `nudged[i] = p[i, k] +
      1e-6` replaces `p[i, k]`: a filter never flags such a row.
    """
    n, c = probs.shape
    status = np.zeros(n, dtype=np.uint8)
    guess = np.empty(n, dtype=np.int32)
    argmax = np.empty(n, dtype=np.int32)
    other = np.empty(n, dtype=probs.dtype)
    kept = np.empty(n, dtype=np.bool_)
    for i in range(n):
        row = probs[i]
        k = labels[i]
        total = 0.0
        inside = True
        for j in range(c):
            v = row[j]
            inside &= (v >= 0) & (v <= 1)  # False for NaN
            total += v
        if not inside:
            status[i] = OUTSIDE_UNIT_INTERVAL
            continue
        if abs(total - 1.0) > sum_tolerance:
            status[i] = SUM_OFF
            continue
        best, best_at = row[0], 0
        confident, first_confident = 0, -1
        for j in range(c):
            v = row[j]
            if v > best:
                best, best_at = v, j
            if v >= cut[j]:
                confident += 1
                if first_confident < 0:
                    first_confident = j
        below = row[0] - row[0] - 1  # -1: every probability is larger
        for j in range(k):
            below = max(below, row[j])
        above = row[0] - row[0] - 1
        for j in range(k + 1, c):
            above = max(above, row[j])
        argmax[i] = best_at
        guess[i] = best_at if confident > 1 else first_confident
        other[i] = max(below, above)
        kept[i] = (below < nudged[i]) & (above <= nudged[i])
    return status, guess, argmax, other, kept


@numba.njit
def _xlogy_sum(row: Any, lo: int, n: int) -> Any:
    """`_pairwise_sum` of `xlogy(row, row)` over `row[lo:lo + n]`, the terms formed on the fly."""
    if n < 8:
        total = row[lo] - row[lo]
        for i in range(n):
            total += _xlogx(row[lo + i])
        return total
    if n <= 128:
        r0, r1 = _xlogx(row[lo]), _xlogx(row[lo + 1])
        r2, r3 = _xlogx(row[lo + 2]), _xlogx(row[lo + 3])
        r4, r5 = _xlogx(row[lo + 4]), _xlogx(row[lo + 5])
        r6, r7 = _xlogx(row[lo + 6]), _xlogx(row[lo + 7])
        i = 8
        while i < n - n % 8:
            r0 += _xlogx(row[lo + i])
            r1 += _xlogx(row[lo + i + 1])
            r2 += _xlogx(row[lo + i + 2])
            r3 += _xlogx(row[lo + i + 3])
            r4 += _xlogx(row[lo + i + 4])
            r5 += _xlogx(row[lo + i + 5])
            r6 += _xlogx(row[lo + i + 6])
            r7 += _xlogx(row[lo + i + 7])
            i += 8
        total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            total += _xlogx(row[lo + i])
            i += 1
        return total
    half = n // 2
    half -= half % 8
    return _xlogy_sum(row, lo, half) + _xlogy_sum(row, lo + half, n - half)


@numba.njit(inline="always")
def _xlogx(x: Any) -> Any:
    """`scipy.special.xlogy(x, x)` for x >= 0: 0 at 0, else `x * log(x)` in x's dtype."""
    return x - x if x == 0 else x * math.log(x)


@_compiled(nogil=True)
def entropy_sums(probs: Any) -> Any:
    """`np.sum(xlogy(probs, probs), axis=1)` (`get_normalized_entropy`), bit for bit."""
    n, c = probs.shape
    out = np.empty(n, dtype=probs.dtype)
    for i in range(n):
        out[i] = _xlogy_sum(probs[i], 0, c)
    return out


@numba.njit(inline="always")
def _kth_smallest(a: Any, k: int) -> Any:
    """The k-th smallest (0-based) value of `a`, which is reordered: Hoare's quickselect with a
    median-of-three pivot, and a sort of what is left after 2 log2(n) + 8 rounds (introselect's
    guard against quadratic inputs)."""
    lo, hi = 0, a.size - 1
    rounds = 2 * int(math.log2(a.size + 1)) + 8
    while hi > lo:
        rounds -= 1
        if rounds < 0:
            a[lo : hi + 1] = np.sort(a[lo : hi + 1])
            break
        mid = (lo + hi) // 2
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:  # j < k < i: a[k] equals the pivot
            break
    return a[k]


@numba.njit(inline="always")
def _mth_largest(values: Any, m: int, scratch: Any) -> Any:
    """The m-th largest of `values` (1 <= m < values.size); `values` is left as it is."""
    n = values.size
    if m > INSERTION_LIMIT:
        copy = scratch[:n]
        copy[:] = values
        return _kth_smallest(copy, n - m)
    top = scratch[:m]  # the m largest so far, descending
    top[:] = values[:m]
    top[:] = -np.sort(-top)
    for r in range(m, n):
        v = values[r]
        if v > top[m - 1]:
            at = m - 1
            while at > 0 and top[at - 1] < v:
                top[at] = top[at - 1]
                at -= 1
            top[at] = v
    return top[m - 1]


@numba.njit(inline="always")
def _take_largest(values: Any, m: int, rows: Any, mask: Any, scratch: Any) -> bool:
    """Flag in `mask` the rows (`rows[r]`) of the m largest `values`; False, flagging nothing,
    when the m-th largest value is tied with one left out (the caller then decides)."""
    n = values.size
    if m >= n:
        for r in range(n):
            mask[rows[r]] = True
        return True
    v = _mth_largest(values, m, scratch)
    above = 0
    at = 0
    for r in range(n):
        above += values[r] > v
        at += values[r] == v
    if above + at != m:
        return False
    for r in range(n):
        if values[r] >= v:
            mask[rows[r]] = True
    return True


@_compiled(nogil=True)
def prune_by_noise_rate(probs: Any, order: Any, starts: Any, prune_counts: Any) -> tuple[Any, Any]:
    """cleanlab's `_prune_by_count` for every class: of the rows labelled k, flag the
    `prune_counts[j, k]` with the largest margin `p_j - p_k`, for each j != k.

    Classes with at most one row are skipped (`min_examples_per_class=1`). Returns the mask and
    the `[n, 2]` (k, j) cells left to the caller (see `_take_largest`).
    """
    n, c = probs.shape
    mask = np.zeros(n, dtype=np.bool_)
    ambiguous = []
    largest = int(np.max(starts[1:] - starts[:-1]))
    scratch = np.empty(largest, dtype=probs.dtype)
    margins = np.empty(
        max(min(c * largest, MARGIN_BUFFER_ELEMENTS), largest), dtype=probs.dtype
    )
    columns = np.empty(c, dtype=np.int64)
    for k in range(c):
        size = starts[k + 1] - starts[k]
        if size <= 1:
            continue
        rows = order[starts[k] : starts[k + 1]]
        active = 0
        for j in range(c):
            if j != k and prune_counts[j, k] > 0:
                columns[active] = j
                active += 1
        width = max(1, margins.size // size)  # columns of margins per gather of the rows
        for first in range(0, active, width):
            last = min(first + width, active)
            block = margins[: (last - first) * size].reshape((last - first, size))
            for r in range(size):
                row = probs[rows[r]]
                for col in range(first, last):
                    block[col - first, r] = row[columns[col]] - row[k]
            for col in range(first, last):
                j = columns[col]
                if not _take_largest(block[col - first], prune_counts[j, k], rows, mask, scratch):
                    ambiguous.append((k, j))
    cells = np.empty((len(ambiguous), 2), dtype=np.int64)
    for a in range(len(ambiguous)):
        cells[a, 0], cells[a, 1] = ambiguous[a]
    return mask, cells


@_compiled(nogil=True)
def prune_by_class(values: Any, order: Any, starts: Any, counts: Any) -> tuple[Any, Any]:
    """cleanlab's `_prune_by_class`: of the rows labelled k (more than one), flag the `counts[k]`
    with the smallest `values` (their self-confidence, grouped by class as `order`). Returns the
    mask and the classes left to the caller (see `_take_largest`)."""
    mask = np.zeros(order.size, dtype=np.bool_)
    ambiguous = []
    largest = int(np.max(starts[1:] - starts[:-1]))
    scratch = np.empty(largest, dtype=values.dtype)
    for k in range(starts.size - 1):
        size = starts[k + 1] - starts[k]
        if size <= 1 or counts[k] < 1:
            continue
        negated = -values[starts[k] : starts[k + 1]]  # the smallest values are the largest here
        if not _take_largest(negated, counts[k], order[starts[k] : starts[k + 1]], mask, scratch):
            ambiguous.append(k)
    return mask, np.array(ambiguous, dtype=np.int64)
