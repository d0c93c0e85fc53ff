"""`service.buffers.BufferPool`: reuse only when idle, within the slack, under the cap."""

from __future__ import annotations

from service.buffers import BufferPool
from service.codecs._json_body import body_buffer

MIB = 1 << 20


def _pool(max_bytes: int = 16 * MIB) -> BufferPool[bytearray]:
    return BufferPool(bytearray, max_bytes=max_bytes, slack=2.0)


def test_a_buffer_is_reused_only_once_no_view_of_it_is_left() -> None:
    pool = _pool()
    first = pool.take(MIB)
    view = memoryview(first)[:10]
    del first
    second = pool.take(MIB)
    assert second is not view.obj  # the view still refers to the first
    view.release()
    del view
    third = pool.take(MIB)
    assert len(pool._buffers) == 2
    assert third is pool._buffers[-1]  # the first again, now the most recently handed out
    del second, third
    assert pool.nbytes == 2 * MIB


def test_a_buffer_serves_sizes_up_to_the_slack() -> None:
    pool = _pool()
    kept = id(pool.take(3 * MIB))  # released at once
    assert id(pool.take(2 * MIB)) == kept  # 3 MiB <= 2 x 2 MiB
    assert id(pool.take(MIB)) != kept  # 3 MiB > 2 x 1 MiB: a buffer of its own
    assert id(pool.take(4 * MIB)) != kept  # too small


def test_the_pool_stays_under_its_cap() -> None:
    pool = _pool(max_bytes=3 * MIB)
    held = [pool.take(MIB) for _ in range(4)]
    assert pool.nbytes == 3 * MIB  # the fourth was handed out, not kept
    del held
    big = pool.take(2 * MIB)  # idle buffers are dropped to make room
    assert len(big) == 2 * MIB and pool.nbytes <= 3 * MIB


def test_mmap_body_buffers_are_pooled_by_their_views() -> None:
    pool = BufferPool(body_buffer, max_bytes=16 * MIB, slack=2.0)
    body = memoryview(pool.take(MIB))[: MIB - 5]
    first = id(body.obj)
    other = pool.take(MIB)  # the first is still viewed
    assert id(other) != first
    del body
    assert id(pool.take(MIB)) == first  # `other` is still held: the first is the idle one
    del other
