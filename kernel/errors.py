"""The one exception a user sees, and how any other exception is shortened to one line for them."""
from __future__ import annotations


class ArenaError(Exception):
    """An error a user caused and can fix: shown as one line, never as a traceback."""


def first_line(value: object) -> str:
    """The first line of an exception's (or any value's) text, else its type's name: for one-line messages."""
    text = str(value).strip().splitlines()
    return text[0] if text else type(value).__name__


class NotSupported(ArenaError):
    """What was asked cannot be done by this backend at all (e.g. a remote server without echo + logprobs):
    reported as such, never scored as a wrong answer."""
