"""`LossClient` (sync) and `AsyncLossClient` (async): the same methods over one httpx client.

Both build their requests and read the answers with the same code (`_Requests`); they differ
only in how a request is sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from service import __version__
from service._compat import httpx_reads
from service.client._exceptions import ResponseError, error_from_response
from service.client._models import (
    EvaluateResult,
    Health,
    InferResult,
    LossInfo,
    LossResult,
    Readiness,
)
from service.client._tensors import encode, is_array, oip_input, oip_output
from service.client._transfer import Answer, Body, async_exchange, exchange
from service.client._types import Encoding
from service.codecs._json_body import dumps_json, loads_json

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 120.0  # the server's default request timeout
INFER_HEADER_LENGTH = "Inference-Header-Content-Length"


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
        items = [{"name": item} if isinstance(item, str) else self.fields(item) for item in losses]
        body = self.loss_body({"logits": logits, "labels": labels, **values})
        body["losses"] = items
        if calibration is not None:
            body["calibration"] = dict(calibration)
        return body

    def json_body(self, fields: Mapping[str, Any]) -> Body:
        """A JSON request body; base64 tensors are pieces of it of their own."""
        return Body(dumps_json(fields), "application/json")

    @staticmethod
    def infer_request(
        values: Mapping[str, Any], outputs: Sequence[str] | None, binary_output: bool
    ) -> tuple[Body, dict[str, str]]:
        """The body and headers of an OIP infer request with binary tensors: every array (or
        list) is an input, every other value a parameter."""
        inputs, chunks = [], []
        parameters: dict[str, Any] = {"binary_data_output": binary_output}
        for name, value in values.items():
            if is_array(value) or isinstance(value, list | tuple):
                entry, raw = oip_input(name, value)
                inputs.append(entry)
                chunks.append(raw)
            else:
                parameters[name] = value.item() if isinstance(value, np.generic) else value
        header: dict[str, Any] = {"inputs": inputs, "parameters": parameters}
        if outputs is not None:
            header["outputs"] = [
                {"name": name, "parameters": {"binary_data": binary_output}} for name in outputs
            ]
        json_part = json.dumps(header, separators=(",", ":")).encode()
        body = Body([json_part, *chunks], "application/octet-stream")
        return body, {INFER_HEADER_LENGTH: str(len(json_part))}

    @staticmethod
    def json(answer: Answer) -> Any:
        """The JSON of a successful answer; an APIError for an error answer."""
        if answer.response.status_code >= 400:
            raise error_from_response(answer.response)
        try:
            return loads_json(answer.body)
        except ValueError as error:
            raise ResponseError(f"the answer is not JSON: {error}") from None

    @staticmethod
    def infer_result(answer: Answer) -> InferResult:
        response = answer.response
        if response.status_code >= 400:
            raise error_from_response(response)
        content = memoryview(answer.body)
        length = response.headers.get(INFER_HEADER_LENGTH)
        split = int(length) if length is not None and length.isdigit() else len(content)
        try:
            header = json.loads(bytes(content[:split]))
            binary, offset = content[split:], 0
            outputs = {}
            for entry in header["outputs"]:
                outputs[str(entry["name"])], offset = oip_output(entry, binary, offset)
            return InferResult(
                model_name=str(header["model_name"]),
                model_version=header.get("model_version"),
                id=header.get("id"),
                outputs=outputs,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ResponseError(f"not an inference answer: {error!r}") from None

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
        return LossResult.from_json(_Requests.json(answer))

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
        answer = _Requests.json(exchange(self._http, "POST", "/v1/evaluate", content))
        return _evaluate_result(answer)

    def list_losses(self) -> list[LossInfo]:
        """`GET /v1/losses`: every loss with its inputs, options and reference."""
        answer = _Requests.json(exchange(self._http, "GET", "/v1/losses"))
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
        return _Requests.infer_result(exchange(self._http, "POST", path, content, headers))

    def healthz(self) -> Health:
        return Health(**_Requests.json(exchange(self._http, "GET", "/healthz")))

    def readyz(self) -> Readiness:
        return Readiness.from_json(_Requests.json(exchange(self._http, "GET", "/readyz")))

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
        return LossResult.from_json(_Requests.json(answer))

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
        answer = _Requests.json(await async_exchange(self._http, "POST", "/v1/evaluate", content))
        return _evaluate_result(answer)

    async def list_losses(self) -> list[LossInfo]:
        answer = _Requests.json(await async_exchange(self._http, "GET", "/v1/losses"))
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
        return _Requests.infer_result(answer)

    async def healthz(self) -> Health:
        return Health(**_Requests.json(await async_exchange(self._http, "GET", "/healthz")))

    async def readyz(self) -> Readiness:
        answer = await async_exchange(self._http, "GET", "/readyz")
        return Readiness.from_json(_Requests.json(answer))

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
