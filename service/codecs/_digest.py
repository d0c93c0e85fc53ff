"""The digest of a batch's tensors: what makes a batch id an idempotency key.

The service records it with each batch of a run, and a client that knows the tensors it sent
computes the same one (a resumed upload compares the two), so both sides call this function.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from numpy.typing import NDArray


def tensors_digest(*arrays: NDArray[Any]) -> str:
    """SHA-256 of each array's dtype, shape and little-endian bytes, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        host = np.ascontiguousarray(array)
        if host.dtype.byteorder == ">":
            host = host.astype(host.dtype.newbyteorder("<"))
        digest.update(f"{host.dtype.str}{list(host.shape)};".encode())
        # As bytes: a bfloat16 array (ml_dtypes) exports no buffer hashlib can read.
        digest.update(host.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()
