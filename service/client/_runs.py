"""A handle on one evaluation run: `client.create_run(...)` or `client.run(run_id)`.

A batch travels as the Open Inference Protocol's binary body (a JSON header, then the tensors'
raw bytes: no base64, no JSON numbers), whatever the client's `encoding`. Its `batch_id` is the
run's idempotency key: the caller's, or a UUID4 drawn once per `add_batch` call, so that every
retry of the call repeats it and the service counts the batch once, whichever try reached it.
Requests that may safely be repeated (batches, reads, closing) are retried as `Retry` says;
creating and deleting a run are not.
"""

from __future__ import annotations

import uuid
from typing import Literal
from urllib.parse import quote

import httpx

from service.client._exceptions import NotFoundError, ResponseError, error_from_response
from service.client._models import BatchReceipt, RunReport, StoredBatch
from service.client._retry import DEFAULT_RETRY, Retry, async_exchange_retrying, exchange_retrying
from service.client._tensors import as_array, oip_body
from service.client._transfer import Answer, Body, async_exchange, exchange, read_json
from service.client._types import ArrayLike
from service.codecs import tensors_digest

ImageFormat = Literal["png", "svg"]


def batch_digest(logits: ArrayLike, labels: ArrayLike) -> str:
    """The digest the service records for this batch when this client sends it (SHA-256 of the
    tensors' dtypes, shapes and bytes): equal to a `StoredBatch`'s, the batch counted."""
    return tensors_digest(as_array(logits, "logits"), as_array(labels, "labels"))


class _RunRequests:
    """The paths, bodies and answers of one run's routes, shared by `Run` and `AsyncRun`."""

    def __init__(self, run_id: str) -> None:
        self.path = f"/v1/runs/{quote(run_id, safe='')}"

    def batch_path(self, batch_id: str) -> str:
        return f"{self.path}/batches/{quote(batch_id, safe='')}"

    @staticmethod
    def batch(logits: ArrayLike, labels: ArrayLike) -> tuple[Body, dict[str, str]]:
        return oip_body({"logits": logits, "labels": labels}, {})

    @staticmethod
    def stored(answer: Answer) -> StoredBatch | None:
        """The batch, or None for a 404 naming the batch (an unknown run stays an error)."""
        if answer.response.status_code == 404:
            error = error_from_response(answer.response)
            if isinstance(error, NotFoundError) and error.fields == ["batch_id"]:
                return None
            raise error
        return StoredBatch.from_json(read_json(answer))

    @staticmethod
    def image(answer: Answer) -> bytes:
        if answer.response.status_code >= 400:
            raise error_from_response(answer.response)
        if not answer.response.headers.get("content-type", "").startswith("image/"):
            raise ResponseError("the reliability diagram did not come back as an image")
        return bytes(answer.body)


class Run:
    """One evaluation run, for a pipeline: add batches, read the report, close, delete.

    Each method is one request (retried as `retry` says where repeating it is safe); the handle
    keeps nothing but the run's id, so any number of processes may hold one on the same run.
    """

    def __init__(self, http: httpx.Client, run_id: str, *, retry: Retry = DEFAULT_RETRY) -> None:
        self.id = run_id
        self.retry = retry
        self._http = http
        self._requests = _RunRequests(run_id)

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    batch_digest = staticmethod(batch_digest)

    @property
    def page_url(self) -> str:
        """The run's page for people (`GET /runs/{id}`)."""
        return str(self._http.base_url.join(f"runs/{quote(self.id, safe='')}"))

    def add_batch(
        self, logits: ArrayLike, labels: ArrayLike, batch_id: str | None = None
    ) -> BatchReceipt:
        """`PUT /v1/runs/{id}/batches/{batch_id}`: count one batch, once. A `batch_id` already
        stored with the same tensors answers `duplicate=True` and changes nothing; with other
        tensors, or into a closed run, it raises `ConflictError`."""
        batch_id = batch_id if batch_id is not None else str(uuid.uuid4())
        body, headers = _RunRequests.batch(logits, labels)
        path = self._requests.batch_path(batch_id)
        answer = exchange_retrying(self.retry, self._http, "PUT", path, body, headers)
        return BatchReceipt.from_json(read_json(answer))

    def batch(self, batch_id: str) -> StoredBatch | None:
        """`GET /v1/runs/{id}/batches/{batch_id}`: the batch if the run counted it, else None."""
        return _RunRequests.stored(self._get(self._requests.batch_path(batch_id)))

    def report(self) -> RunReport:
        """`GET /v1/runs/{id}`: the losses and calibration over every batch so far."""
        return RunReport.from_json(read_json(self._get(self._requests.path)))

    def close(self) -> RunReport:
        """`POST /v1/runs/{id}/close`: later batches are refused; closing twice changes nothing."""
        path = f"{self._requests.path}/close"
        answer = exchange_retrying(self.retry, self._http, "POST", path)
        return RunReport.from_json(read_json(answer))

    def delete(self) -> None:
        """`DELETE /v1/runs/{id}`: the run and its batches."""
        answer = exchange(self._http, "DELETE", self._requests.path)
        if answer.response.status_code >= 400:
            raise error_from_response(answer.response)

    def reliability_diagram(self, format: ImageFormat = "png") -> bytes:
        """`GET /v1/runs/{id}/reliability-diagram`: PNG (600 x 700 px) or SVG bytes."""
        path = f"{self._requests.path}/reliability-diagram?format={quote(format)}"
        return _RunRequests.image(self._get(path))

    def _get(self, path: str) -> Answer:
        return exchange_retrying(self.retry, self._http, "GET", path)


class AsyncRun:
    """`Run` for an `AsyncLossClient`: the same methods, awaited."""

    def __init__(
        self, http: httpx.AsyncClient, run_id: str, *, retry: Retry = DEFAULT_RETRY
    ) -> None:
        self.id = run_id
        self.retry = retry
        self._http = http
        self._requests = _RunRequests(run_id)

    def __repr__(self) -> str:
        return f"AsyncRun({self.id!r})"

    batch_digest = staticmethod(batch_digest)

    @property
    def page_url(self) -> str:
        return str(self._http.base_url.join(f"runs/{quote(self.id, safe='')}"))

    async def add_batch(
        self, logits: ArrayLike, labels: ArrayLike, batch_id: str | None = None
    ) -> BatchReceipt:
        batch_id = batch_id if batch_id is not None else str(uuid.uuid4())
        body, headers = _RunRequests.batch(logits, labels)
        path = self._requests.batch_path(batch_id)
        answer = await async_exchange_retrying(self.retry, self._http, "PUT", path, body, headers)
        return BatchReceipt.from_json(read_json(answer))

    async def batch(self, batch_id: str) -> StoredBatch | None:
        return _RunRequests.stored(await self._get(self._requests.batch_path(batch_id)))

    async def report(self) -> RunReport:
        return RunReport.from_json(read_json(await self._get(self._requests.path)))

    async def close(self) -> RunReport:
        path = f"{self._requests.path}/close"
        answer = await async_exchange_retrying(self.retry, self._http, "POST", path)
        return RunReport.from_json(read_json(answer))

    async def delete(self) -> None:
        answer = await async_exchange(self._http, "DELETE", self._requests.path)
        if answer.response.status_code >= 400:
            raise error_from_response(answer.response)

    async def reliability_diagram(self, format: ImageFormat = "png") -> bytes:
        path = f"{self._requests.path}/reliability-diagram?format={quote(format)}"
        return _RunRequests.image(await self._get(path))

    async def _get(self, path: str) -> Answer:
        return await async_exchange_retrying(self.retry, self._http, "GET", path)
