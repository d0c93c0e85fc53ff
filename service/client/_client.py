"""`LossClient` (sync) and `AsyncLossClient` (async): the same methods over one httpx client.

Both build their requests and read the answers with the same code (`_Requests`); they differ
only in how a request is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from service import __version__
from service._compat import httpx_reads
from service.client._exceptions import ResponseError
from service.client._models import (
    EvaluateResult,
    Health,
    InferResult,
    LabelNoiseResult,
    LossInfo,
    LossResult,
    Readiness,
    RunReport,
)
from service.client._retry import DEFAULT_RETRY, Retry
from service.client._runs import AsyncRun, Run
from service.client._tensors import (
    encode,
    is_array,
    oip_body,
)
from service.client._transfer import Body, async_exchange, exchange, read_json
from service.client._types import Encoding
from service.codecs._json_body import dumps_json

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 120.0  # the server's default request timeout
LABEL_NOISE_PATH = "/v1/label-noise"


class _Requests:
    """Request building and answer reading, shared by the sync and the async client."""

    def __init__(self, *, encoding: Encoding) -> None:
        if encoding not in ("base64", "json"):
            raise ValueError(f"encoding must be 'base64' or 'json', got {encoding!r}")
        self.encoding: Encoding = encoding

    @staticmethod
    def headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"User-Agent": f"loss-service-client/{__version__}"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        headers.update(extra or {})
        return headers

    def fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A request body's fields: arrays encoded, NumPy scalars as Python numbers."""
        body = {}
        for name, value in values.items():
            if is_array(value):
                body[name] = encode(value, name, self.encoding)
            elif isinstance(value, np.generic):
                body[name] = value.item()
            else:
                body[name] = value
        return body

    def loss_body(self, values: Mapping[str, Any]) -> dict[str, Any]:
        body = self.fields(values)
        if self.encoding == "base64":
            body.setdefault("output_encoding", "base64")  # outputs exact, in their own dtype
        return body

    def evaluate_body(
        self,
        logits: Any,
        labels: Any,
        losses: Sequence[str | Mapping[str, Any]],
        calibration: Mapping[str, Any] | None,
        values: Mapping[str, Any],
    ) -> dict[str, Any]:
        body = self.loss_body({"logits": logits, "labels": labels, **values})
        body["losses"] = self.loss_items(losses)
        if calibration is not None:
            body["calibration"] = dict(calibration)
        return body

    def loss_items(self, losses: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Entries of `losses`: a name, or a mapping `{"name": ..., options...}`."""
        return [{"name": item} if isinstance(item, str) else self.fields(item) for item in losses]

    def run_body(
        self,
        losses: Sequence[str | Mapping[str, Any]],
        calibration: Mapping[str, Any] | None,
        fields: Mapping[str, Any],
    ) -> Body:
        """`POST /v1/runs`: the losses, the calibration options, and the other fields given."""
        body = {name: value for name, value in fields.items() if value is not None}
        body["losses"] = self.loss_items(losses)
        if calibration is not None:
            body["calibration"] = dict(calibration)
        return self.json_body(body)

    def json_body(self, fields: Mapping[str, Any]) -> Body:
        """A JSON request body; base64 tensors are pieces of it of their own."""
        return Body(dumps_json(fields), "application/json")

    @staticmethod
    def infer_request(
        values: Mapping[str, Any], outputs: Sequence[str] | None, binary_output: bool
    ) -> tuple[Body, dict[str, str]]:
        """The body and headers of an OIP infer request with binary tensors: every array (or
        list) is an input, every other value a parameter."""
        arrays = {}
        parameters: dict[str, Any] = {"binary_data_output": binary_output}
        for name, value in values.items():
            if is_array(value) or isinstance(value, list | tuple):
                arrays[name] = value
            else:
                parameters[name] = value.item() if isinstance(value, np.generic) else value
        header: dict[str, Any] = {"parameters": parameters}
        if outputs is not None:
            header["outputs"] = [
                {"name": name, "parameters": {"binary_data": binary_output}} for name in outputs
            ]
        return oip_body(arrays, header)

    @staticmethod
    def loss_path(name: str) -> str:
        return f"/v1/losses/{quote(name, safe='')}"

    @staticmethod
    def infer_path(name: str) -> str:
        return f"/v2/models/{quote(name, safe='')}/infer"


class LossClient:
    """A synchronous client: `LossClient("http://host:8000").loss("cross-entropy", logits=x,
    labels=y)`.

    Arrays (NumPy, or anything with `__array__`) travel as base64 by default (`encoding="json"`
    sends nested lists); results come back as NumPy arrays. `api_key` is sent as a Bearer token.
    Pass `http_client` to use an httpx client of your own (it is not closed by `close()`), or
    `transport` for a custom httpx transport.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        encoding: Encoding = "base64",
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._requests = _Requests(encoding=encoding)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            base_url=base_url,
            headers=_Requests.headers(api_key, headers),
            timeout=timeout,
            transport=transport or httpx_reads.transport(),
        )
        if http_client is not None:
            http_client.headers.update(_Requests.headers(api_key, headers))

    def loss(self, name: str, /, **inputs_and_options: Any) -> LossResult:
        """`POST /v1/losses/{name}`: inputs (`logits=`, `labels=`, ...) and options
        (`reduction=`, `return_grad=`, `label_smoothing=`, ...) as keyword arguments."""
        body = self._requests.loss_body(inputs_and_options)
        content = self._requests.json_body(body)
        answer = exchange(self._http, "POST", _Requests.loss_path(name), content)
        return LossResult.from_json(read_json(answer))

    def evaluate(
        self,
        logits: Any,
        labels: Any,
        losses: Sequence[str | Mapping[str, Any]],
        *,
        calibration: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> EvaluateResult:
        """`POST /v1/evaluate`: several losses from one upload. Each entry of `losses` is a
        name or a mapping `{"name": ..., options...}`."""
        body = self._requests.evaluate_body(logits, labels, losses, calibration, options)
        content = self._requests.json_body(body)
        answer = read_json(exchange(self._http, "POST", "/v1/evaluate", content))
        return _evaluate_result(answer)

    def label_noise(self, labels: Any, **scores_and_options: Any) -> LabelNoiseResult:
        """`POST /v1/label-noise`: `probs=` (out-of-sample) or `logits=`, and options
        (`filter_by=`, `rank_by=`, `calibrate=`, `max_issues=`) as keyword arguments."""
        content = self._requests.json_body(
            self._requests.loss_body({"labels": labels, **scores_and_options})
        )
        answer = exchange(self._http, "POST", LABEL_NOISE_PATH, content)
        return LabelNoiseResult.from_json(read_json(answer))

    def list_losses(self) -> list[LossInfo]:
        """`GET /v1/losses`: every loss with its inputs, options and reference."""
        answer = read_json(exchange(self._http, "GET", "/v1/losses"))
        return [LossInfo.from_json(item) for item in answer["losses"]]

    def infer(
        self,
        name: str,
        /,
        *,
        outputs: Sequence[str] | None = None,
        binary_output: bool = True,
        **inputs_and_options: Any,
    ) -> InferResult:
        """`POST /v2/models/{name}/infer` with the Open Inference Protocol's binary tensors:
        no base64 and no JSON numbers, the cheapest way to send large arrays. Arrays and lists
        are inputs, other values parameters (`reduction="none"`, `return_grad=True`)."""
        content, headers = _Requests.infer_request(inputs_and_options, outputs, binary_output)
        path = _Requests.infer_path(name)
        return InferResult.from_answer(exchange(self._http, "POST", path, content, headers))

    def create_run(
        self,
        losses: Sequence[str | Mapping[str, Any]] = (),
        *,
        calibration: Mapping[str, Any] | None = None,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        compute_dtype: str | None = None,
        retry: Retry = DEFAULT_RETRY,
    ) -> Run:
        """`POST /v1/runs`: a new evaluation run of `losses` (as in `evaluate`) and `calibration`
        options, and a handle on it. Not retried: every POST creates a run."""
        fields = {"name": name, "metadata": metadata, "compute_dtype": compute_dtype}
        content = self._requests.run_body(losses, calibration, fields)
        answer = read_json(exchange(self._http, "POST", "/v1/runs", content))
        return Run(self._http, RunReport.from_json(answer).id, retry=retry)

    def run(self, run_id: str, *, retry: Retry = DEFAULT_RETRY) -> Run:
        """A handle on the existing run `run_id` (this sends no request)."""
        return Run(self._http, run_id, retry=retry)

    def healthz(self) -> Health:
        return Health(**read_json(exchange(self._http, "GET", "/healthz")))

    def readyz(self) -> Readiness:
        return Readiness.from_json(read_json(exchange(self._http, "GET", "/readyz")))

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> LossClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncLossClient:
    """The asynchronous twin of `LossClient`: the same methods, awaited."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        encoding: Encoding = "base64",
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._requests = _Requests(encoding=encoding)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            base_url=base_url,
            headers=_Requests.headers(api_key, headers),
            timeout=timeout,
            transport=transport or httpx_reads.async_transport(),
        )
        if http_client is not None:
            http_client.headers.update(_Requests.headers(api_key, headers))

    async def loss(self, name: str, /, **inputs_and_options: Any) -> LossResult:
        body = self._requests.loss_body(inputs_and_options)
        content = self._requests.json_body(body)
        answer = await async_exchange(self._http, "POST", _Requests.loss_path(name), content)
        return LossResult.from_json(read_json(answer))

    async def evaluate(
        self,
        logits: Any,
        labels: Any,
        losses: Sequence[str | Mapping[str, Any]],
        *,
        calibration: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> EvaluateResult:
        body = self._requests.evaluate_body(logits, labels, losses, calibration, options)
        content = self._requests.json_body(body)
        answer = read_json(await async_exchange(self._http, "POST", "/v1/evaluate", content))
        return _evaluate_result(answer)

    async def label_noise(self, labels: Any, **scores_and_options: Any) -> LabelNoiseResult:
        content = self._requests.json_body(
            self._requests.loss_body({"labels": labels, **scores_and_options})
        )
        answer = await async_exchange(self._http, "POST", LABEL_NOISE_PATH, content)
        return LabelNoiseResult.from_json(read_json(answer))

    async def list_losses(self) -> list[LossInfo]:
        answer = read_json(await async_exchange(self._http, "GET", "/v1/losses"))
        return [LossInfo.from_json(item) for item in answer["losses"]]

    async def infer(
        self,
        name: str,
        /,
        *,
        outputs: Sequence[str] | None = None,
        binary_output: bool = True,
        **inputs_and_options: Any,
    ) -> InferResult:
        content, headers = _Requests.infer_request(inputs_and_options, outputs, binary_output)
        path = _Requests.infer_path(name)
        answer = await async_exchange(self._http, "POST", path, content, headers)
        return InferResult.from_answer(answer)

    async def create_run(
        self,
        losses: Sequence[str | Mapping[str, Any]] = (),
        *,
        calibration: Mapping[str, Any] | None = None,
        name: str | None = None,
        metadata: Mapping[str, str] | None = None,
        compute_dtype: str | None = None,
        retry: Retry = DEFAULT_RETRY,
    ) -> AsyncRun:
        fields = {"name": name, "metadata": metadata, "compute_dtype": compute_dtype}
        content = self._requests.run_body(losses, calibration, fields)
        answer = read_json(await async_exchange(self._http, "POST", "/v1/runs", content))
        return AsyncRun(self._http, RunReport.from_json(answer).id, retry=retry)

    def run(self, run_id: str, *, retry: Retry = DEFAULT_RETRY) -> AsyncRun:
        return AsyncRun(self._http, run_id, retry=retry)

    async def healthz(self) -> Health:
        return Health(**read_json(await async_exchange(self._http, "GET", "/healthz")))

    async def readyz(self) -> Readiness:
        answer = await async_exchange(self._http, "GET", "/readyz")
        return Readiness.from_json(read_json(answer))

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncLossClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def _evaluate_result(answer: Any) -> EvaluateResult:
    try:
        return EvaluateResult(
            losses=[LossResult.from_json(item) for item in answer["losses"]],
            calibration=answer.get("calibration"),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise ResponseError(f"not an evaluate response: {error!r}") from None
