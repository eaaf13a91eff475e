"""The path rule: a path typed in the web app names a file only inside the folders the app owns.

Every handler that takes a file path from a visitor (a training dataset, an evaluation suite, a
teacher template) resolves it here, so no text box reads /etc/passwd, walks out with '..' or follows
a symlink out. A refusal says nothing about the file (not whether it exists, not its size, not a
line of it), so the boxes cannot be used to probe the disk either.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .errors import ArenaError


def owned_file(typed: object, roots: Sequence[Path], what: str, suffixes: Sequence[str] = ()) -> Path:
    """The real path of `typed` when it is a file under one of `roots` (with one of `suffixes`, if given).

    A relative path is looked up under each root in turn, so a listed file's bare name works too.
    Symlinks are followed before the check: one inside a root that points out of it is refused.
    """
    refusal = ArenaError(f"{what}: pick one of the listed files or upload one; other paths are not read")
    if not isinstance(typed, str) or not typed.strip() or "\x00" in typed:
        raise refusal
    owned = [Path(root).resolve() for root in roots]
    candidate = Path(typed.strip())
    tries = [candidate] if candidate.is_absolute() else [root / candidate for root in owned]
    for path in tries:
        try:
            real = path.resolve(strict=True)
            is_file = real.is_file()
        except (OSError, RuntimeError):  # missing, unreadable, a symlink loop: all refused alike
            continue
        inside = any(real.is_relative_to(root) for root in owned)
        if inside and is_file and (not suffixes or real.suffix.lower() in suffixes):
            return real
    raise refusal
