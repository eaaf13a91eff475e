"""First-come, first-served access to the one device.

Everything that runs the model or changes its adapters holds the device for the whole call, so no
call can ever see another call's adapter. A waiter whose user went away (cancel event set) leaves
the line at once instead of holding up everyone behind it.
"""
from __future__ import annotations

import collections
import threading
from contextlib import contextmanager


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
    def hold(self, cancel: threading.Event | None = None):
        ticket = object()
        with self._cond:
            self._line.append(ticket)
            try:
                while self._busy or self._line[0] is not ticket:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled()
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
