"""Freed memory kept in the server process for the next request, on glibc.

Every large body passes through many short-lived buffers on its way in and out: uvicorn's
per-read chunks and their copies, the JSON around the tensors. glibc serves allocations over its
mmap threshold (128 KiB at first) with fresh pages from the kernel and gives them back on free,
so each request faults its buffers in again, page by page, which on the VMs we measure on costs
more than filling them (`python -m bench.transport --setting LOSS_SERVICE_RETAIN_FREED_BYTES=0`
compares). Raising the mmap threshold to its 32 MiB ceiling and the trim threshold to
`retain_freed_bytes` lets the heap keep that memory and hand it out again without faults. Other
C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from service._compat import fall_back

logger = logging.getLogger(__name__)

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest dynamic threshold on 64-bit systems


def retain_freed_memory(retain_freed_bytes: int) -> bool:
    """Ask glibc to keep up to `retain_freed_bytes` of freed heap for reuse (0: leave its
    defaults). Returns whether the setting took effect."""
    if retain_freed_bytes <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  # glibc's own: mallopt's parameters are glibc's
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError) as error:  # no C library found, or not glibc
        fall_back("keeping freed memory for reuse", f"no glibc mallopt ({error})")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, min(retain_freed_bytes, 2**31 - 1))
    )
    logger.debug("malloc: keep up to %d freed bytes: %s", retain_freed_bytes, applied)
    return applied
