"""The permission layer: every event handler declares what it touches, and one check wraps them all.

Gradio's `api_visibility="private"` only hides a function from the API page: any registered function
can still be called through `POST /gradio_api/queue/join` with its fn_index. So permissions are not
left to each handler (or to which buttons are visible): `guard_handlers` walks `demo.fns` after every
tab is built, wraps each function with `Access.check`, and refuses to start the app when a function
declares nothing. A handler declares with `@needs(Need.X, "what it does")`.
"""
from __future__ import annotations

import enum
import functools
import inspect
from dataclasses import dataclass

import gradio as gr


class Need(enum.Enum):
    SESSION = "session"  # reads or changes only the caller's own session (its chat, its widgets)
    VIEW = "view"  # reads what the page shows every visitor: variant names, the adapter table, the leaderboard
    VOTE = "vote"  # adds the caller's vote through arena's one vote rule (one per battle, rate-limited)
    OPERATOR = "operator"  # changes the server's shared state, or reads beyond the caller's own session


VISITOR_NEEDS = frozenset({Need.SESSION, Need.VIEW, Need.VOTE})
DECLARED = "__arena_need__"
# Gradio's own event functions, by qualified name: gr.Examples copies an example into the caller's inputs.
GRADIO_OWN = {("gradio.helpers", "Examples.create.<locals>.load_example"): (Need.SESSION, "examples")}


def needs(need: Need, what: str = "this"):
    """Declare what a handler touches; `what` names it in a refusal ("deleting adapters")."""
    def mark(fn):
        setattr(fn, DECLARED, (need, what))
        return fn
    return mark


def declared(fn) -> tuple[Need, str] | None:
    found = getattr(fn, DECLARED, None)
    if found is None:
        found = GRADIO_OWN.get((getattr(fn, "__module__", ""), getattr(fn, "__qualname__", "")))
    return found


@dataclass(frozen=True)
class Access:
    """Who may do what on this server: on a public one, visitors only; otherwise whoever got in (--auth)."""

    public: bool = False

    def allows(self, need: Need) -> bool:
        return need in VISITOR_NEEDS or not self.public

    def check(self, need: Need, what: str) -> None:
        if not self.allows(need):
            raise gr.Error(f"{what} is turned off on this public server", print_exception=False)


def guard_handlers(demo: gr.Blocks, access: Access) -> None:
    """Wrap every registered function (private ones too) with the access check; refuse undeclared ones."""
    for index, block_fn in demo.fns.items():
        if block_fn.fn is None:  # a JavaScript-only event: nothing runs on the server
            continue
        found = declared(block_fn.fn)
        if found is None:
            raise RuntimeError(f"event function {block_fn.name!r} (fn_index {index}) declares no access need: "
                               "mark it with app.access.needs(...)")
        block_fn.fn = checked(block_fn.fn, access, *found)


def checked(fn, access: Access, need: Need, what: str):
    """`fn` behind the check; same signature (gradio reads it to pass gr.Request) and same kind (generator)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            access.check(need, what)
            yield from fn(*args, **kwargs)
        return generator

    @functools.wraps(fn)
    def call(*args, **kwargs):
        access.check(need, what)
        return fn(*args, **kwargs)
    return call
