"""Large JSON bodies: `loads_json` (long base64 strings lifted), `dumps_json` (spliced back) and
the base64 codec in pieces, each against the plain one-call result (orjson, pybase64)."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import orjson
import pybase64
import pytest

from service.codecs import (
    Base64Output,
    Base64Text,
    _json_body,
    body_pieces,
    dumps_json,
    loads_json,
)
from service.codecs import _base64 as codec
from service.codecs._json_body import LIFT_MIN_CHARS, body_buffer

RNG = np.random.default_rng(7)
LONG = pybase64.b64encode_as_string(RNG.bytes(LIFT_MIN_CHARS))  # long enough to be lifted
SHORT = pybase64.b64encode_as_string(b"abc")


def _plain(value: Any) -> Any:
    """`value` with every Base64Text or Base64Output as the str it stands for."""
    if isinstance(value, Base64Text | Base64Output):
        return str(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _lifted(value: Any) -> list[Base64Text]:
    if isinstance(value, Base64Text):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _lifted(item)]
    if isinstance(value, list):
        return [text for item in value for text in _lifted(item)]
    return []


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of 3 bytes / 4 characters: every tensor here spans many."""
    monkeypatch.setattr(codec, "PIECE_BYTES", 3)
    monkeypatch.setattr(codec, "DECODE_PIECE_BYTES", 3)
    monkeypatch.setattr(codec, "DECODE_PIECE_CHARS", 4)


BODIES = {
    "top-level tensor": ('{"logits": {"dtype": "float32", "shape": [1], "data": "%s"}}', 1),
    "no spaces": ('{"logits":{"dtype":"float32","shape":[1],"data":"%s"},"labels":[1,2]}', 1),
    "whitespace around the colon": ('{"x": {"data" \n\t:\r\n "%s"}}', 1),
    "items of an array": ('{"losses": [{"w": {"data": "%s"}}, {"w": {"data": "%s"}}]}', 2),
    "after escaped quotes": ('{"a": "say \\"data\\": ", "x": {"data": "%s"}}', 1),
    "after a backslash run": ('{"a": "\\\\", "x": {"data": "%s"}}', 1),
    "another key": ('{"x": {"xdata": "%s", "data2": "%s"}}', 0),
    "a value, not a key": ('{"x": ["data", "%s"]}', 0),
    "after nested numbers": ('{"labels": [[1, 2], [3, 4]], "x": {"data": "%s"}}', 1),
}


@pytest.mark.parametrize(("template", "lifted"), BODIES.values(), ids=BODIES.keys())
def test_lifted_parse_equals_the_plain_parse(template: str, lifted: int) -> None:
    body = (template % ((LONG,) * template.count("%s"))).encode()
    parsed = loads_json(body)
    assert _plain(parsed) == orjson.loads(body)
    texts = _lifted(parsed)
    assert len(texts) == lifted
    assert all(str(text) == LONG for text in texts)


def test_short_strings_and_escaped_strings_are_left_to_orjson() -> None:
    escaped = LONG[:100] + "\\u0041" + LONG[100:]  # valid JSON, and valid base64 once read
    for data in (SHORT, escaped):
        body = f'{{"x": {{"data": "{data}"}}}}'.encode()
        parsed = loads_json(body)
        assert type(parsed["x"]["data"]) is str
        assert parsed == orjson.loads(body)


def test_a_body_of_many_strings_is_parsed_whole() -> None:
    many = ", ".join(f'"k{i}": "v"' for i in range(_json_body.MAX_STRINGS_SCANNED + 1))
    body = f'{{{many}, "x": {{"data": "{LONG}"}}}}'.encode()
    parsed = loads_json(body)
    assert type(parsed["x"]["data"]) is str
    assert parsed == orjson.loads(body)


def _steps_in_the_scan(body: bytes) -> int:
    """Lines of `service.codecs._json_body` Python runs to parse `body`: the scan's steps."""
    steps = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal steps
        if frame.f_code.co_filename != _json_body.__file__:
            return None
        steps += event == "line"
        return trace

    sys.settrace(trace)
    try:
        loads_json(body)
    finally:
        sys.settrace(None)
    return steps


@pytest.mark.parametrize(
    "string",
    [
        b"\\" * 2**17,  # a long run of backslashes, then the closing quote
        b'\\"' * 2**16,  # escaped quotes, each one a step
        b'\\"' + b"\\" * 2**17,  # an escaped quote after a long run
    ],
    ids=["backslashes", "escaped-quotes", "run-then-quote"],
)
def test_strings_of_backslashes_cost_a_bounded_number_of_steps(string: bytes) -> None:
    """Regression: the scan for closing quotes counted the backslashes before a quote one Python
    step per byte (a 48 MB string of backslashes held the event loop for 3 s). It measures a run
    in C now, and the escaped quotes it steps over count against MAX_STRINGS_SCANNED."""
    body = b'{"name": "' + string + b'", "x": {"data": "' + LONG.encode() + b'"}}'
    assert _plain(loads_json(body)) == orjson.loads(body)
    assert _steps_in_the_scan(body) < 20 * _json_body.MAX_STRINGS_SCANNED


