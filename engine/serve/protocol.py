"""uvicorn's h11 protocol with a header timeout: a client that opens a connection (or keeps one alive) and
then sends its request headers too slowly is disconnected after `header_timeout_s`, so slow clients cannot
hold connections open indefinitely. uvicorn's own keep-alive timeout covers idle connections between
requests; this covers the time from connection (or the end of the last response) to complete headers."""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeaderTimeoutH11(H11Protocol):
    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._armed_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        self._header_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        if getattr(self, "_header_timer", None) is not None and self.cycle is not self._armed_cycle:
            self._cancel_header_timer()  # a new request's headers are complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.info("closing a connection from %s: no complete request headers within %.0f s",
                     self.client, self.header_timeout_s)
            self.transport.close()


def protocol_with_timeout(header_timeout_s: float) -> type[HeaderTimeoutH11]:
    """The protocol class with its header timeout set (uvicorn takes a class, not an instance)."""
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout_s": float(header_timeout_s)})
