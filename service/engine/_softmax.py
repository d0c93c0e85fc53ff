"""Numerically stable log-sum-exp, log-softmax and the softmax pieces the losses share.

The shift by the row maximum follows Blanchard, Higham & Higham, "Accurately computing the
log-sum-exp and softmax functions" (IMA J. Numer. Anal., 2021): exp never overflows, the largest
term is exactly 1 so the sum is >= 1 and its log is accurate. As in SciPy, a row whose maximum is
not finite (every logit -inf) is shifted by 0 instead, giving -inf rather than -inf - (-inf) = NaN.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType

from service.engine._namespace import Array, array_namespace, errstate


@dataclass(frozen=True)
class ShiftedExp:
    """Per row of x: `exp(x - shift)`, its sum, `log(sum)`, the shift and an optional dot product.

    `softmax = exp / sum` and `log_softmax = (x - shift) - log_sum`. The division is left to the
    caller: a loss gradient is `softmax * scale - target`, so folding 1/sum into `scale` touches the
    big buffer once. `exp` is a new buffer the caller owns and may overwrite.
    """

    exp: Array  # [M, C]
    sum: Array  # [M, 1], float64
    log_sum: Array  # [M], float64
    shift: Array  # [M]
    dot: Array | None  # [M]: sum_c v_c (x_c - shift), when `dot_with` was given

    @property
    def lse(self) -> Array:
        return self.shift + self.log_sum


def shifted_exp(x: Array, *, xp: ModuleType, dot_with: Array | None = None) -> ShiftedExp:
    """Rows of `x` ([M, C], C >= 1) -> ShiftedExp; `x` is not modified.

    `dot_with` ([C] or [M, C]) is dotted with the *shifted* logits: the same sum formed from `x`
    and the shift afterwards cancels catastrophically when the logits share a large offset. A
    zero weight on a -inf logit contributes 0, not 0 * inf = NaN. Inside `shared_softmax()`, the
    exponentials of an array already seen are reused (the caller gets its own copy).
    """
    shared = _SHARED.get()
    if shared is not None and shared.parts is not None and _identity(x) == shared.key:
        first = shared.parts
        with errstate(xp, over="ignore"):
            dot = None if dot_with is None else _dot_rows(x - first.shift[:, None], dot_with, xp=xp)
        return ShiftedExp(first.exp.copy(), first.sum, first.log_sum, first.shift, dot)
    shift = xp.max(x, axis=-1, keepdims=True)
    shift = xp.where(xp.isfinite(shift), shift, 0)  # all -inf row: exp stays 0, no inf - inf
    with errstate(xp, over="ignore"):  # |x| near the float max: x - shift = -inf, exp = 0
        e = x - shift
    dot = None if dot_with is None else _dot_rows(e, dot_with, xp=xp)
    xp.exp(e, out=e)
    # The row sum is accumulated in float64 and its log taken as log1p(total - 1) (the largest
    # term is exactly 1): in float32, 1 + 6e-6 keeps two digits of the small part, and the loss
    # of a confident row, log(1 + small), would be off by 1%.
    total = xp.sum(e, axis=-1, keepdims=True, dtype=xp.float64)
    with errstate(xp, divide="ignore"):  # total == 0 only for an all -inf row: log_sum = -inf
        log_sum = xp.log1p(total[:, 0] - 1)
    parts = ShiftedExp(exp=e, sum=total, log_sum=log_sum, shift=shift[:, 0], dot=dot)
    if shared is not None and shared.parts is None and _identity(x) == shared.key:
        shared.parts = ShiftedExp(e.copy(), total, log_sum, shift[:, 0], None)
    return parts


@dataclass
class _Shared:
    rows: Array  # the registered logits as [M, C] rows, kept alive so its address stays its own
    key: tuple[object, ...]
    parts: ShiftedExp | None = None  # pristine: every user gets a copy of `exp`


_SHARED: ContextVar[_Shared | None] = ContextVar("shared_softmax", default=None)


@contextlib.contextmanager
def shared_softmax(logits: Array) -> Iterator[None]:
    """Within the block, the softmax of `logits` is computed once for every loss on them.

    `/v1/evaluate` runs every requested loss on one upload: the max, exp and row sums, the bulk
    of a loss's cost, are then paid once. Each loss still gets its own copy of the exponentials,
    since it writes its gradient into them. Losses see `logits` through `logit_rows`, a view
    with the same memory, as long as `logits` is already in the compute dtype.
    """
    # No classes (shape [..., 0]) cannot be viewed as rows; the losses refuse such logits.
    rows = logits.reshape(-1, logits.shape[-1]) if logits.ndim and logits.shape[-1] else logits
    token = _SHARED.set(_Shared(rows=rows, key=_identity(rows)))
    try:
        yield
    finally:
        _SHARED.reset(token)


def _identity(x: Array) -> tuple[object, ...]:
    """The memory an array views: address, shape, strides and dtype."""
    interface = getattr(x, "__cuda_array_interface__", None) or x.__array_interface__
    return (interface["data"][0], x.shape, x.strides, x.dtype.str)


def _dot_rows(e: Array, v: Array, *, xp: ModuleType) -> Array:
    """sum_c v_c e_c per row, where v_c = 0 makes the term 0 even if e_c = -inf."""
    with errstate(xp, invalid="ignore"):
        dot = e @ v if v.ndim == 1 else xp.sum(v * e, axis=-1)
        bad = xp.isnan(dot)  # inputs hold no NaN, so NaN here is 0 * -inf from a masked class
        if bool(xp.any(bad)):
            # Only the bad rows are recomputed: the weights and their mask are those rows' too
            # (a per-row `v` masked whole no longer matched the rows it multiplied).
            weights = v if v.ndim == 1 else v[bad]
            terms = xp.where(weights != 0, weights * e[bad], 0)
            dot[bad] = xp.sum(terms, axis=-1)
    return dot


def logsumexp(x: Array, axis: int = -1) -> Array:
    """`log(sum(exp(x), axis))`, finite whenever one element is finite."""
    xp = array_namespace(x)
    _, parts = _rows_along(x, axis, xp=xp)
    lse = parts.lse.astype(x.dtype)
    return lse.reshape(xp.moveaxis(x, axis, -1).shape[:-1])


def log_softmax(x: Array, axis: int = -1) -> Array:
    """`(x - shift) - log_sum` along `axis`: log-probabilities without forming softmax first.

    `log(softmax(x))` would underflow to -inf for classes far below the maximum, and
    `x - logsumexp(x)` loses the digits of log p for the largest classes to cancellation.
    """
    xp = array_namespace(x)
    rows, parts = _rows_along(x, axis, xp=xp)
    out = (rows - parts.shift[:, None]) - parts.log_sum[:, None].astype(x.dtype)
    return xp.moveaxis(out.reshape(xp.moveaxis(x, axis, -1).shape), -1, axis)


def _rows_along(x: Array, axis: int, *, xp: ModuleType) -> tuple[Array, ShiftedExp]:
    moved = xp.moveaxis(x, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    return rows, shifted_exp(rows, xp=xp)
