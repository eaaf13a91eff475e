"""The login check behind `--auth` / ARENA_AUTH, with a back-off on wrong passwords.

Gradio compares a fixed USER:PASSWORD in constant time but lets a client try as fast as it likes.
Here, after `free_failures` wrong logins from one client address, that address is locked out (every
try refused, the right password too) for `lockout_s`, doubling with each further failure up to
MAX_LOCKOUT_S; a right login from it afterwards clears its record. Gradio's `auth=` callable is given
only the user name and password, so `ClientAddress`, an ASGI middleware, passes the address along.
"""
from __future__ import annotations

import collections
import contextvars
import hmac
import threading
import time
from dataclasses import dataclass

CLIENT = contextvars.ContextVar("arena_login_client", default="unknown")
MAX_LOCKOUT_S = 3600.0
MAX_CLIENTS = 10_000  # the records of clients seen longest ago are dropped beyond this


class ClientAddress:
    """ASGI middleware: the connecting address of each HTTP request, for `LoginGuard` to read."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("client"):
            CLIENT.set(scope["client"][0])  # each request runs in its own context: nothing leaks to the next
        await self.app(scope, receive, send)


@dataclass
class Failures:
    count: int = 0
    locked_until: float = 0.0


class LoginGuard:
    """Gradio's `auth=` check (`.check`): True for the right user and password from a client not locked out."""

    def __init__(self, user: str, password: str, free_failures: int = 5, lockout_s: float = 60.0,
                 clock=time.monotonic):
        self._user, self._password = user.encode(), password.encode()
        self.free_failures = free_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self._failures: collections.OrderedDict[str, Failures] = collections.OrderedDict()
        self._lock = threading.Lock()

    async def check(self, username: str, password: str) -> bool:
        """Give Gradio this bound method, not the object: Gradio awaits only what `inspect.iscoroutinefunction`
        recognises, and an object's async __call__ is not (its unawaited coroutine would be a truthy 'yes')."""
        return self.attempt(CLIENT.get(), username, password)

    def attempt(self, client: str, username: str, password: str) -> bool:
        now = self.clock()
        with self._lock:
            record = self._failures.get(client)
            if record is not None and record.locked_until > now:
                return False  # not even compared: a locked-out client learns nothing
            # Both compared, always, in constant time: the answer's timing says nothing about either.
            right = hmac.compare_digest(username.encode(), self._user) & hmac.compare_digest(password.encode(),
                                                                                             self._password)
            if right:
                self._failures.pop(client, None)
                return True
            record = self._failures.pop(client, None) or Failures()
            record.count += 1
            if record.count >= self.free_failures:
                doublings = min(record.count - self.free_failures, 30)
                record.locked_until = now + min(self.lockout_s * 2 ** doublings, MAX_LOCKOUT_S)
            self._failures[client] = record
            while len(self._failures) > MAX_CLIENTS:
                self._failures.popitem(last=False)
            return False
