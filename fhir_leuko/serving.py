"""How ``fhir-leuko serve`` runs uvicorn: limits on slow, idle and numerous clients.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but has no timeout on
reading a request: a client that sends its headers a byte at a time keeps its socket, and
2,000 of them kept 2,000. Here:

- the request line and headers must arrive within ``header_timeout_s`` of the connection
  opening or of the previous answer on it, else the connection is closed (the protocol
  classes below; uvicorn takes a protocol class as its ``http`` option);
- the body must arrive within ``body_timeout_s`` of the headers, else ``408`` (the app's
  :class:`fhir_leuko.app.Guard`, which already bounds the body's size);
- ``limit_concurrency``, when set: ``503`` beyond that many connections plus requests
  (uvicorn's count includes connections still sending headers, so it is off by default:
  1,500 slow-header connections made it refuse every other client until they were cut);
- an idle keep-alive connection closes after ``keep_alive_s`` (uvicorn).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fhir_leuko.config import ServiceSettings

#: h11's own default (16 KiB), stated: the largest request line plus headers it buffers.
MAX_HEADER_BYTES = 16 * 1024


class _HeaderDeadline:
    """Closes the connection unless a request's headers arrive within ``seconds``.

    Armed when the connection opens and when an answer completes; a request whose headers
    arrived since then (a new cycle, or one still being answered) keeps the connection.
    """

    def __init__(self, protocol: H11Protocol | HttpToolsProtocol, seconds: float) -> None:
        self._protocol = protocol
        self._seconds = seconds
        self._timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.cancel()
        if self._seconds > 0:
            armed = self._protocol.cycle
            self._timer = self._protocol.loop.call_later(self._seconds, self._expire, armed)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, armed: object) -> None:
        self._timer = None
        cycle = self._protocol.cycle
        idle = cycle is None or bool(getattr(cycle, "response_complete", True))
        transport = self._protocol.transport
        if cycle is armed and idle and not transport.is_closing():
            transport.close()


class _HeaderTimeout(asyncio.Protocol):
    """A deadline on each request's headers, for either of uvicorn's HTTP protocols."""

    header_timeout_s: ClassVar[float] = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = _HeaderDeadline(self, self.header_timeout_s)  # type: ignore[arg-type]
        self._deadline.arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._deadline.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        super().connection_lost(exc)


class H11WithHeaderTimeout(_HeaderTimeout, H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers."""


class HttpToolsWithHeaderTimeout(_HeaderTimeout, HttpToolsProtocol):
    """uvicorn's httptools protocol (uvicorn[standard], the faster one) with the deadline."""


#: The protocol ``serve`` uses (what uvicorn's "auto" picks when httptools is installed).
HttpProtocol = HttpToolsWithHeaderTimeout


def apply(svc: ServiceSettings) -> None:
    """Set this process's header deadline from the settings (each worker process calls it)."""
    H11WithHeaderTimeout.header_timeout_s = svc.header_timeout_s
    HttpToolsWithHeaderTimeout.header_timeout_s = svc.header_timeout_s


def uvicorn_options(svc: ServiceSettings) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` that bound what clients can hold open."""
    apply(svc)
    return {
        "http": HttpProtocol,
        "timeout_keep_alive": svc.keep_alive_s,
        "limit_concurrency": svc.limit_concurrency or None,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }
