"""The JSON form of a tensor field: a number or nested arrays of numbers, read as int64 when
every number is an integer and as float64 otherwise."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from service.codecs._checks import (
    TensorLimits,
    at_index,
    check_elements,
    describe,
    invalid,
    unravel,
)
from service.codecs._dtypes import MAX_NDIM
from service.errors import FieldPath, InvalidInput

_INT64 = np.iinfo(np.int64)


def decode_json(value: object, path: FieldPath, limits: TensorLimits) -> NDArray[Any]:
    shape = _leading_shape(value)
    if len(shape) > MAX_NDIM:
        raise invalid(path, f"nested arrays are more than {MAX_NDIM} levels deep")
    # NumPy converts bools, numeric strings and null (as NaN) without complaint, so look at the
    # leaf types first. map(type, ...) over chained rows runs in C, about as fast as the
    # conversion itself; the Python walk in `_json_problem` only runs once something is wrong.
    try:
        leaf_types = set(map(type, _leaves(value, len(shape))))
    except TypeError:  # a number where a nested array should be
        leaf_types = {list}
    if not leaf_types <= {int, float}:
        raise _json_error(value, shape, path)
    dtype = np.int64 if leaf_types == {int} else np.float64  # empty arrays are float64
    try:
        array = np.asarray(value, dtype=dtype)
    except (ValueError, OverflowError):  # ragged, or an integer out of int64/float64 range
        raise _json_error(value, shape, path) from None
    check_elements(array.shape, path, limits)
    return array


def _leading_shape(value: object) -> tuple[int, ...]:
    """The shape the nested lists claim along their first elements (stops past MAX_NDIM)."""
    shape: list[int] = []
    node = value
    while isinstance(node, list) and len(shape) <= MAX_NDIM:
        shape.append(len(node))
        if not node:
            break
        node = node[0]
    return tuple(shape)


def _leaves(value: object, ndim: int) -> Iterable[object]:
    """The leaves of nested lists `ndim` deep, in row-major order, flattened in C."""
    if ndim == 0:
        return (value,)
    leaves: Iterable[Any] = cast("list[Any]", value)  # nested lists, since ndim > 0
    for _ in range(ndim - 1):
        leaves = chain.from_iterable(leaves)
    return leaves


def _json_error(value: object, shape: tuple[int, ...], path: FieldPath) -> InvalidInput:
    """Why NumPy could not take `value` as it is: the first problem in row-major order."""
    problem = _json_problem(value, shape, ())
    if problem is None:
        problem = _json_overflow(value, shape)
    return invalid(path, problem)


def _json_problem(node: object, shape: tuple[int, ...], index: tuple[int, ...]) -> str | None:
    """The first structural or leaf-type problem at or under `node`, or None."""
    depth = len(index)
    if depth == len(shape):
        if isinstance(node, list):
            return f"nested arrays are ragged: expected a number{at_index(index)}, found an array"
        if type(node) not in (int, float):
            return f"contains {describe(node)}{at_index(index)}; only numbers are accepted"
        return None
    if not isinstance(node, list):
        found = describe(node)
        return f"nested arrays are ragged: expected an array{at_index(index)}, found {found}"
    if len(node) != shape[depth]:
        return (
            f"nested arrays are ragged: the array{at_index(index)} has length {len(node)}, "
            f"expected {shape[depth]} like the first array at that depth"
        )
    for i, child in enumerate(node):
        problem = _json_problem(child, shape, (*index, i))
        if problem is not None:
            return problem
    return None


def _json_overflow(value: object, shape: tuple[int, ...]) -> str:
    """Which integer did not fit, for nested lists whose structure and leaf types are valid."""
    leaves = list(_leaves(value, len(shape)))
    all_ints = all(type(leaf) is int for leaf in leaves)
    for flat, leaf in enumerate(leaves):
        if type(leaf) is not int:
            continue
        index = unravel(flat, shape)
        if all_ints and not _INT64.min <= leaf <= _INT64.max:
            # The value is not echoed: it may have thousands of digits.
            return f"the integer{at_index(index)} does not fit in int64"
        if not all_ints:
            try:
                float(leaf)
            except OverflowError:
                return f"the integer{at_index(index)} is too large for float64"
    # Unreachable when NumPy and the walk above agree; still a 422, never a 500.
    return "could not be read as an array of numbers"