def test_a_string_ending_in_escaped_backslashes_is_closed() -> None:
    body = b'{"name": "a' + b"\\" * 4 + b'", "x": {"data": "' + LONG.encode() + b'"}}'
    parsed = loads_json(body)
    assert parsed["name"] == "a" + "\\" * 2  # two escaped backslashes
    assert isinstance(parsed["x"]["data"], Base64Text)


@pytest.mark.parametrize(
    "body",
    [
        '{"x": {"data": "%s"}',  # unclosed object
        '{"x": {"data": "%s"}} trailing',
        '{"x": {"data": "%s"}, \\ }',  # a backslash outside strings
        '{"x": {"data": "%s',  # unterminated string
        '{"x": {"data": "%s"}, "y": NaN}',
    ],
)
def test_invalid_json_still_fails(body: str) -> None:
    raw = (body % LONG).encode()
    with pytest.raises(json.JSONDecodeError):
        orjson.loads(raw)
    with pytest.raises(json.JSONDecodeError):
        loads_json(raw)


def test_deep_nesting_beside_a_lifted_string_is_parsed() -> None:
    """orjson takes 1024 levels, more than Python's recursion limit."""
    deep = "[" * 1000 + "]" * 1000
    body = f'{{"x": {{"data": "{LONG}"}}, "y": {deep}}}'.encode()
    parsed = loads_json(body)
    assert str(parsed["x"]["data"]) == LONG
    depth, node = 0, parsed["y"]
    while node:
        depth, node = depth + 1, node[0]
    assert depth == 999  # the innermost array is empty


def test_a_marker_sent_by_a_client_stays_a_string() -> None:
    body = f'{{"x": {{"data": "{LONG}"}}, "y": {{"data": "\\u0000{"0" * 16}:0"}}}}'.encode()
    parsed = loads_json(body)
    assert isinstance(parsed["x"]["data"], Base64Text)
    assert parsed["y"]["data"] == "\x00" + "0" * 16 + ":0"


def test_lifting_from_the_start_of_a_larger_body_buffer() -> None:
    """As `read_body` hands it over: a view of the first bytes of a pooled buffer, whose stale
    bytes past the body are never read."""
    raw = f'{{"x": {{"data": "{LONG}"}}}}'.encode()
    stale = b' "data": "' + LONG.encode() + b'" \\ "'
    buffer = body_buffer(len(raw) + len(stale))
    buffer[:] = raw + stale
    parsed = loads_json(memoryview(buffer)[: len(raw)])
    assert str(parsed["x"]["data"]) == LONG
    assert len(parsed["x"]["data"]) == len(LONG)
    with pytest.raises(json.JSONDecodeError):  # unterminated within the view
        loads_json(memoryview(buffer)[: len(raw) - 3])


@pytest.mark.usefixtures("small_pieces")
def test_dumps_json_splices_the_base64_back() -> None:
    outputs = [Base64Output(RNG.bytes(n)) for n in (0, 5, 3000)]
    content = {"a": [1.5, None, "\x00x"], "b": {"data": outputs[0]}, "c": outputs[1]}
    grid = np.arange(6, dtype=np.float32).reshape(2, 3)
    content |= {"d": outputs[2], "grid": grid}
    pieces = dumps_json(content)
    assert outputs[2] in pieces  # encoded as it is sent, not before
    sent = list(body_pieces(pieces))
    assert not any(isinstance(piece, Base64Output) for piece in sent)
    assert len(sent) > 1000  # 3 bytes per piece: the 3000 bytes went out in many
    joined = b"".join(bytes(piece) for piece in sent)
    assert len(joined) == sum(len(piece) for piece in pieces)  # the Content-Length
    expected = {**content, "grid": grid.tolist()}
    assert json.loads(joined) == _plain(expected)


def test_dumps_json_refuses_unknown_types_without_default() -> None:
    with pytest.raises(TypeError):
        dumps_json({"x": object()})


# --- base64 in pieces ---------------------------------------------------------------------------


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 6, 7, 31, 32, 33])
def test_base64_in_pieces_equals_one_call(size: int) -> None:
    raw = RNG.bytes(size)
    output = Base64Output(raw)
    text = b"".join(output.pieces())
    assert text.decode() == str(output) == pybase64.b64encode_as_string(raw)
    assert len(output) == len(text)
    for source in (Base64Text(memoryview(text)), text.decode()):
        assert codec.b64decode(source).tobytes() == raw


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize(
    "text",
    [
        "QUJD" * 3 + "QQ==" + "QUJD",  # padding before the end
        "QUJD" * 3 + "QUJ",  # not a multiple of 4
        "QUJD" * 3 + "QU!D",  # outside the alphabet
        "QUJD" * 3 + "QUJ\u00e9",  # not ASCII
    ],
)
def test_invalid_base64_in_pieces_is_a_value_error(text: str) -> None:
    for source in (text, Base64Text(memoryview(text.encode()))):
        if isinstance(source, Base64Text) and not text.isascii():
            continue
        with pytest.raises(ValueError):
            codec.b64decode(source)
