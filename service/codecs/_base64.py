"""Base64 of large tensors, encoded and decoded in pieces, with no large fresh allocation.

A 2048 x 32000 float32 gradient is 262 MB of bytes and 350 MB of base64. Encoding or decoding
it in one call of the SIMD codec (pybase64) returns a new `bytes` of that size, which glibc maps
fresh from the kernel: each of its 4 KiB pages then faults on first touch, which costs more
than the codec itself on the machines we measure on. Here the codec runs on pieces of
`PIECE_BYTES` (`DECODE_PIECE_BYTES` decoding), whose results malloc recycles:

- `Base64Output` is bytes to be written as base64: nothing is encoded until the body is sent,
  a piece at a time (`service.api.routing.PiecesResponse`, `service.client`), so the encoding
  of one piece overlaps the sending of the last and no text of the whole tensor ever exists;
- `Base64Text` is base64 text that stays where it arrived: the `data` of an encoded input
  tensor inside the request body (`service.codecs.loads_json`);
- `b64decode` writes the bytes into a NumPy buffer from `BUFFERS`, which keeps it for the next
  request once nothing refers to it (`service.buffers`).

`str()` of either makes a Python string, for everything that is not a large body.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pybase64
from numpy.typing import NDArray

from service.buffers import ArrayPool

# Multiples of 3 bytes (4 characters): no piece but the last has padding. Encoded pieces are
# sent as they are made; decoded ones are copied into the output at once, so they stay small
# enough to be copied from L2 (192 KiB: 33 MB decoded in ~4.8 ms instead of ~5.8 ms).
PIECE_BYTES = 3 << 20
DECODE_PIECE_BYTES = 3 << 16
DECODE_PIECE_CHARS = DECODE_PIECE_BYTES // 3 * 4
# Decoded bytes of at least 1 MiB; up to 512 MiB of them kept.
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


class Base64Output:
    """Bytes to be written as standard (padded) base64 text, a piece at a time."""

    __slots__ = ("raw",)

    def __init__(self, raw: memoryview | bytes) -> None:
        self.raw = memoryview(raw).cast("B")

    def __len__(self) -> int:
        return -(-len(self.raw) // 3) * 4

    def pieces(self) -> Iterator[bytes]:
        for start in range(0, len(self.raw), PIECE_BYTES):
            yield pybase64.b64encode(self.raw[start : start + PIECE_BYTES])

    def __str__(self) -> str:
        return b"".join(self.pieces()).decode("ascii")

    def __repr__(self) -> str:
        return f"Base64Output({len(self.raw)} bytes)"


def b64decode(text: str | Base64Text) -> NDArray[np.uint8]:
    """The bytes that strict, padded standard base64 `text` holds, as a uint8 array.

    ValueError (binascii.Error among them) for anything that is not: characters outside the
    alphabet, a length that is not a multiple of 4, padding anywhere but at the end.
    """
    source: Any = text.view if isinstance(text, Base64Text) else text
    if len(source) <= DECODE_PIECE_CHARS:
        return np.frombuffer(pybase64.b64decode(source, validate=True), dtype=np.uint8)
    if len(source) % 4:
        raise ValueError(f"{len(source)} characters is not a multiple of 4")
    padding = 0
    if source[-1] in ("=", 61):  # a str gives characters, a buffer gives byte values
        padding = 2 if source[-2] in ("=", 61) else 1
    raw = BUFFERS.empty((len(source) // 4 * 3 - padding,), _BYTE)
    written = 0
    for start in range(0, len(source), DECODE_PIECE_CHARS):
        piece = pybase64.b64decode(source[start : start + DECODE_PIECE_CHARS], validate=True)
        if len(piece) != min(DECODE_PIECE_BYTES, len(raw) - written):
            # "=" ends the data: the codec accepts it at the end of any piece.
            raise ValueError("padding before the end of the data")
        raw[written : written + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        written += len(piece)
    return raw
