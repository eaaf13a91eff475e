"""Engine calls driven from asyncio, and the limit on how many API calls may be in flight.

The engine is synchronous (a thread per call waits for the device), the HTTP server is asyncio.
`EngineCall` runs one `engine.stream` in a thread and hands its events over through an asyncio
queue; closing it sets the call's cancel event, so a request that is still waiting for the device
leaves the line at once and one that is generating stops at the next token.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading

from .protocol import ApiError


class EngineCall:
    def __init__(self, engine, requests: list):
        self.cancel = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=self._run, args=(engine, requests), daemon=True).start()

    def _run(self, engine, requests) -> None:
        try:
            for event in engine.stream(requests, self.cancel):
                self._put(event)
        except BaseException as exc:  # handed to the asyncio side, which turns it into an HTTP error
            self._put(exc)
        finally:
            self._put(None)

    def _put(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:
            pass  # the event loop is gone (server shutting down): nobody is listening

    async def next(self, timeout: float | None = None):
        """The next StreamEvent, or None when the call is over; raises what the engine raised."""
        item = await asyncio.wait_for(self._events.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.cancel.set()


async def run_in_thread(fn, *args, cancel: threading.Event):
    """A blocking engine call (scoring) that is told to give up when the awaiting request goes away."""
    try:
        return await asyncio.to_thread(fn, *args, cancel=cancel)
    finally:
        cancel.set()


@contextlib.asynccontextmanager
async def cancel_on_disconnect(request, cancel: threading.Event):
    """While the body runs, a client that hangs up sets `cancel` (its place in the line is freed)."""
    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel.set()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


class Gate:
    """At most `limit` API calls running or waiting; one more is told 429 at once instead of hanging."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def enter(self) -> "Slot":
        with self._lock:
            if self.count >= self.limit:
                raise ApiError(429, f"server busy: {self.count} API requests are already running or waiting "
                                    f"(the limit is {self.limit}); retry shortly", code="server_busy", retry_after=1)
            self.count += 1
        return Slot(self)

    def leave(self) -> None:
        with self._lock:
            self.count -= 1


class Slot:
    """One place at the gate, given back exactly once (a stream gives it back when it ends)."""

    def __init__(self, gate: Gate):
        self._gate: Gate | None = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.leave()
