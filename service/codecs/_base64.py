"""Base64 of large tensors, encoded and decoded in pieces, with no large fresh allocation.

A 2048 x 32000 float32 gradient is 262 MB of bytes and 350 MB of base64. Encoding or decoding
it in one call of the SIMD codec (pybase64) returns a new `bytes` of that size, which glibc maps
fresh from the kernel: each of its 4 KiB pages then faults on first touch, which costs more
than the codec itself on the machines we measure on. Here the text and the bytes live in NumPy
buffers (NumPy asks for transparent huge pages on large ones, 512x fewer faults), and the codec
runs on pieces of `PIECE_BYTES` whose results malloc recycles.

Both come from `BUFFERS`, which keeps them for the next request once nothing refers to them
(`service.buffers`): the text of a gradient is the same size every time a client sends the same
shape.

`Base64Text` is base64 text that stays in such a buffer: an encoded output tensor, or the
`data` of an encoded input tensor still inside the request body (`service.codecs.loads_json`).
The response writer sends its bytes as they are (`service.api.routing`); `str()` makes it a
Python string for everything else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pybase64
from numpy.typing import NDArray

from service.buffers import ArrayPool

# Multiples of 3 bytes (4 characters): no piece but the last has padding.
PIECE_BYTES = 3 << 20
PIECE_CHARS = PIECE_BYTES // 3 * 4
# Texts and decoded bytes of at least 1 MiB; up to 512 MiB of them kept.
BUFFERS = ArrayPool(min_bytes=1 << 20, max_bytes=1 << 29)
_BYTE = np.dtype(np.uint8)


class Base64Text:
    """ASCII base64 text held in a buffer (`view`: one byte per character)."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view.cast("B")

    def __len__(self) -> int:
        return len(self.view)

    def __str__(self) -> str:
        return str(self.view, "ascii")

    def __repr__(self) -> str:
        return f"Base64Text({len(self)} characters)"


def b64encode(raw: memoryview | bytes) -> Base64Text:
    """Standard base64 of `raw` (padded), in a NumPy buffer."""
    raw = memoryview(raw).cast("B")
    text = BUFFERS.empty((-(-len(raw) // 3) * 4,), _BYTE)
    written = 0
    for start in range(0, len(raw), PIECE_BYTES):
        piece = pybase64.b64encode(raw[start : start + PIECE_BYTES])
        text[written : written + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        written += len(piece)
    return Base64Text(text.data)


def b64decode(text: str | Base64Text) -> NDArray[np.uint8]:
    """The bytes that strict, padded standard base64 `text` holds, as a uint8 array.

    ValueError (binascii.Error among them) for anything that is not: characters outside the
    alphabet, a length that is not a multiple of 4, padding anywhere but at the end.
    """
    source: Any = text.view if isinstance(text, Base64Text) else text
    if len(source) <= PIECE_CHARS:
        return np.frombuffer(pybase64.b64decode(source, validate=True), dtype=np.uint8)
    if len(source) % 4:
        raise ValueError(f"{len(source)} characters is not a multiple of 4")
    padding = 0
    if source[-1] in ("=", 61):  # a str gives characters, a buffer gives byte values
        padding = 2 if source[-2] in ("=", 61) else 1
    raw = BUFFERS.empty((len(source) // 4 * 3 - padding,), _BYTE)
    written = 0
    for start in range(0, len(source), PIECE_CHARS):
        piece = pybase64.b64decode(source[start : start + PIECE_CHARS], validate=True)
        if len(piece) != min(PIECE_BYTES, len(raw) - written):
            # "=" ends the data: the codec accepts it at the end of any piece.
            raise ValueError("padding before the end of the data")
        raw[written : written + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        written += len(piece)
    return raw
