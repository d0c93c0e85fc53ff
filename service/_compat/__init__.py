"""Every use of another library's private internals, in one place, each checked before use.

The fast transport leans on behaviour that the libraries underneath do not promise:

- `uvicorn_body_into` (the protocol itself in `_httptools_into`): uvicorn's `HttpToolsProtocol`
  and `RequestResponseCycle` attributes
  (`cycle.body`, `cycle.more_body`, `cycle.disconnected`, `cycle.message_event`,
  `cycle.response_started`, `parser`, `flow`, `scope`, `headers`, `loop`, and the parser
  callbacks and `send_400_response` it extends) and httptools' `set_dangerous_leniencies`, so
  that a large request body is read by the kernel straight into the app's buffer (which may
  grow as it fills), and so that the header limits and idle timeouts hold before the app runs.
  Stock behaviour: uvicorn's own `httptools` protocol (bodies arrive as uvicorn's messages and
  are copied into the buffer; the app checks the headers once they are in).
- `httpx_reads`: `httpx.HTTPTransport._pool`, given a connection pool whose sockets are read
  256 KiB at a time. Stock behaviour: httpx's default transport.
- `glibc_malloc`: glibc's `mallopt`, so that freed large buffers are kept for the next request.
  Stock behaviour: the C library's defaults.

Each module checks, before first use, that the internals are what it expects (by driving them,
where a look at attributes would not prove enough), and otherwise logs one warning line and
hands out the stock behaviour; `LOSS_SERVICE_LIBRARY_INTERNALS=false` asks for the stock
behaviour outright. The versions these were written against are pinned from above in
pyproject.toml; the tests run the service and the client both ways and compare the answers.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("service.compat")


def fall_back(what: str, reason: str) -> None:
    """The one warning line of a seam whose internals are not what it expects."""
    logger.warning("%s: %s; using the stock behaviour instead", what, reason)
