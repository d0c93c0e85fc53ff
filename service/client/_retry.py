"""Retries of requests that may safely be sent again: a run's batches (the batch id makes a
repeat count once), reads, closing a run.

A request is tried again after a connection error (refused, reset, dropped before the answer
was read: the server may or may not have done the work) or a 502, 503 or 504 answer (a proxy
without an upstream, the database down, no compute slot), after a wait that grows with each
attempt or that the answer's `Retry-After` asks for, a bounded number of times. Other errors
are answers about the request itself and come back at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import anyio
import httpx

from service.client._transfer import Answer, Body, async_exchange, exchange

RETRIED_STATUSES = frozenset({502, 503, 504})
# What a dropped or refused connection raises, and a server that stopped answering. Not the
# errors of a request that can never work (an unsupported URL, a protocol error of our own).
RETRIED_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError, httpx.TimeoutException)


@dataclass(frozen=True)
class Retry:
    """How many times and how patiently to send a request again.

    `attempts` is the number of tries in all (1: never again). The wait before the second try is
    `backoff_s`, doubled before each later one, each time a random 50-100 % of it (so that many
    workers refused at once do not come back at once); an answer with `Retry-After` waits at
    least what it asks. No wait exceeds `max_wait_s`.
    """

    attempts: int = 6
    backoff_s: float = 0.5
    max_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_wait_s < 0:
            raise ValueError("backoff_s and max_wait_s must not be negative")

    def wait_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after the failed try number `attempt` (from 1)."""
        backoff = min(self.max_wait_s, self.backoff_s * 2.0 ** (attempt - 1))
        wait = backoff * random.uniform(0.5, 1.0)
        asked = _seconds(retry_after)
        return wait if asked is None else min(self.max_wait_s, max(wait, asked))


DEFAULT_RETRY = Retry()


def exchange_retrying(
    retry: Retry,
    http: httpx.Client,
    method: str,
    path: str,
    body: Body | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """`exchange`, tried again as `retry` says; the last answer or error when tries run out."""
    attempt = 1
    while True:
        try:
            answer = exchange(http, method, path, body, headers)
        except RETRIED_ERRORS:
            if attempt >= retry.attempts:
                raise
            time.sleep(retry.wait_s(attempt))
        else:
            if not _again(answer, attempt, retry):
                return answer
            time.sleep(retry.wait_s(attempt, answer.response.headers.get("retry-after")))
        attempt += 1


async def async_exchange_retrying(
    retry: Retry,
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: Body | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """`exchange_retrying` for an `httpx.AsyncClient`."""
    attempt = 1
    while True:
        try:
            answer = await async_exchange(http, method, path, body, headers)
        except RETRIED_ERRORS:
            if attempt >= retry.attempts:
                raise
            await anyio.sleep(retry.wait_s(attempt))
        else:
            if not _again(answer, attempt, retry):
                return answer
            await anyio.sleep(retry.wait_s(attempt, answer.response.headers.get("retry-after")))
        attempt += 1


def _again(answer: Answer, attempt: int, retry: Retry) -> bool:
    return answer.response.status_code in RETRIED_STATUSES and attempt < retry.attempts


def _seconds(retry_after: str | None) -> float | None:
    """`Retry-After` in seconds: a number of seconds or an HTTP date (RFC 9110); None when
    absent or unreadable."""
    if retry_after is None:
        return None
    value = retry_after.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
