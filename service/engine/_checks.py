"""Argument checks shared by every loss, with one message style.

Messages start with the field name, as the API reports them to the caller unchanged:
"labels: class index 7 at index (3,) is outside [0, 5) and is not ignore_index (-100)".
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from service.engine._dtypes import as_compute
from service.engine._namespace import Array, errstate
from service.errors import InvalidInput


def first_position(mask: Array, xp: ModuleType) -> tuple[int, ...]:
    """Index of the first True in `mask` (which must contain one), as a tuple of ints."""
    flat = int(xp.argmax(mask.reshape(-1)))
    return tuple(int(i) for i in np.unravel_index(flat, mask.shape))


def require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise InvalidInput(f"{field}: {message}", field=field)


def check_option_range(
    value: float,
    field: str,
    *,
    low: float,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """Scalar options: finite, `low <= value <= high` (`>` / `<` for an open end)."""
    require(math.isfinite(value), field, f"expected a finite value, got {value}")
    too_low = not (value > low if open_low else value >= low)  # `not` also catches NaN
    too_high = high is not None and (value >= high if open_high else value > high)
    if too_low or too_high:
        bound = "" if high is None else f" and {'<' if open_high else '<='} {high}"
        raise InvalidInput(
            f"{field}: expected a value {'>' if open_low else '>='} {low}{bound}, got {value}",
            field=field,
        )


def check_nonnegative(array: Array, field: str, xp: ModuleType) -> None:
    """Weights, priors and counts: finite and >= 0."""
    _reject_first(~(xp.isfinite(array) & (array >= 0)), array, field, "be finite and >= 0", xp)


def check_unit_interval(array: Array, field: str, xp: ModuleType) -> None:
    """Probabilities and binary targets: 0 <= value <= 1."""
    _reject_first(~((array >= 0) & (array <= 1)), array, field, "lie in [0, 1]", xp)


def _reject_first(bad: Array, array: Array, field: str, rule: str, xp: ModuleType) -> None:
    if bool(xp.any(bad)):
        position = first_position(bad, xp)
        raise InvalidInput(
            f"{field}: values must {rule}, got {float(array[position])} at index {position}",
            field=field,
        )


def check_broadcastable(shape: tuple[int, ...], target: tuple[int, ...], field: str) -> None:
    """`shape` must broadcast to `target` without changing `target`."""
    ok = len(shape) <= len(target) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False)
    )
    require(ok, field, f"shape {list(shape)} does not broadcast to {list(target)}")


def finite_input(
    array: Array, field: str, shape: tuple[int, ...], dtype: np.dtype, *, xp: ModuleType
) -> Array:
    """An input of exactly `shape`, finite, in the compute dtype `dtype`."""
    require(array.shape == shape, field, f"expected shape {list(shape)}, got {list(array.shape)}")
    with errstate(xp, over="ignore"):  # float64 -> float32 may overflow: rejected just below
        out = as_compute(array, dtype)
    bad = ~xp.isfinite(out)
    if bool(xp.any(bad)):
        position = first_position(bad, xp)
        raise InvalidInput(
            f"{field}: values must be finite in {out.dtype}, got {float(array[position])} at "
            f"index {position}",
            field=field,
        )
    return out
