"""First-come, first-served access to the one device.

Everything that runs the model or changes its adapters holds the device for the whole call, so no
call can ever see another call's adapter. A waiter whose user went away (cancel event set) leaves
the line at once instead of holding up everyone behind it.
"""
from __future__ import annotations

import collections
import threading
import time
from contextlib import contextmanager
from typing import Callable


class Cancelled(Exception):
    """The caller gave up (stop button, closed tab) before or during its turn."""


class DeviceQueue:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._line: collections.deque[object] = collections.deque()
        self._busy = False

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)

    @contextmanager
    def hold(self, cancel: threading.Event | None = None, on_wait: Callable[[int], None] | None = None):
        """Wait for the device; on_wait(place in line, 1 = next) is told when the place changes and each second."""
        ticket = object()
        told, told_at = 0, 0.0
        with self._cond:
            self._line.append(ticket)
            try:
                while self._busy or self._line[0] is not ticket:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled()
                    place = self._line.index(ticket) + 1
                    if on_wait is not None and (place != told or time.monotonic() - told_at >= 1.0):
                        told, told_at = place, time.monotonic()
                        on_wait(place)
                    # Wake up now and then to notice a cancel nobody notified us about.
                    self._cond.wait(timeout=0.05)
            except BaseException:
                self._line.remove(ticket)
                self._cond.notify_all()
                raise
            self._line.popleft()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
