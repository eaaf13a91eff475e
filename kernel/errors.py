"""The one exception a user sees, and how any other exception is shortened to one line for them."""
from __future__ import annotations

import errno
import os
from pathlib import Path


class ArenaError(Exception):
    """An error a user caused and can fix: shown as one line, never as a traceback."""


def first_line(value: object) -> str:
    """The first line of an exception's (or any value's) text, else its type's name: for one-line messages."""
    text = str(value).strip().splitlines()
    return text[0] if text else type(value).__name__


def write_error(exc: OSError, path: str | Path) -> ArenaError:
    """A failed write as one line a user can act on: a full disk says so, and which one."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(path)
    return ArenaError(f"could not write {path}: {exc.strerror or first_line(exc)}")


def disk_full(path: str | Path) -> ArenaError:
    return ArenaError(f"the disk is full: could not write {path} (free space on the disk mounted at "
                      f"{mount_point(path)}, or choose another --data-dir)")


def mount_point(path: str | Path) -> Path:
    """The mount the file is (or would be) on: what `df` names, so a user knows which disk to clear."""
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    while not os.path.ismount(folder):
        folder = folder.parent
    return folder


class NotSupported(ArenaError):
    """What was asked cannot be done by this backend at all (e.g. a remote server without echo + logprobs):
    reported as such, never scored as a wrong answer."""
