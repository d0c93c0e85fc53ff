"""JSON bodies parsed and written with orjson, their long base64 strings never copied.

An encoded tensor's `data` is most of a large JSON body: 44 MB of base64 for an 8192 x 1000
float32 tensor. orjson parses it at about 0.5 GB/s into a new 44 MB Python string, which the
base64 codec then has to turn back into ASCII bytes; together that is ~10x the cost of the
decoding itself. `loads_json` instead finds every string of at least `LIFT_MIN_CHARS` that is the
value of a `"data"` key, parses the body with those strings replaced by short markers, and puts
a `Base64Text` viewing the original characters where each marker landed. `decode_tensor` decodes
it straight from the body. Only strings without a backslash are lifted (escapes are orjson's to
read), so the characters in the body are the string's own, and strict base64 decoding accepts
them exactly when the plain parse would have given a valid base64 string (the alphabet is ASCII
letters, digits, "+", "/" and "="): both parses give the same tensor, or both a 422.

`dumps_json` is the way out: a `Base64Output` in the content is written as a marker, and the
JSON comes back as pieces with the base64 between them, encoded as it is sent
(`body_pieces`: `service.api.routing.PiecesResponse`, `service.client`).

Finding strings needs no parser: outside strings, a JSON text has no quotes, so quotes pair up
in order, a closing one being the next quote not preceded by an odd run of backslashes. A body
that is not JSON still fails in orjson: every byte outside the lifted strings is parsed as sent.
"""

from __future__ import annotations

import mmap
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from service.buffers import BufferPool
from service.codecs._base64 import Base64Output, Base64Text

LIFT_MIN_CHARS = 1 << 16
# Past this many strings the scan stops and orjson parses the whole body (a body of many short
# strings is not a tensor payload; its scan would cost more than it saves). Escaped quotes inside
# a string count too: each is a step of the scan in Python.
MAX_STRINGS_SCANNED = 4096
_QUOTE, _BACKSLASH = 0x22, 0x5C
_DATA_KEY = b"data"
_WHITESPACE = b" \t\r\n"
_HUGE_PAGE = 1 << 21
# Bodies from this size on are read into a `body_view` (smaller ones: plain bytes).
LARGE_BODY_BYTES = 1 << 20

# bytes, or a memoryview of the first bytes of an mmap (`body_buffer`) or of bytes
JsonBody = bytes | memoryview


def body_buffer(size: int) -> mmap.mmap:
    """A zeroed buffer of `size` bytes for a large body, cheap to fault in: private anonymous
    memory advised for transparent huge pages (2 MiB pages, 512x fewer faults than glibc's
    fresh 4 KiB ones; a shared mapping would be tmpfs pages, slower still). It supports the
    buffer protocol and `find`, which `loads_json` scans a body with."""
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux
        buffer.madvise(mmap.MADV_HUGEPAGE)
    return buffer


