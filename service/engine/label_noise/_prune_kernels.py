"""The pruning filters' selections, compiled with numba: cleanlab's `_prune_by_count` and
`_prune_by_class` for every class at once.

Both keep the m largest values of a set (margins `p_j - p_k` of the rows labelled k, or their
negated self-confidence) where cleanlab sorts the whole set (`np.argsort(...)[:m]`). Here one pass
over the values keeps the m + 1 largest in a min-heap: a value enters only when it beats the
heap's root, which after the first few rows almost none does, so the pass costs about one
comparison per value, and for the margins of a whole row at once, a vectorised one. At the end
the heap holds the m-th largest value and the (m + 1)-th (its root); a second pass flags the
values at or above the m-th.

Where the m-th and (m + 1)-th values are equal, which m of the tied values cleanlab keeps depends
on how NumPy's unstable sort orders equal values: those cells (or classes) flag nothing here and
are returned to the caller, which runs cleanlab's own `np.argsort` on them (`_filters`).

The margins are float32 differences for float32 rows, as NumPy's `pred_probs[:, j] -
pred_probs[:, k]`. Classes with at most one row are skipped (`min_examples_per_class=1`).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from service.engine._kernels.numerics import compiled


@numba.njit(inline="always")
def _offer(heap: Any, lo: int, filled: int, capacity: int, v: Any) -> int:
    """Put `v` into the min-heap `heap[lo:lo + capacity]` holding `filled` values: appended while
    there is room, else in place of the root (the caller checked that `v` beats it). Returns
    the new count."""
    if filled < capacity:
        at = filled
        while at > 0 and heap[lo + (at - 1) // 2] > v:  # sift up
            heap[lo + at] = heap[lo + (at - 1) // 2]
            at = (at - 1) // 2
        heap[lo + at] = v
        return filled + 1
    at = 0
    while True:  # sift down from the root
        child = 2 * at + 1
        if child >= capacity:
            break
        if child + 1 < capacity and heap[lo + child + 1] < heap[lo + child]:
            child += 1
        if heap[lo + child] >= v:
            break
        heap[lo + at] = heap[lo + child]
        at = child
    heap[lo + at] = v
    return filled


@numba.njit(inline="always")
def _cut(heap: Any, lo: int, m: int) -> Any:
    """The flagging threshold of a full heap of the m + 1 largest values: the m-th largest, or
    +inf when it equals the (m + 1)-th (a tie at the cut: the caller decides)."""
    mth = heap[lo + 1] if m == 1 else min(heap[lo + 1], heap[lo + 2])
    return mth if mth > heap[lo] else np.inf


@compiled(nogil=True)
def prune_by_noise_rate(probs: Any, labels: Any, prune_counts: Any, kept: Any) -> tuple[Any, Any]:
    """Of the rows labelled k, flag the `prune_counts[j, k]` with the largest margin `p_j - p_k`,
    for each j != k. Returns the mask and the (k, j) cells tied at the cut, as `[n, 2]`. Rows
    `kept` (never issues) still take their place among the margins, but are never flagged.

    Both passes read the rows in memory order, every class's heaps open at once: the rows of one
    class are scattered, and read class by class they would wait on memory.
    """
    n, c = probs.shape
    sizes = np.bincount(labels, minlength=c)
    # The open cells (k, j): those of class k are cells[first[k]:first[k + 1]], their heaps
    # (room for m + 1 margins) heap[offset[a]:offset[a] + m + 1].
    first = np.zeros(c + 1, dtype=np.int64)
    every_row = np.zeros(c, dtype=np.bool_)  # a cell of the class takes all its rows
    for k in range(c):
        first[k + 1] = first[k]
        for j in range(c):
            m = prune_counts[j, k]
            if j != k and m > 0 and sizes[k] > 1:
                every_row[k] |= m >= sizes[k]
                first[k + 1] += 1
    cells = np.empty(first[c], dtype=np.int64)  # the column j of each open cell
    offset = np.empty(first[c] + 1, dtype=np.int64)
    offset[0] = 0
    enter = np.full((c, c), np.inf, dtype=probs.dtype)  # a margin above this enters the heap
    a = 0
    for k in range(c):
        for j in range(c):
            m = prune_counts[j, k]
            if j != k and m > 0 and sizes[k] > 1:
                cells[a] = j
                offset[a + 1] = offset[a] + (0 if every_row[k] else m + 1)
                enter[k, j] = np.inf if every_row[k] else -np.inf  # -inf: not full yet
                a += 1
    heap = np.empty(offset[-1], dtype=probs.dtype)
    filled = np.zeros(first[c], dtype=np.int64)
    dense = 4 * (first[1:] - first[:-1]) >= c  # test all margins of a row, vectorised
    entering = np.empty(c, dtype=np.int64)  # the open cells a row enters

    for i in range(n):
        k = labels[i]
        if every_row[k] or first[k] == first[k + 1]:
            continue
        row = probs[i]
        p_k = row[k]
        if dense[k]:  # most rows enter no heap: one vectorised test says so
            hit = False
            for j in range(c):
                hit |= row[j] - p_k > enter[k, j]
            if not hit:
                continue
        hits = 0
        for a in range(first[k], first[k + 1]):  # without a branch per cell
            entering[hits] = a
            hits += row[cells[a]] - p_k > enter[k, cells[a]]
        for h in range(hits):
            a = entering[h]
            j = cells[a]
            capacity = prune_counts[j, k] + 1
            filled[a] = _offer(heap, offset[a], filled[a], capacity, row[j] - p_k)
            if filled[a] == capacity:
                enter[k, j] = heap[offset[a]]

    cut = enter  # now: a margin at or above this is flagged
    ambiguous = []
    for k in range(c):
        for a in range(first[k], first[k + 1]):
            j = cells[a]
            cut[k, j] = -np.inf if every_row[k] else _cut(heap, offset[a], prune_counts[j, k])
            if cut[k, j] == np.inf:
                ambiguous.append((k, j))
    mask = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        k = labels[i]
        if kept[i] or first[k] == first[k + 1]:  # the caller unflags kept rows anyway
            continue
        row = probs[i]
        p_k = row[k]
        flagged = False
        if dense[k]:
            for j in range(c):
                flagged |= row[j] - p_k >= cut[k, j]
        else:
            for a in range(first[k], first[k + 1]):
                flagged |= row[cells[a]] - p_k >= cut[k, cells[a]]
        mask[i] = flagged
    tied = np.empty((len(ambiguous), 2), dtype=np.int64)
    for a in range(len(ambiguous)):
        tied[a, 0], tied[a, 1] = ambiguous[a]
    return mask, tied


@compiled(nogil=True)
def prune_by_class(values: Any, order: Any, starts: Any, counts: Any) -> tuple[Any, Any]:
    """Of the rows labelled k, flag the `counts[k]` with the smallest `values` (self-confidence,
    grouped by class as `order`). Returns the mask and the classes tied at the cut."""
    mask = np.zeros(order.size, dtype=np.bool_)
    ambiguous = []
    heap = np.empty(order.size + 1, dtype=values.dtype)
    for k in range(starts.size - 1):
        lo, hi = starts[k], starts[k + 1]
        m = counts[k]
        if hi - lo <= 1 or m < 1:
            continue
        cut = -np.inf
        if m < hi - lo:
            enter, filled = -np.inf, 0
            for i in range(lo, hi):  # the m + 1 smallest values are the largest negated ones
                v = -values[i]
                if v > enter:
                    filled = _offer(heap, 0, filled, m + 1, v)
                    if filled == m + 1:
                        enter = heap[0]
            cut = _cut(heap, 0, m)
            if cut == np.inf:
                ambiguous.append(k)
                continue
        for i in range(lo, hi):
            mask[order[i]] = -values[i] >= cut
    return mask, np.array(ambiguous, dtype=np.int64)
