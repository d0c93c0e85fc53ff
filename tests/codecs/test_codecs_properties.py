"""Properties of the codecs over generated input (Hypothesis).

Whatever a client sends, JSON value or bytes, the codecs either decode it into a valid tensor or
raise their own error (`InvalidInput`, 422, or `LimitExceeded`, 413), never anything else and
never a warning (warnings are errors in this suite). A valid tensor is one the engine can take:
a wire dtype, finite values (or -inf where allowed), within the element limits. Valid tensors
survive a round trip through either wire form bit for bit.
"""

from __future__ import annotations

import base64
import math
from typing import Any, TypeGuard

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from service.codecs import (
    WIRE_DTYPES,
    DecodedTensor,
    TensorLimits,
    body_pieces,
    decode_tensor,
    dumps_json,
    encode_tensor,
    loads_json,
    oip,
    request_elements,
)
from service.codecs._dtypes import is_floating, numpy_dtype, wire_name
from service.errors import InvalidInput, LimitExceeded

MAX_ELEMENTS = 64
LIMITS = TensorLimits(max_elements=MAX_ELEMENTS)
CODEC_ERRORS = (InvalidInput, LimitExceeded)

# Derandomized: the same examples on every run, so CI is reproducible; no example database.
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Numbers as a JSON parser produces them: any int (past int64 too) and any float, NaN and the
# infinities included (orjson refuses them in text, but other callers may not).
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**63, -(2**63) - 1, 2**64]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
    ),
    max_leaves=40,
)


@st.composite
def nested_numbers(draw: st.DrawFn) -> object:
    """Rectangular nested lists of numbers, sometimes made ragged or given one odd leaf."""
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
    count = math.prod(shape)
    leaves = draw(st.lists(numbers, min_size=count, max_size=count))
    value: object = np.array(leaves, dtype=object).reshape(shape).tolist() if shape else leaves[0]
    if shape and count and draw(st.booleans()):
        node: Any = value
        for _ in range(draw(st.integers(0, len(shape) - 1))):
            node = node[0]
        node[draw(st.integers(0, len(node) - 1))] = draw(json_values)
    return value


@st.composite
def encoded_tensors(draw: st.DrawFn) -> dict[str, object]:
    """Encoded tensor objects, valid or broken in one of their three keys (or an extra one)."""
    name = draw(st.one_of(st.sampled_from(WIRE_DTYPES), st.sampled_from(["float8", "", "F32"])))
    shape: object = draw(
        st.one_of(
            st.lists(st.integers(0, 5), max_size=3),
            st.lists(st.integers(-3, 2**64), max_size=3),
            st.lists(st.integers(0, 2), min_size=60, max_size=70),
            json_values,
        )
    )
    itemsize = numpy_dtype(name).itemsize if name in WIRE_DTYPES else 4
    size = math.prod(shape) if _small_shape(shape) else 0
    raw = draw(st.binary(min_size=size * itemsize, max_size=size * itemsize))
    data: object = draw(
        st.one_of(
            st.just(base64.b64encode(raw).decode()),
            st.just(base64.b64encode(raw + b"\x00").decode()),
            st.text(max_size=12),
            json_values,
        )
    )
    value: dict[str, object] = {"dtype": name, "shape": shape, "data": data}
    if draw(st.integers(0, 9)) == 0:
        value[draw(st.sampled_from(["dtype", "shape", "data", "extra"]))] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        del value[draw(st.sampled_from(["dtype", "shape", "data"]))]
    return value


def _small_shape(shape: object) -> TypeGuard[list[int]]:
    return (
        isinstance(shape, list)
        and all(type(size) is int and 0 <= size <= 8 for size in shape)
        and math.prod(shape) <= 4096
    )


def assert_valid(decoded: DecodedTensor, *, allow_neg_inf: bool) -> None:
    array = decoded.array
    assert isinstance(array, np.ndarray)
    assert decoded.form in ("json", "base64")
    wire_name(array.dtype)  # a wire dtype (TypeError otherwise)
    assert array.size <= MAX_ELEMENTS
    assert array.ndim <= 64
    if decoded.form == "json":
        assert array.dtype in (np.int64, np.float64)
    if is_floating(array.dtype):
        values = array.astype(np.float64)
        assert not np.isnan(values).any()
        assert not np.isposinf(values).any()
        assert allow_neg_inf or not np.isneginf(values).any()


def decode_or_codec_error(value: object, *, allow_neg_inf: bool) -> DecodedTensor | None:
    try:
        decoded = decode_tensor(value, field="x", limits=LIMITS, allow_neg_inf=allow_neg_inf)
    except CODEC_ERRORS as error:
        assert error.field[:1] == ("x",)  # every error names the field it is about
        assert error.detail.startswith("x")
        return None
    assert_valid(decoded, allow_neg_inf=allow_neg_inf)
    return decoded


@PROPERTY
@given(value=json_values, allow_neg_inf=st.booleans())
def test_any_json_value_decodes_or_is_refused(value: object, allow_neg_inf: bool) -> None:
    decode_or_codec_error(value, allow_neg_inf=allow_neg_inf)


@PROPERTY
@given(value=nested_numbers(), allow_neg_inf=st.booleans())
def test_nested_numbers_decode_or_are_refused(value: object, allow_neg_inf: bool) -> None:
    decoded = decode_or_codec_error(value, allow_neg_inf=allow_neg_inf)
    if decoded is not None:  # the values are the numbers sent
        assert np.array_equal(np.asarray(value, dtype=decoded.array.dtype), decoded.array)