def _huge_pages(size: int) -> int:
    return -(-size // _HUGE_PAGE) * _HUGE_PAGE


def _whole_huge_pages(size: int) -> mmap.mmap:
    # so that a slightly longer body fits the same buffer next time
    return body_buffer(_huge_pages(size))


# Up to 512 MiB of body buffers kept; a body takes one of its size to twice its size.
BODY_BUFFERS = BufferPool(_whole_huge_pages, max_bytes=1 << 29, slack=2.0)


def body_view(size: int) -> memoryview:
    """`size` writable bytes for a large body: the start of a `BODY_BUFFERS` buffer, which
    `loads_json` can scan, and which is reused once the last view of it is gone."""
    return memoryview(BODY_BUFFERS.take(size))[:size]


# A body that arrives into a new buffer starts in one of this size and doubles as it fills.
FIRST_BODY_BYTES = 4 << 20


class GrowingBody:
    """The buffer of a large body of `size` bytes that is still arriving, sized by what has
    arrived rather than by the `size` a client declared: an idle `BODY_BUFFERS` buffer that
    holds the whole body (memory the process has already), else a new one of at most
    `FIRST_BODY_BYTES` that `grow` doubles as it fills. A client that declares 500 MB and sends
    nothing takes 4 MiB of address space, not 500 MB.

    Growing resizes the mmap in place (`mremap`: its pages move, nothing is copied), which the
    kernel allows only once every view of it is released; failing that it copies.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        pooled = BODY_BUFFERS.reuse(size)
        self._buffer = (
            pooled if pooled is not None else BODY_BUFFERS.take(min(size, FIRST_BODY_BYTES))
        )

    def view(self) -> memoryview:
        """The part of the buffer the body may fill: all of the body, or the room there is."""
        return memoryview(self._buffer)[: min(len(self._buffer), self.size)]

    def grow(self, filled: int) -> memoryview:
        """`view()` of a buffer twice as large (at most the body's size), the first `filled`
        bytes kept. Release every view taken before."""
        target = min(_huge_pages(self.size), 2 * len(self._buffer))
        try:
            self._buffer.resize(target)
        except (BufferError, OSError, SystemError, ValueError):  # a view held; no mremap
            bigger = BODY_BUFFERS.take(target)
            with memoryview(bigger) as into, memoryview(self._buffer) as kept:
                into[:filled] = kept[:filled]
            self._buffer = bigger
        return self.view()


def loads_json(body: JsonBody) -> Any:
    """`orjson.loads(body)`, with each long `"data"` string a `Base64Text` of its characters.

    Raises orjson's `JSONDecodeError` (a `json.JSONDecodeError`) for a body that is not JSON.
    """
    spans = _long_data_strings(*_searchable(body))
    if not spans:
        return orjson.loads(memoryview(body))
    nonce = secrets.token_hex(8)  # a marker a client cannot send on purpose
    markers: dict[str, Base64Text] = {}
    pieces: list[bytes | memoryview] = []
    position = 0
    view = memoryview(body)
    for index, (start, end) in enumerate(spans):
        marker = f"{nonce}:{index}"
        markers["\x00" + marker] = Base64Text(view[start:end])
        pieces += [view[position:start], b"\\u0000", marker.encode()]
        position = end
    pieces.append(view[position:])
    parsed = orjson.loads(b"".join(pieces))
    _put_back(parsed, markers)
    return parsed


# A piece of a body: bytes as they are, or base64 to be encoded as it is sent.
BodyPiece = bytes | memoryview | Base64Output


def dumps_json(content: Any, default: Callable[[Any], Any] | None = None) -> list[BodyPiece]:
    """`orjson.dumps(content)` (NumPy arrays natively, `default` for other types) as pieces:
    each `Base64Output` in `content` is a piece of its own, encoded as it is sent
    (`body_pieces`)."""
    texts: list[Base64Output] = []
    nonce = ""

    def markers(value: object) -> object:
        nonlocal nonce
        if isinstance(value, Base64Output):
            # drawn only when needed: no string of the content is a marker by chance
            nonce = nonce or secrets.token_hex(8)
            texts.append(value)
            return f"\x00{nonce}:{len(texts) - 1}"
        if default is None:
            raise TypeError(f"{type(value).__name__} is not JSON serialisable")
        return default(value)

    rendered = orjson.dumps(content, default=markers, option=orjson.OPT_SERIALIZE_NUMPY)
    if not texts:
        return [rendered]
    pieces: list[BodyPiece] = []
    view, position = memoryview(rendered), 0
    for index, text in enumerate(texts):
        marker = f"\\u0000{nonce}:{index}".encode()  # as orjson escapes the NUL
        found = rendered.index(marker, position)
        pieces += [view[position:found], text]
        position = found + len(marker)
    pieces.append(view[position:])
    return pieces


def body_pieces(pieces: Iterable[BodyPiece]) -> Iterator[bytes | memoryview]:
    """The bytes of `pieces` in order, each `Base64Output` encoded a piece at a time."""
    for piece in pieces:
        if isinstance(piece, Base64Output):
            yield from piece.pieces()
        elif len(piece):
            yield piece


def _searchable(body: JsonBody) -> tuple[bytes | mmap.mmap, int]:
    """What `body` is a view of, which has `find`, and the body's length in it."""
    if isinstance(body, memoryview):
        source = body.obj
        if isinstance(source, bytes | mmap.mmap):
            return source, len(body)
        return bytes(body), len(body)
    return body, len(body)


def _long_data_strings(text: bytes | mmap.mmap, length: int) -> list[tuple[int, int]]:
    """(start, end) of the characters of each long string that is the value of a "data" key,
    in the first `length` bytes of `text`."""
    spans: list[tuple[int, int]] = []
    previous: tuple[int, int] | None = None  # the string before, which may be the key
    position = 0
    steps = 0  # quotes looked at, escaped ones included
    while steps < MAX_STRINGS_SCANNED:
        start = text.find(b'"', position, length) + 1
        if start == 0:
            return spans
        end, steps = _closing_quote(text, start, length, steps + 1)
        if end == _GAVE_UP:
            break
        if end < 0:
            return spans  # unterminated: orjson says so
        if (
            end - start >= LIFT_MIN_CHARS
            and _is_data_value(text, previous, start - 1)
            and text.find(b"\\", start, end) < 0  # an escape is not base64: orjson reads it
        ):
            spans.append((start, end))
        previous, position = (start, end), end + 1
    return []


_GAVE_UP = -2


def _closing_quote(text: bytes | mmap.mmap, start: int, length: int, steps: int) -> tuple[int, int]:
    """The index of the quote that closes the string whose characters begin at `start` (-1: it
    is not closed; `_GAVE_UP`: `MAX_STRINGS_SCANNED` steps were taken), and the steps taken.

    A quote preceded by an odd run of backslashes is escaped. The run is measured in C
    (`rstrip`) over the bytes since the quote before, so a string of 48 MB of backslashes costs
    one pass over them, not a Python step per byte; each escaped quote is one step.
    """
    after = start  # a run of backslashes cannot reach back past the quote before
    end = text.find(b'"', start, length)
    while end >= 0 and text[end - 1] == _BACKSLASH:
        piece = text[after:end]
        if (len(piece) - len(piece.rstrip(b"\\"))) % 2 == 0:
            break  # an even run: escaped backslashes, then the closing quote
        if steps >= MAX_STRINGS_SCANNED:
            return _GAVE_UP, steps
        steps += 1
        after = end + 1
        end = text.find(b'"', after, length)
    return end, steps


def _is_data_value(text: bytes | mmap.mmap, key: tuple[int, int] | None, quote: int) -> bool:
    """Whether the string opening at `quote` follows the key string `key` and a colon."""
    if key is None or text[key[0] : key[1]] != _DATA_KEY:
        return False
    return text[key[1] + 1 : quote].strip(_WHITESPACE) == b":"


def _put_back(root: Any, markers: dict[str, Base64Text]) -> None:
    """Replace marker strings under "data" keys by their text. Encoded tensors sit in objects
    and in arrays of objects: arrays of numbers (a JSON-form tensor) are not walked. A stack,
    not recursion: the body may nest as deep as orjson allows (1024), past Python's limit."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and type(value) is str and value in markers:
                    node[key] = markers[value]
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list) and node and isinstance(node[0], dict | list):
            stack.extend(node)
