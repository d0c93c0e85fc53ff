"""The store's semantics, on SQLite and PostgreSQL alike: runs, batches, paging, JSON."""

from __future__ import annotations

import base64
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.db import MAX_BATCH_ID_LENGTH, BatchOutcome, RunStore
from service.errors import Conflict, InvalidInput, NotFound
from tests.runs.helpers import EMPTY_TOTALS, add, counting, digest, new_run, stored_batch_ids


def test_a_created_run_reads_back_as_created(store: RunStore) -> None:
    created = store.create_run(
        name="val-2024",
        metadata={"model": "resnet50", "split": "val"},
        spec={"n_bins": 15},
        totals=EMPTY_TOTALS,
    )
    assert created.status == "open"
    assert (created.n_batches, created.n_samples) == (0, 0)
    assert created.created_at.tzinfo is UTC
    assert created.updated_at == created.created_at
    assert abs(datetime.now(UTC) - created.created_at) < timedelta(minutes=5)
    assert store.get_run(created.id) == created


def test_a_reachable_database_passes_the_check(store: RunStore) -> None:
    store.check()


def test_an_unknown_run_is_not_found(store: RunStore) -> None:
    missing = uuid.uuid4()
    for call in (
        lambda: store.get_run(missing),
        lambda: store.close_run(missing),
        lambda: store.delete_run(missing),
        lambda: add(store, missing, "b"),
    ):
        with pytest.raises(NotFound):
            call()


EXACT: dict[str, Any] = {
    "sum": 0.1 + 0.2,  # 0.30000000000000004: shortest repr must survive
    "tiny": 1e-300,
    "subnormal": 5e-324,
    "huge": 1.7976931348623157e308,
    "negative_zero": -0.0,
    "int_past_float": 2**53 + 1,  # stays an int, not 9007199254740992.0
    "big_int": 2**70,
    "nested": [[0.1, [0.2, [0.7]]], [], [1, 2.5]],
    "text": 'ü ∑ "quoted" \\ \n',
    "null": None,
    "flag": True,
}