@PROPERTY
@given(value=encoded_tensors(), allow_neg_inf=st.booleans())
def test_encoded_tensors_decode_or_are_refused(value: object, allow_neg_inf: bool) -> None:
    decoded = decode_or_codec_error(value, allow_neg_inf=allow_neg_inf)
    if decoded is not None:
        assert isinstance(value, dict)
        assert list(decoded.array.shape) == value["shape"]
        assert wire_name(decoded.array.dtype) == value["dtype"]


@st.composite
def valid_arrays(draw: st.DrawFn) -> NDArray[Any]:
    name = draw(st.sampled_from(WIRE_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    array: NDArray[Any]
    if name == "bfloat16":  # any 16 bits, as Hypothesis has no bfloat16 strategy
        array = draw(hnp.arrays(np.uint16, shape)).view(ml_dtypes.bfloat16)
    else:
        array = draw(hnp.arrays(numpy_dtype(name), shape))
    if is_floating(array.dtype):  # the decoder refuses non-finite values: send finite ones
        wide = array.astype(np.float64)
        array = np.where(np.isfinite(wide), array, np.zeros_like(array))
    return array


@PROPERTY
@given(array=valid_arrays())
def test_valid_tensors_round_trip_bit_for_bit(array: np.ndarray) -> None:
    # JSON tensors are numbers (a bool tensor goes out as booleans), and nested lists cannot
    # tell [0, 3] from [0]: those come back only from the encoded form.
    json_exact = array.dtype != np.bool_ and 0 not in array.shape[:-1]
    for form in ("base64", "json") if json_exact else ("base64",):
        # Through JSON text, as the service writes it and reads it back.
        text = b"".join(body_pieces(dumps_json(encode_tensor(array, form))))
        decoded = decode_tensor(loads_json(text), field="x", limits=TensorLimits(10_000))
        assert decoded.array.shape == array.shape
        if form == "base64":
            assert decoded.array.dtype == array.dtype
            assert decoded.array.tobytes() == array.tobytes()
        else:  # JSON numbers: int64 or float64, equal in value
            assert np.array_equal(decoded.array, array.astype(decoded.array.dtype))


@PROPERTY
@given(
    body=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)),
    header_length=st.one_of(st.none(), st.text(max_size=4), st.integers(-2, 80).map(str)),
)
def test_any_byte_string_is_an_infer_header_or_refused(
    body: bytes, header_length: str | None
) -> None:
    try:
        header, binary = oip.split_body(body, header_length)
    except InvalidInput:
        return
    assert isinstance(header, dict)
    assert isinstance(binary, bytes)
    assert len(binary) <= len(body)


@PROPERTY
@given(
    shape=st.one_of(st.lists(st.integers(-1, 5), max_size=3), json_values),
    datatype=st.one_of(st.sampled_from([*oip.OIP_DATATYPES, "BYTES", "fp32"]), json_values),
    data=st.one_of(st.none(), nested_numbers(), json_values),
    binary=st.one_of(st.none(), st.binary(max_size=48)),
)
def test_any_oip_input_decodes_or_is_refused(
    shape: object, datatype: object, data: object, binary: bytes | None
) -> None:
    try:
        array = oip.decode_input(shape, datatype, data, binary, field=("inputs", 0), limits=LIMITS)
    except CODEC_ERRORS:
        return
    assert list(array.shape) == shape
    assert wire_name(array.dtype) == oip.OIP_DATATYPES[str(datatype)]
    assert_valid(DecodedTensor(array, "base64"), allow_neg_inf=False)


@PROPERTY
@given(
    shapes=st.lists(st.lists(st.integers(0, 6), max_size=3), min_size=1, max_size=5),
    limit=st.integers(1, 100),
)
def test_a_request_budget_bounds_the_elements_of_all_its_tensors(
    shapes: list[list[int]], limit: int
) -> None:
    """The first tensor over the per-tensor limit, or that takes the running total over the
    request's, is refused; the tensors before it decode."""
    expected, total = None, 0
    for index, shape in enumerate(shapes):
        count = math.prod(shape)
        if count > MAX_ELEMENTS:
            expected = (index, "per tensor")
            break
        total += count
        if total > limit:
            expected = (index, "per request")
            break
    decoded = 0
    with request_elements(limit):
        for index, shape in enumerate(shapes):
            data = base64.b64encode(bytes(4 * math.prod(shape))).decode()
            wire = {"dtype": "float32", "shape": shape, "data": data}
            try:
                decode_tensor(wire, field=("x", index), limits=LIMITS)
            except LimitExceeded as error:
                assert expected is not None
                assert index == expected[0]
                assert expected[1] in error.detail
                assert error.field[:2] == ("x", index)
                return
            decoded += math.prod(shape)
    assert expected is None
    assert decoded == total <= limit


def test_outside_a_request_nothing_is_counted() -> None:
    data = base64.b64encode(bytes(MAX_ELEMENTS)).decode()
    wire = {"dtype": "uint8", "shape": [MAX_ELEMENTS], "data": data}
    for _ in range(3):  # three tensors at the per-tensor limit: no request budget applies
        assert decode_tensor(wire, field="x", limits=LIMITS).array.size == MAX_ELEMENTS
    with request_elements(2 * MAX_ELEMENTS):
        decode_tensor(wire, field="x", limits=LIMITS)
        decode_tensor(wire, field="x", limits=LIMITS)
        with pytest.raises(LimitExceeded, match="per request"):
            decode_tensor(wire, field="x", limits=LIMITS)
