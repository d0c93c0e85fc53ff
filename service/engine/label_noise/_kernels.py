"""The passes of confident learning over `[N, C]` probabilities, compiled with numba.

Each kernel replaces NumPy expressions of cleanlab (named in its docstring) and returns the same
bits, not just the same values to a tolerance, because what follows compares and sorts them:

- sums are NumPy's pairwise summation (`_pairwise_sum`, numpy/_core/src/umath/loops_utils.h.src),
  in the dtype NumPy accumulates in, over the elements NumPy would visit, in the same order;
- `xlogy(p, p)` is `p * log(p)` in the dtype of `p` with the C library's `log` (`logf` for
  float32), as SciPy's `xlogy` loops compute it;
- comparisons run in the probabilities' own dtype, against cuts rounded so that they decide as
  cleanlab's comparisons do (`_joint.confidence_cut`).

The pruning filters' selections are in `_prune_kernels`. This module and that one import numba:
reach them only through `_report.compiled_kernels`, so that `import service.engine` does not.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from service.engine._kernels.numerics import compiled
from service.engine.label_noise._inputs import OUTSIDE_UNIT_INTERVAL, SUM_OFF
from service.engine.label_noise._prune_kernels import prune_by_class, prune_by_noise_rate

__all__ = [
    "class_sums",
    "entropy_sums",
    "group_by_class",
    "prune_by_class",
    "prune_by_noise_rate",
    "scan_rows",
]


@numba.njit(inline="always")
def _block_sum(a: Any, lo: int, n: int) -> Any:
    """NumPy's pairwise summation of `a[lo:lo + n]` for n <= 128: 8 partial sums (sequential
    below 8 elements), accumulated in the dtype of `a`."""
    if n < 8:
        total = a[lo] - a[lo]  # a zero of a's dtype (numba would widen `0` to float64)
        for i in range(n):
            total += a[lo + i]
        return total
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


@numba.njit
def _pairwise_sum(a: Any, lo: int, n: int) -> Any:
    """`np.add.reduce(a[lo:lo + n])` (numpy/_core/src/umath/loops_utils.h.src): above 128
    elements, the sum of the two halves, the first half a multiple of 8 long, recursively.

    The recursion runs on an explicit stack: numba's disk cache crashes on recursive functions.
    """
    if n <= 128:
        return _block_sum(a, lo, n)
    depth = 2 * 64  # two entries per level, a level halves n: enough for any array
    starts = np.empty(depth, dtype=np.int64)
    sizes = np.empty(depth, dtype=np.int64)
    split = np.zeros(depth, dtype=np.bool_)  # the node's halves are summed, add them up
    partial = np.empty(depth, dtype=a.dtype)
    nodes, done = 1, 0
    starts[0], sizes[0] = lo, n
    while nodes > 0:
        nodes -= 1
        start, size = starts[nodes], sizes[nodes]
        if size <= 128:
            partial[done] = _block_sum(a, start, size)
            done += 1
        elif split[nodes]:
            done -= 1
            partial[done - 1] += partial[done]  # first half + second half
        else:
            half = size // 2
            half -= half % 8
            split[nodes] = True
            starts[nodes + 1], sizes[nodes + 1], split[nodes + 1] = start + half, size - half, False
            starts[nodes + 2], sizes[nodes + 2], split[nodes + 2] = start, half, False
            nodes += 3
    return partial[0]


@compiled(nogil=True)
def group_by_class(probs: Any, labels: Any) -> tuple[Any, Any, Any, Any]:
    """Row indices ordered by label, ascending within a class (a counting sort), the start of
    each class in that order (`starts[k]:starts[k + 1]`), and the self-confidence `p[i, y_i]`
    by row and in that order."""
    n, c = probs.shape
    starts = np.zeros(c + 1, dtype=np.int64)
    for label in labels:
        starts[label + 1] += 1
    for k in range(c):
        starts[k + 1] += starts[k]
    order = np.empty(n, dtype=np.int64)
    by_row = np.empty(n, dtype=probs.dtype)
    by_class = np.empty(n, dtype=probs.dtype)
    fill = starts[:-1].copy()
    for i in range(n):
        k = labels[i]
        by_row[i] = probs[i, k]
        order[fill[k]] = i
        by_class[fill[k]] = by_row[i]
        fill[k] += 1
    return order, starts, by_row, by_class


@compiled(nogil=True)
def class_sums(values: Any, starts: Any) -> Any:
    """Per class, `values[starts[k]:starts[k + 1]].sum()` as NumPy forms it (0 when empty)."""
    n_classes = starts.size - 1
    out = np.zeros(n_classes, dtype=values.dtype)
    for k in range(n_classes):
        if starts[k + 1] > starts[k]:
            out[k] = _pairwise_sum(values, starts[k], starts[k + 1] - starts[k])
    return out


@numba.njit(inline="always")
def _span(row: Any, key: Any, cut: Any) -> tuple[Any, ...]:
    """Over `row`: all values in [0, 1] (False for NaN), their float64 sum, how many reach their
    class's `cut` and the first that does (`row.size` for none), the largest key (-1 for none).
    One loop that LLVM vectorises (from index 0: from a variable start it gathers)."""
    inside, total, confident, first, top = True, 0.0, 0, row.size, np.int64(-1)
    for j in range(row.size):
        v = row[j]
        inside &= (v >= 0) & (v <= 1)
        total += v
        confident += v >= cut[j]
        first = min(first, j if v >= cut[j] else row.size)
        top = max(top, np.int64(key[j]))
    return inside, total, confident, first, top


@numba.njit(inline="always")
def _first_equal(values: Any, target: Any) -> Any:
    """The first index of `target` in `values` (`values.size` for none), vectorised."""
    first = values.size
    for j in range(values.size):
        first = min(first, j if values[j] == target else values.size)
    return first


# `reassoc` lets LLVM add the float64 row sums in vector lanes: they are only compared with a
# tolerance. Nothing else in the kernel is floating-point arithmetic.
@compiled(nogil=True, fastmath={"reassoc"})
def scan_rows(
    probs: Any, keys: Any, labels: Any, cut: Any, nudged: Any, sum_tolerance: float
) -> tuple[Any, Any, Any, Any, Any]:
    """One pass over the rows: the checks and every per-row quantity of cleanlab's filters.

    `keys` are the probabilities' bits as integers (`probs.view(int32)` for float32): for
    non-negative floats they order as the floats do, and integer maxima vectorise where float
    ones do not. `nudged` holds the keys of `p[i, y_i] + 1e-6`, `cut` the per-class confidence
    cut in the probabilities' dtype (`p >= cut[j]` exactly as `p >= thresholds[j] - 1e-6`).

    Per row i with label k, `status` (0 when fine, `OUTSIDE_UNIT_INTERVAL` for a value outside
    [0, 1] or NaN, `SUM_OFF` for a row sum, in float64, off 1 by more than `sum_tolerance`) and:

    - `guess`: the class `compute_confident_joint` counts the row in, -1 for none: the only class
      with `p >= cut`, or the argmax where several are;
    - `argmax`: the first largest probability (`np.argmax`);
    - `other`: the key of the largest probability of another class (normalized margin);
    - `kept`: `_reduce_issues`: the label is the first argmax once `p[i, k]` gains 1e-6, so no
      filter flags the row.
    """
    n = probs.shape[0]
    status = np.zeros(n, dtype=np.uint8)
    guess = np.empty(n, dtype=np.int32)
    argmax = np.empty(n, dtype=np.int32)
    other = np.empty(n, dtype=keys.dtype)
    kept = np.empty(n, dtype=np.bool_)
    for i in range(n):
        row, key, k = probs[i], keys[i], labels[i]
        inside_low, total_low, confident_low, first_low, low = _span(row[:k], key[:k], cut[:k])
        inside_high, total_high, confident_high, first_high, high = _span(
            row[k + 1 :], key[k + 1 :], cut[k + 1 :]
        )
        v = row[k]
        if not (inside_low & inside_high & (v >= 0) & (v <= 1)):
            status[i] = OUTSIDE_UNIT_INTERVAL
            continue
        if abs(total_low + total_high + v - 1.0) > sum_tolerance:
            status[i] = SUM_OFF
            continue
        top = max(low, key[k], high)
        if low == top:
            argmax[i] = _first_equal(key[:k], top)
        else:
            argmax[i] = k if key[k] == top else k + 1 + _first_equal(key[k + 1 :], top)
        confident = confident_low + confident_high + (v >= cut[k])
        if confident == 1:
            guess[i] = first_low if first_low < k else (k if v >= cut[k] else k + 1 + first_high)
        else:
            guess[i] = argmax[i] if confident > 1 else -1
        other[i] = max(low, high)
        kept[i] = (low < nudged[i]) & (high <= nudged[i])
    return status, guess, argmax, other, kept


@numba.njit(inline="always")
def _xlogx(x: Any) -> Any:
    """`scipy.special.xlogy(x, x)` for x >= 0: 0 at 0, else `x * log(x)` in x's dtype."""
    return x - x if x == 0 else x * math.log(x)


@compiled(nogil=True)
def entropy_sums(probs: Any) -> Any:
    """`np.sum(xlogy(probs, probs), axis=1)` (`get_normalized_entropy`), bit for bit."""
    n, c = probs.shape
    out = np.empty(n, dtype=probs.dtype)
    terms = np.empty(c, dtype=probs.dtype)
    for i in range(n):
        for j in range(c):
            terms[j] = _xlogx(probs[i, j])
        out[i] = _pairwise_sum(terms, 0, c)
    return out