def _same_json(a: Any, b: Any) -> bool:
    """Equal, and of the same types, bit for bit for floats (-0.0 is not 0.0 here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex() or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_json_round_trips_exactly(store: RunStore) -> None:
    run = store.create_run(name=None, metadata={"k": "v"}, spec=EXACT, totals=EXACT)
    stored = store.get_run(run.id)
    assert _same_json(stored.spec, EXACT)
    assert _same_json(stored.totals, EXACT)
    folded = {**EXACT, "sum": EXACT["sum"] + 1e-16}
    store.add_batch(run.id, "b", digest=digest("b"), n_samples=1, fold=lambda _: folded)
    assert _same_json(store.get_run(run.id).totals, folded)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_json_without_a_number_for_it_is_refused(store: RunStore, bad: float) -> None:
    with pytest.raises(InvalidInput) as refused:
        store.create_run(name=None, metadata={}, spec={"x": [1.0, bad]}, totals=EMPTY_TOTALS)
    assert refused.value.field == ("spec",)
    run = new_run(store)
    with pytest.raises(InvalidInput):
        store.add_batch(run.id, "b", digest=digest("b"), n_samples=1, fold=lambda _: {"s": bad})
    assert store.get_run(run.id) == run
    assert add(store, run.id, "b")[0] is BatchOutcome.CREATED


def test_text_the_database_cannot_hold_is_refused(store: RunStore) -> None:
    with pytest.raises(InvalidInput) as refused:
        store.create_run(name="a\x00b", metadata={}, spec={}, totals=EMPTY_TOTALS)
    assert refused.value.field == ("name",)
    run = new_run(store)
    for batch_id in ("", "a\x00b", "x" * (MAX_BATCH_ID_LENGTH + 1)):
        with pytest.raises(InvalidInput) as refused:
            add(store, run.id, batch_id)
        assert refused.value.field == ("batch_id",)
    longest = "é" * MAX_BATCH_ID_LENGTH  # characters, not bytes
    assert add(store, run.id, longest)[0] is BatchOutcome.CREATED
    assert store.get_run(run.id).n_batches == 1


def test_a_batch_counts_once(store: RunStore, db_url: str) -> None:
    run = new_run(store)
    outcome, after = add(store, run.id, "b1")
    assert outcome is BatchOutcome.CREATED
    assert (after.n_batches, after.n_samples) == (1, 10)
    assert after.totals == {"count": 1, "ids": ["b1"]}
    assert after.updated_at >= run.updated_at
    assert store.get_run(run.id) == after

    def must_not_run(totals: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("a duplicate must not fold")

    again = store.add_batch(run.id, "b1", digest=digest(""), n_samples=10, fold=must_not_run)
    assert again == (BatchOutcome.DUPLICATE, after)
    assert stored_batch_ids(db_url, run.id) == ["b1"]


def test_a_batch_id_reused_for_other_bytes_is_a_conflict(store: RunStore) -> None:
    run = new_run(store)
    _, after = add(store, run.id, "b1", content="first")
    with pytest.raises(Conflict) as conflict:
        add(store, run.id, "b1", content="second")
    assert conflict.value.field == ("batch_id",)
    assert "b1" in conflict.value.detail
    assert store.get_run(run.id) == after


def test_a_counted_batch_reads_back_and_others_are_not_found(store: RunStore) -> None:
    run = new_run(store)
    _, after = add(store, run.id, "b1", content="first")
    batch = store.get_batch(run.id, "b1")
    assert (batch.run_id, batch.batch_id) == (run.id, "b1")
    assert (batch.digest, batch.n_samples) == (digest("first"), 10)
    assert batch.created_at == after.updated_at
    with pytest.raises(NotFound) as unknown_batch:
        store.get_batch(run.id, "b2")
    assert unknown_batch.value.field == ("batch_id",)
    with pytest.raises(NotFound) as unknown_run:
        store.get_batch(uuid.uuid4(), "b1")
    assert unknown_run.value.field == ()
    with pytest.raises(InvalidInput):
        store.get_batch(run.id, "")


def test_batch_ids_are_per_run(store: RunStore) -> None:
    first, second = new_run(store), new_run(store)
    assert add(store, first.id, "b1", content="x")[0] is BatchOutcome.CREATED
    assert add(store, second.id, "b1", content="y")[0] is BatchOutcome.CREATED


def test_a_closed_run_takes_no_new_batch(store: RunStore) -> None:
    run = new_run(store)
    add(store, run.id, "b1")
    closed = store.close_run(run.id)
    assert closed.status == "closed"
    assert closed.updated_at >= run.updated_at
    assert store.close_run(run.id) == closed  # idempotent: nothing changes, not even the time
    with pytest.raises(Conflict, match="run is closed"):
        add(store, run.id, "b2")
    with pytest.raises(Conflict):
        add(store, run.id, "b1", content="other bytes")
    # A replay of a counted batch answers what the first call did.
    assert add(store, run.id, "b1") == (BatchOutcome.DUPLICATE, closed)
    assert store.get_run(run.id) == closed


def test_delete_takes_the_batches_along(store: RunStore, db_url: str) -> None:
    run, other = new_run(store), new_run(store)
    for batch_id in ("b1", "b2"):
        add(store, run.id, batch_id)
        add(store, other.id, batch_id)
    store.delete_run(run.id)
    assert stored_batch_ids(db_url, run.id) == []
    assert stored_batch_ids(db_url, other.id) == ["b1", "b2"]
    with pytest.raises(NotFound):
        store.get_run(run.id)
    with pytest.raises(NotFound):
        store.delete_run(run.id)
    with pytest.raises(NotFound):
        add(store, run.id, "b3")


def test_a_failing_fold_leaves_nothing(store: RunStore, db_url: str) -> None:
    run = new_run(store)
    add(store, run.id, "b1")
    before = store.get_run(run.id)

    class FoldFailed(Exception):
        pass

    def failing(totals: dict[str, Any]) -> dict[str, Any]:
        totals["count"] = -1  # changes its argument, then fails: none of it may be stored
        raise FoldFailed

    with pytest.raises(FoldFailed):
        store.add_batch(run.id, "b2", digest=digest(""), n_samples=5, fold=failing)
    assert store.get_run(run.id) == before
    assert stored_batch_ids(db_url, run.id) == ["b1"]
    assert add(store, run.id, "b2")[0] is BatchOutcome.CREATED
    assert store.get_run(run.id).totals == {"count": 2, "ids": ["b1", "b2"]}


def test_a_fold_may_change_its_argument_and_return_it(store: RunStore) -> None:
    run = new_run(store)

    def in_place(totals: dict[str, Any]) -> dict[str, Any]:
        totals["count"] += 1
        totals["ids"].append("b1")
        return totals

    store.add_batch(run.id, "b1", digest=digest(""), n_samples=1, fold=in_place)
    assert store.get_run(run.id).totals == {"count": 1, "ids": ["b1"]}


def _created_ids(runs: list[Any]) -> list[uuid.UUID]:
    return [run.id for run in runs]


def test_runs_are_listed_newest_first_a_page_at_a_time(store: RunStore) -> None:
    made = [new_run(store, name=f"r{i}") for i in range(5)]
    newest_first = sorted(made, key=lambda run: (run.created_at, run.id), reverse=True)
    page, cursor = store.list_runs(limit=2, cursor=None)
    seen = list(page)
    assert len(page) == 2
    while cursor is not None:
        new_run(store, name="created while paging")  # newer: on no later page
        page, cursor = store.list_runs(limit=2, cursor=cursor)
        seen += page
    assert _created_ids(seen) == _created_ids(newest_first)
    assert store.list_runs(limit=5, cursor=None)[0][0].name == "created while paging"
    everything, last = store.list_runs(limit=100, cursor=None)
    assert last is None
    assert len(everything) == 5 + 2


def test_paging_is_stable_under_equal_timestamps(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    instant = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    monkeypatch.setattr("service.db.store._utcnow", lambda: instant)
    made = [new_run(store) for _ in range(7)]
    seen: list[Any] = []
    cursor = None
    for _ in range(10):
        page, cursor = store.list_runs(limit=3, cursor=cursor)
        seen += page
        if cursor is None:
            break
    assert sorted(_created_ids(seen), reverse=True) == _created_ids(seen)
    assert set(_created_ids(seen)) == set(_created_ids(made))
    assert len(seen) == len(made)


def test_an_exact_page_has_no_next_cursor(store: RunStore) -> None:
    new_run(store)
    new_run(store)
    page, cursor = store.list_runs(limit=2, cursor=None)
    assert (len(page), cursor) == (2, None)
    assert store.list_runs(limit=1, cursor=None)[1] is not None


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


GOOD_ID = uuid.UUID(int=7).hex


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor",
        "////",
        _b64("not a cursor"),
        _b64(f"1|2030-01-02T03:04:05|{GOOD_ID}"),  # a time without a zone
        _b64("1|2030-01-02T03:04:05+00:00|00"),  # not a UUID
        _b64(f"2|2030-01-02T03:04:05+00:00|{GOOD_ID}"),  # a version this store never wrote
        _b64(f"1|2030-01-02T03:04:05+00:00|{GOOD_ID}|more"),
    ],
)
def test_a_malformed_cursor_names_the_field(store: RunStore, cursor: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        store.list_runs(limit=10, cursor=cursor)
    assert refused.value.field == ("cursor",)


def test_a_well_formed_cursor_is_accepted(store: RunStore) -> None:
    run = new_run(store)
    far_future = _b64(f"1|9999-01-02T03:04:05.000001+00:00|{GOOD_ID}")
    assert store.list_runs(limit=2, cursor=far_future) == ([run], None)


def test_a_limit_below_one_is_refused(store: RunStore) -> None:
    with pytest.raises(InvalidInput) as refused:
        store.list_runs(limit=0, cursor=None)
    assert refused.value.field == ("limit",)


def test_the_fold_sees_the_stored_totals(store: RunStore) -> None:
    run = store.create_run(name=None, metadata={}, spec={}, totals={"count": 41, "ids": ["x"]})
    outcome, after = store.add_batch(
        run.id, "b", digest=digest("b"), n_samples=3, fold=counting("b")
    )
    assert outcome is BatchOutcome.CREATED
    assert after.totals == {"count": 42, "ids": ["x", "b"]}
