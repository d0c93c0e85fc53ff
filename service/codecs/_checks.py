"""The checks every tensor field ends in, whatever its form, and the words of their errors.

`check_elements` holds a shape to the element limit of one tensor (`TensorLimits`) and, within
`request_elements(limit)`, to one budget for all the tensors of a request; `count_output` holds an
answer's output tensors to theirs (`output_elements`). `check_finite` refuses NaN and infinities.
Every error is an `InvalidInput` (422) or a `LimitExceeded` (413) whose message starts with the
dotted field path and whose `field` is that path as a tuple.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.codecs._dtypes import is_floating
from service.errors import FieldPath, InvalidInput, LimitExceeded


@dataclass(frozen=True)
class TensorLimits:
    """Size limits that apply to every tensor field."""

    max_elements: int

    def __post_init__(self) -> None:
        if self.max_elements < 0:
            raise ValueError(f"max_elements must be >= 0, got {self.max_elements}")


@dataclass
class _ElementBudget:
    limit: int
    used: int = 0


_REQUEST_BUDGET: ContextVar[_ElementBudget | None] = ContextVar("request_elements", default=None)
_OUTPUT_BUDGET: ContextVar[_ElementBudget | None] = ContextVar("output_elements", default=None)


@contextlib.contextmanager
def request_elements(limit: int) -> Iterator[None]:
    """Within the block, the tensors decoded hold at most `limit` elements together.

    Each tensor is counted as its shape is checked (`check_elements`): an encoded tensor before
    its base64 is decoded. The budget follows the context, into `anyio.to_thread` workers too.
    """
    token = _REQUEST_BUDGET.set(_ElementBudget(limit))
    try:
        yield
    finally:
        _REQUEST_BUDGET.reset(token)


@contextlib.contextmanager
def output_elements(limit: int) -> Iterator[None]:
    """Within the block, the output tensors of the answer hold at most `limit` elements together
    (`count_output`): a small request can ask for large answers (the gradient of every loss of
    `/v1/evaluate`, an OIP output asked for many times)."""
    token = _OUTPUT_BUDGET.set(_ElementBudget(limit))
    try:
        yield
    finally:
        _OUTPUT_BUDGET.reset(token)


def count_output(count: int, path: FieldPath) -> None:
    """Count an output tensor of `count` elements against the answer's budget
    (`output_elements`); LimitExceeded naming `path`, the request field that asked for it."""
    budget = _OUTPUT_BUDGET.get()
    if budget is None:
        return
    budget.used += count
    if budget.used > budget.limit:
        raise LimitExceeded(
            f"{dotted(path)}: with this output the answer holds {budget.used} elements, over "
            f"the limit of {budget.limit} output elements per request (max_output_elements)",
            field=path,
        )


@contextlib.contextmanager
def counted_already() -> Iterator[None]:
    """Tensors decoded within the block are not counted again (their shape was)."""
    token = _REQUEST_BUDGET.set(None)
    try:
        yield
    finally:
        _REQUEST_BUDGET.reset(token)


def check_elements(shape: tuple[int, ...], path: FieldPath, limits: TensorLimits) -> None:
    """LimitExceeded when `shape` has more elements than `limits` allow, or than are left to
    the request (`request_elements`), which the tensor's elements are then counted against.

    A single dimension over the limit is refused even when another one is 0: such a shape
    holds nothing useful, and NumPy cannot build dimensions past its index range.
    """
    for axis, size in enumerate(shape):
        if size > limits.max_elements:
            raise LimitExceeded(
                f"{dotted(path)}: dimension {axis} is over the limit of "
                f"{limits.max_elements} elements per tensor",
                field=path,
            )
    count = math.prod(shape)
    if count > limits.max_elements:
        raise LimitExceeded(
            f"{dotted(path)}: shape {list(shape)} has {count} elements, over the limit of "
            f"{limits.max_elements} elements per tensor",
            field=path,
        )
    budget = _REQUEST_BUDGET.get()
    if budget is not None:
        budget.used += count
        if budget.used > budget.limit:
            raise LimitExceeded(
                f"{dotted(path)}: with this tensor the request holds {budget.used} elements, "
                f"over the limit of {budget.limit} elements per request",
                field=path,
            )


def check_finite(array: NDArray[Any], path: FieldPath, *, allow_neg_inf: bool) -> None:
    """InvalidInput naming the first NaN, +inf or (unless allowed) -inf in a floating array."""
    if not is_floating(array.dtype):
        return
    # isfinite/isnan/isneginf raise no floating-point warnings, float16 and bfloat16 included;
    # the fast path is one pass, the locating passes only run on bad input.
    finite = np.isfinite(array)
    if finite.all():
        return
    bad = ~finite
    if allow_neg_inf:
        bad &= ~np.isneginf(array)
        if not bad.any():
            return
    index = unravel(int(np.argmax(bad)), array.shape)
    element = array[index]
    kind = "NaN" if np.isnan(element) else ("+inf" if element > 0 else "-inf")
    rule = "finite or -inf (a masked class)" if allow_neg_inf else "finite"
    raise invalid(path, f"contains {kind}{at_index(index)}; values must be {rule}")


# --- messages ----------------------------------------------------------------------------------


def invalid(path: FieldPath, reason: str) -> InvalidInput:
    return InvalidInput(f"{dotted(path)}: {reason}", field=path)


def dotted(path: FieldPath) -> str:
    return ".".join(str(part) for part in path)


def unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def at_index(index: tuple[int, ...]) -> str:
    """' at index (i, j)', or nothing for the single element of a 0-d tensor."""
    return f" at index {index}" if index else ""


def describe(value: object, *, echo: bool = False) -> str:
    """What a parsed JSON value is, for messages; `echo` shows numbers and short strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return repr(value) if echo and len(value) <= 40 else "a string"
    if isinstance(value, int | float):
        return repr(value) if echo else "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
