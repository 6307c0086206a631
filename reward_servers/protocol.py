"""uvicorn's h11 protocol with a read timeout: a request must arrive whole within ``read_timeout`` seconds.

uvicorn closes idle keep-alive connections, but a client that sends half a request line, half
the headers or half the body keeps its connection (and its buffers) forever. This protocol arms
a timer when a connection opens and after each response; the timer is stopped once a request has
been received whole (the app is then working on it). When it fires, the connection is closed
and one line is logged; a request handler still reading that body sees a disconnect.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("mrgrpo.serve")

#: scope key set on a request whose connection was closed by the read timeout
TIMED_OUT = "mrgrpo.read_timeout"


class ReadTimeoutH11Protocol(H11Protocol):
    """H11Protocol that closes a connection whose request is not received whole within ``read_timeout`` s."""

    read_timeout: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._read_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        timer = getattr(self, "_read_timer", None)
        if timer is not None:
            timer.cancel()
            self._read_timer = None

    def _request_received(self) -> bool:
        cycle: Any = self.cycle
        return cycle is not None and not cycle.more_body and not cycle.response_complete

    def handle_events(self) -> None:
        super().handle_events()
        if self._read_timer is not None and self._request_received():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this keep-alive connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or self._request_received():
            return
        cycle: Any = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.scope[TIMED_OUT] = self.read_timeout  # the handler reading the body logs the one line
        else:
            peer = "%s:%d" % self.client if self.client else "a client"
            log.warning(
                "closed the connection of %s: no complete request within the read timeout of %g s",
                peer,
                self.read_timeout,
            )
        self.transport.close()


def protocol_with_timeout(read_timeout: float) -> type[ReadTimeoutH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with this read timeout (seconds)."""
    return type("ReadTimeoutH11Protocol", (ReadTimeoutH11Protocol,), {"read_timeout": float(read_timeout)})
