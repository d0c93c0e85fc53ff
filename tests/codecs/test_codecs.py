"""Tests of the tensor codecs: both wire forms, every wire dtype, every rejection.

Long because it is the codecs' table of forms x dtypes x rejections, one case per line.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

import ml_dtypes
import numpy as np
import pytest
from numpy.typing import NDArray

import service.codecs
from service.codecs import (
    WIRE_DTYPES,
    DecodedTensor,
    TensorLimits,
    decode_tensor,
    encode_tensor,
)
from service.errors import InvalidInput, LimitExceeded

LIMITS = TensorLimits(max_elements=10_000_000)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
SHAPES = [(), (0,), (2, 0), (5,), (2, 3), (2, 1, 3)]


def _numpy_dtype(name: str) -> np.dtype[Any]:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _sample(name: str, shape: tuple[int, ...]) -> NDArray[Any]:
    """Values that use the range of the dtype (negative, large, fractional where possible)."""
    rng = np.random.default_rng(0)
    dtype = _numpy_dtype(name)
    if name == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if name in FLOAT_DTYPES:
        return (rng.standard_normal(size=shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _le_bytes(array: NDArray[Any]) -> bytes:
    """The wire bytes of `array`, computed without the codec under test."""
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        return array.view(np.uint16).astype("<u2").tobytes()
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _encoded(name: str, shape: list[Any], raw: bytes, **extra: object) -> dict[str, object]:
    return {"dtype": name, "shape": shape, "data": base64.b64encode(raw).decode(), **extra}


def _decode(value: object, **options: Any) -> DecodedTensor:
    options.setdefault("limits", LIMITS)
    return decode_tensor(value, field="logits", **options)


def _assert_same(actual: NDArray[Any], expected: NDArray[Any]) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert np.array_equal(actual, expected)


# --- the public surface ------------------------------------------------------------------------


def test_all_lists_every_public_name() -> None:
    public = {name for name in vars(service.codecs) if not name.startswith("_")}
    assert set(service.codecs.__all__) == public


def test_wire_dtypes_are_the_design_list_in_order() -> None:
    assert WIRE_DTYPES == (
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "bool",
    )


def test_limits_refuse_a_negative_maximum() -> None:
    with pytest.raises(ValueError, match="max_elements"):
        TensorLimits(max_elements=-1)


# --- base64 form -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", WIRE_DTYPES)
def test_base64_round_trip(name: str, shape: tuple[int, ...]) -> None:
    array = _sample(name, shape)
    encoded = encode_tensor(array, "base64")
    assert isinstance(encoded, dict)
    assert encoded["dtype"] == name
    assert encoded["shape"] == list(shape)
    assert base64.b64decode(str(encoded["data"])) == _le_bytes(array)

    # Through real JSON text, as a client would send it back.
    decoded = _decode(json.loads(json.dumps(encoded, default=str)))
    assert decoded.form == "base64"
    _assert_same(decoded.array, array)
    assert decoded.array.dtype.isnative


@pytest.mark.parametrize("name", WIRE_DTYPES)
def test_base64_decodes_bytes_built_outside_the_codec(name: str) -> None:
    array = _sample(name, (3, 4))
    decoded = _decode(_encoded(name, [3, 4], _le_bytes(array)))
    _assert_same(decoded.array, array)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("name", ["float16", "float32", "float64", "int16", "int32", "int64"])
def test_base64_bytes_are_little_endian_whatever_the_array_byte_order(
    name: str, order: Literal["<", ">"]
) -> None:
    native = _sample(name, (2, 3))
    array = native.astype(native.dtype.newbyteorder(order))
    encoded = encode_tensor(array, "base64")
    assert isinstance(encoded, dict)
    assert encoded["dtype"] == name
    assert (
        base64.b64decode(str(encoded["data"]))
        == native.astype(native.dtype.newbyteorder("<")).tobytes()
    )


def test_base64_float32_bytes_are_the_little_endian_bytes() -> None:
    array = np.array([[1.5, -2.25], [3.0e-3, 7.0]], dtype=">f4")
    encoded = encode_tensor(array, "base64")
    assert isinstance(encoded, dict)
    assert base64.b64decode(str(encoded["data"])) == array.astype("<f4").tobytes()
    assert base64.b64decode(str(encoded["data"])) == bytes.fromhex(
        "0000c03f000010c0a69b443b0000e040"
    )


def test_base64_bytes_are_row_major_for_non_contiguous_arrays() -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3).T  # Fortran-ordered view
    encoded = encode_tensor(array, "base64")
    assert isinstance(encoded, dict)
    assert encoded["shape"] == [3, 2]
    raw = base64.b64decode(str(encoded["data"]))
    assert np.frombuffer(raw, dtype="<i4").tolist() == [0, 3, 1, 4, 2, 5]


# --- JSON form ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "dtype", "shape"),
    [
        (3, np.int64, ()),
        (-3, np.int64, ()),
        (2.0, np.float64, ()),  # 2.0 stays a float: JSON kept the decimal point
        ([1, 2, 3], np.int64, (3,)),
        ([1, 2.0, 3], np.float64, (3,)),  # one float makes the array float
        ([[2.0, 0.5], [0.1, 3]], np.float64, (2, 2)),
        ([[[1]], [[2]]], np.int64, (2, 1, 1)),
        ([2**63 - 1, -(2**63)], np.int64, (2,)),  # the int64 extremes fit
        ([], np.float64, (0,)),
        ([[], []], np.float64, (2, 0)),
    ],
    ids=repr,
)
def test_json_dtype_and_shape(
    value: object, dtype: type[np.generic], shape: tuple[int, ...]
) -> None:
    decoded = _decode(value)
    assert decoded.form == "json"
    _assert_same(decoded.array, np.array(value, dtype=dtype).reshape(shape))


def test_json_large_nested_list() -> None:
    expected = np.random.default_rng(1).standard_normal((1000, 1000))
    decoded = _decode(expected.tolist())
    _assert_same(decoded.array, expected)


def test_json_large_nested_list_of_ints() -> None:
    expected = np.random.default_rng(2).integers(-5, 5, size=(1000, 1000))
    decoded = _decode(expected.tolist())
    _assert_same(decoded.array, expected)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (
            [[1, 2], [3]],
            "nested arrays are ragged: the array at index (1,) has length 1, expected 2",
        ),
        ([[1], [2, 3]], "the array at index (1,) has length 2, expected 1"),
        ([[], [1]], "the array at index (1,) has length 1, expected 0"),
        ([[1, 2], 3], "nested arrays are ragged: expected an array at index (1,), found a number"),
        (
            [[1], [[2]]],
            "nested arrays are ragged: expected a number at index (1, 0), found an array",
        ),
        ([[1, 2], [3, [4]]], "expected a number at index (1, 1), found an array"),
        ([[1, 2], "ab"], "expected an array at index (1,), found a string"),
        ([1, "2"], "contains a string at index (1,); only numbers are accepted"),
        ([[1.5, 2], [3, "x"]], "contains a string at index (1, 1)"),
        ([1.5, None], "contains null at index (1,)"),
        ([1, True], "contains a boolean (true) at index (1,)"),
        ([[0.5], [False]], "contains a boolean (false) at index (1, 0)"),
        ([True, False], "contains a boolean (true) at index (0,)"),
        ([1, {"a": 1}], "contains an object at index (1,)"),
        ([1, 2**63], "the integer at index (1,) does not fit in int64"),
        ([[0], [-(2**63) - 1]], "the integer at index (1, 0) does not fit in int64"),
        ([0.5, 10**400], "the integer at index (1,) is too large for float64"),
        (2**64, "the integer does not fit in int64"),
    ],
    ids=repr,
)
def test_json_rejections(value: object, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _decode(value)
    assert type(caught.value) is InvalidInput
    assert caught.value.field == ("logits",)
    assert caught.value.detail.startswith("logits: ")
    assert fragment in caught.value.detail


def test_json_nesting_deeper_than_numpy_allows() -> None:
    value: object = 0.0
    for _ in range(65):
        value = [value]
    with pytest.raises(InvalidInput, match="more than 64 levels deep") as caught:
        _decode(value)
    assert caught.value.field == ("logits",)


def test_json_nesting_at_numpy_maximum_is_accepted() -> None:
    value: object = 0.0
    for _ in range(64):
        value = [value]
    assert _decode(value).array.shape == (1,) * 64


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (True, "got a boolean (true)"),
        (None, "got null"),
        ("1.0", "got a string"),
        ((1, 2), "got a tuple"),
    ],
    ids=repr,
)
def test_values_that_are_no_tensor(value: object, got: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _decode(value)
    assert caught.value.field == ("logits",)
    assert caught.value.detail == (
        "logits: expected a number, a nested array of numbers, or an encoded tensor object "
        f"{{dtype, shape, data}}, {got}"
    )


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[1.0, -2.5]]), [[1.0, -2.5]]),
        (np.array([1, 2], dtype=np.int32), [1, 2]),
        (np.array([True, False]), [True, False]),
        (np.float64(0.25), 0.25),
        (np.array(7, dtype=np.int64), 7),
        (np.array([0.1], dtype=np.float16), [float(np.float16(0.1))]),
        (
            np.array([[0.1]], dtype=ml_dtypes.bfloat16),
            [[float(np.float32(ml_dtypes.bfloat16(0.1)))]],
        ),
    ],
    ids=repr,
)
def test_json_encoding(array: NDArray[Any], expected: object) -> None:
    encoded = encode_tensor(array, "json")
    assert encoded == expected
    # Plain Python numbers (not NumPy scalars, which compare equal), so any JSON encoder takes them.
    assert _leaf_types(encoded) == _leaf_types(expected)


def _leaf_types(value: object) -> set[type]:
    if isinstance(value, list):
        return set().union(*(_leaf_types(item) for item in value))
    return {type(value)}


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32"])
def test_json_encoding_of_16_and_32_bit_floats_gives_python_floats(name: str) -> None:
    encoded = encode_tensor(_sample(name, (2,)), "json")
    assert isinstance(encoded, list)
    assert all(type(leaf) is float for leaf in encoded)


# bool is left out: JSON booleans are not numbers on input, they only appear on output.
@pytest.mark.parametrize("name", [name for name in WIRE_DTYPES if name != "bool"])
def test_json_round_trip(name: str) -> None:
    array = _sample(name, (2, 3))
    decoded = _decode(json.loads(json.dumps(encode_tensor(array, "json"))))
    expected = array.astype(np.int64 if array.dtype.kind in "iu" else np.float64)
    _assert_same(decoded.array, expected)


@pytest.mark.parametrize(
    "array",
    [np.array([1j]), np.array([1], dtype=np.uint64), np.array(["a"]), np.array([None])],
    ids=lambda array: str(array.dtype),
)
@pytest.mark.parametrize("form", ["json", "base64"])
def test_encoding_a_dtype_without_wire_name_is_a_type_error(array: NDArray[Any], form: Any) -> None:
    with pytest.raises(TypeError, match="has no wire name"):
        encode_tensor(array, form)


def test_encoding_in_an_unknown_form_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown tensor form"):
        encode_tensor(np.zeros(2), "binary")  # type: ignore[arg-type]


# --- encoded form rejections -------------------------------------------------------------------

_GOOD = _encoded("float32", [2], np.zeros(2, dtype="<f4").tobytes())


@pytest.mark.parametrize(
    ("value", "field", "fragment"),
    [
        (
            {**_GOOD, "foo": 1},
            ("logits", "foo"),
            "logits.foo: unknown key; an encoded tensor has exactly dtype, shape, data",
        ),
        ({"shape": [2], "data": _GOOD["data"]}, ("logits", "dtype"), "logits.dtype: missing"),
        ({"dtype": "float32", "data": _GOOD["data"]}, ("logits", "shape"), "logits.shape: missing"),
        ({"dtype": "float32", "shape": [2]}, ("logits", "data"), "logits.data: missing"),
        (
            {**_GOOD, "dtype": "float8"},
            ("logits", "dtype"),
            "logits.dtype: expected one of float16, bfloat16, float32, float64, int8, int16, "
            "int32, int64, uint8, bool, got 'float8'",
        ),
        ({**_GOOD, "dtype": "Float32"}, ("logits", "dtype"), "got 'Float32'"),
        ({**_GOOD, "dtype": 4}, ("logits", "dtype"), "got 4"),
        ({**_GOOD, "dtype": None}, ("logits", "dtype"), "got null"),
        (
            {**_GOOD, "shape": 2},
            ("logits", "shape"),
            "logits.shape: expected an array of non-negative integers, got a number",
        ),
        (
            {**_GOOD, "shape": [2.0]},
            ("logits", "shape"),
            "logits.shape: dimension 0 is 2.0; dimensions must be non-negative integers",
        ),
        ({**_GOOD, "shape": [True, 2]}, ("logits", "shape"), "dimension 0 is a boolean (true)"),
        ({**_GOOD, "shape": [2, "1"]}, ("logits", "shape"), "dimension 1 is '1'"),
        ({**_GOOD, "shape": [2, None]}, ("logits", "shape"), "dimension 1 is null"),
        (
            {**_GOOD, "shape": [-2]},
            ("logits", "shape"),
            "dimension 0 is -2; dimensions must be non-negative integers",
        ),
        (
            {**_GOOD, "shape": [1] * 65},
            ("logits", "shape"),
            "has 65 dimensions; at most 64 are supported",
        ),
        (
            {**_GOOD, "data": 12},
            ("logits", "data"),
            "logits.data: expected a base64 string, got a number",
        ),
        (
            {**_GOOD, "data": "AAAA AAAAAAA="},
            ("logits", "data"),
            "logits.data: is not valid standard base64",
        ),
        (
            {**_GOOD, "data": "AAAAAAAAAAA"},
            ("logits", "data"),
            "is not valid standard base64",
        ),  # padding
        (
            {**_GOOD, "data": "AAAA_AAAAAA="},
            ("logits", "data"),
            "is not valid standard base64",
        ),  # urlsafe
        ({**_GOOD, "data": "AAAAAAAAAAé="}, ("logits", "data"), "is not valid standard base64"),
        ({**_GOOD, "data": "AAAAAAAAAAA=\n"}, ("logits", "data"), "is not valid standard base64"),
        (
            {**_GOOD, "shape": [3]},
            ("logits", "data"),
            "logits.data: holds 8 bytes, but dtype float32 and shape [3] need 12 "
            "(3 elements x 4 bytes)",
        ),
        (
            {**_GOOD, "shape": []},
            ("logits", "data"),
            "holds 8 bytes, but dtype float32 and shape [] need 4",
        ),
        (
            {**_GOOD, "dtype": "float64"},
            ("logits", "data"),
            "holds 8 bytes, but dtype float64 and shape [2] need 16",
        ),
        (
            _encoded("bool", [2, 2], bytes([0, 1, 1, 2])),
            ("logits", "data"),
            "logits.data: bool element at index (1, 1) is byte 2; bool bytes must be 0 or 1",
        ),
        (
            _encoded("bool", [3], bytes([255, 0, 1])),
            ("logits", "data"),
            "bool element at index (0,) is byte 255",
        ),
    ],
    ids=repr,
)
def test_encoded_rejections(
    value: dict[str, object], field: tuple[str, ...], fragment: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        _decode(value)
    assert type(caught.value) is InvalidInput
    assert caught.value.field == field
    assert caught.value.detail.startswith(".".join(field) + ": ")
    assert fragment in caught.value.detail


def test_bool_bytes_zero_and_one_decode() -> None:
    decoded = _decode(_encoded("bool", [2, 2], bytes([0, 1, 1, 0])))
    _assert_same(decoded.array, np.array([[False, True], [True, False]]))


# --- element limit, both forms -----------------------------------------------------------------


def test_json_element_limit() -> None:
    value = [[0.5] * 4] * 3
    assert _decode(value, limits=TensorLimits(max_elements=12)).array.shape == (3, 4)
    with pytest.raises(LimitExceeded) as caught:
        _decode(value, limits=TensorLimits(max_elements=11))
    assert caught.value.field == ("logits",)
    assert caught.value.detail == (
        "logits: shape [3, 4] has 12 elements, over the limit of 11 elements per tensor"
    )


def test_encoded_element_limit_is_checked_before_the_data() -> None:
    raw = np.zeros(12, dtype="<f4").tobytes()
    assert _decode(_encoded("float32", [3, 4], raw), limits=TensorLimits(12)).array.shape == (3, 4)
    # The data is not even base64: the shape alone is refused, without decoding anything.
    value = {"dtype": "float32", "shape": [3, 4], "data": "not base64!"}
    with pytest.raises(LimitExceeded) as caught:
        _decode(value, limits=TensorLimits(max_elements=11))
    assert caught.value.field == ("logits", "shape")
    assert caught.value.detail == (
        "logits.shape: shape [3, 4] has 12 elements, over the limit of 11 elements per tensor"
    )


def test_encoded_dimension_over_the_limit_is_refused_even_when_empty() -> None:
    value = _encoded("float32", [0, 10**30], b"")
    with pytest.raises(LimitExceeded) as caught:
        _decode(value, limits=TensorLimits(max_elements=1000))
    assert caught.value.field == ("logits", "shape")
    assert "logits.shape: dimension 1 is over the limit of 1000 elements" in caught.value.detail


# --- finiteness, both forms --------------------------------------------------------------------

_NON_FINITE = [(float("nan"), "NaN"), (float("inf"), "+inf"), (float("-inf"), "-inf")]


def _with_value_at_1_1(bad: float) -> NDArray[np.float64]:
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    array[1, 1] = bad
    return array


def _as_form(array: NDArray[Any], name: str, form: str) -> object:
    if form == "json":  # through JSON text: Python's json reads and writes NaN and Infinity
        return json.loads(json.dumps(array.tolist()))
    return _encoded(name, list(array.shape), _le_bytes(array.astype(_numpy_dtype(name))))


_FORMS = [("json", "float64")] + [("base64", name) for name in FLOAT_DTYPES]


@pytest.mark.parametrize(("bad", "kind"), _NON_FINITE, ids=lambda x: str(x))
@pytest.mark.parametrize(("form", "name"), _FORMS)
def test_non_finite_values_are_rejected(form: str, name: str, bad: float, kind: str) -> None:
    value = _as_form(_with_value_at_1_1(bad), name, form)
    with pytest.raises(InvalidInput) as caught:
        _decode(value)
    assert caught.value.field == ("logits",)
    assert caught.value.detail == f"logits: contains {kind} at index (1, 1); values must be finite"


@pytest.mark.parametrize(("form", "name"), _FORMS)
def test_negative_infinity_is_accepted_where_allowed(form: str, name: str) -> None:
    expected = _with_value_at_1_1(float("-inf")).astype(_numpy_dtype(name))
    decoded = _decode(_as_form(expected, name, form), allow_neg_inf=True)
    _assert_same(decoded.array, expected)


@pytest.mark.parametrize(("bad", "kind"), _NON_FINITE[:2], ids=lambda x: str(x))
@pytest.mark.parametrize(("form", "name"), _FORMS)
def test_nan_and_positive_infinity_stay_rejected_where_negative_infinity_is_allowed(
    form: str, name: str, bad: float, kind: str
) -> None:
    array = _with_value_at_1_1(bad)
    array[0, 0] = float("-inf")  # allowed, and before the bad value: must not be the one reported
    with pytest.raises(InvalidInput) as caught:
        _decode(_as_form(array, name, form), allow_neg_inf=True)
    assert caught.value.detail == (
        f"logits: contains {kind} at index (1, 1); values must be finite or -inf (a masked class)"
    )


def test_the_first_non_finite_value_is_reported() -> None:
    value = json.loads("[[0.0, Infinity], [NaN, -Infinity]]")
    with pytest.raises(InvalidInput, match=r"contains \+inf at index \(0, 1\)"):
        _decode(value)


@pytest.mark.parametrize(("bad", "kind"), _NON_FINITE, ids=lambda x: str(x))
def test_non_finite_scalar(bad: float, kind: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _decode(bad)
    assert caught.value.detail == f"logits: contains {kind}; values must be finite"


# --- field paths -------------------------------------------------------------------------------


def test_nested_field_paths_in_errors() -> None:
    field = ("losses", 0, "weight")
    with pytest.raises(InvalidInput) as caught:
        decode_tensor([1, None], field=field, limits=LIMITS)
    assert caught.value.field == field
    assert caught.value.detail.startswith("losses.0.weight: contains null")

    with pytest.raises(InvalidInput) as caught:
        decode_tensor({**_GOOD, "data": "!"}, field=field, limits=LIMITS)
    assert caught.value.field == (*field, "data")
    assert caught.value.detail.startswith("losses.0.weight.data: ")
