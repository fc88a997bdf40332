"""Connection-level limits of `anomclip serve` (below the ASGI gate) and its clean stop.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`), header size (`h11_max_incomplete_event_size`)
and open connections (`limit_concurrency`), but waits forever for the rest of a request's headers: a client that
sends half a request line and stalls keeps its connection. `header_deadline_protocol` is uvicorn's h11 protocol
with a deadline from the first byte of a request to its last header byte; the body has its own deadline in the
gate (http_gate.GateLimits.body_timeout).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from typing import Optional

DEFAULT_HEADER_TIMEOUT = 10.0  # seconds from a connection (or the end of the last answer) to a complete header
DEFAULT_MAX_CONNECTIONS = 512  # open connections before uvicorn answers 503
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
MAX_HEADER_BYTES = 64 * 1024  # request line and headers together
DRAIN_SECONDS = 30  # a stop waits this long for the requests in flight to be answered
API_PROCESS_PREFIX = "LitServer-"  # LitServe's name for its HTTP (uvicorn) processes


def header_deadline_protocol(timeout: float):
    """uvicorn's H11Protocol, closing a connection whose request headers are not complete `timeout` seconds
    after the connection opened (or after the previous answer on a kept-alive connection)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineH11Protocol(H11Protocol):
        header_timeout = timeout
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm_header_timer()  # the headers are complete: the gate times the body
            else:
                self._arm_header_timer()  # between requests: the next one's headers are on the clock

        def connection_lost(self, exc):
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_response_complete(self):
            super().on_response_complete()
            self._disarm_header_timer()  # idle now: uvicorn's keep-alive timeout takes over

        def _arm_header_timer(self):
            if self._header_timer is None and self.header_timeout:
                self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

        def _disarm_header_timer(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_deadline_passed(self):
            self._header_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            self.transport.close()

    return HeaderDeadlineH11Protocol


def api_processes() -> list:
    """LitServe's HTTP processes among this process's children."""
    return [child for child in multiprocessing.active_children() if child.name.startswith(API_PROCESS_PREFIX)]


@contextlib.contextmanager
def stop_on_sigterm(drain_seconds: float = DRAIN_SECONDS):
    """SIGTERM stops the server as Ctrl+C does, after a drain: the HTTP processes stop accepting connections
    and answer what they hold (uvicorn's graceful shutdown, while the workers still run), then LitServe stops
    the workers. Processes forked from this one (LitServe's manager) exit quietly on SIGTERM instead of
    printing a KeyboardInterrupt traceback."""
    owner = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != owner:
            os._exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one drain, however many signals
        drain(drain_seconds)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt:
        pass  # the stop asked for; LitServe has shut its processes down
    finally:
        signal.signal(signal.SIGTERM, previous)


def drain(seconds: float, processes: Optional[list] = None) -> None:
    """SIGTERM to the HTTP processes (uvicorn finishes the requests in flight, accepts no new connection) and
    wait for them to exit, at most `seconds`."""
    processes = api_processes() if processes is None else processes
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join(timeout=seconds)
    sys.stderr.flush()
