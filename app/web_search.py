"""Glue between the chat tabs and models.search: one search per turn, the same sources for every column."""
from __future__ import annotations

from chat.turns import today
from chat.search import augment_question, sources_markdown

SEARCHING = "_Searching the web…_"


def search_for_turn(search, message: str) -> tuple[str, str | None]:
    """Return (markdown to show under the answers, text to send the model instead of the message, or None)."""
    if search is None:  # search is off on this server
        return "", None
    outcome = search.search(message)
    markdown = sources_markdown(outcome)
    if not outcome.results:
        return markdown, None
    return markdown, augment_question(message, outcome, today())


def search_step(search, message: str, wanted: bool, sources, message_box):
    """A chat handler's search step, used as `sources_md, sent = yield from search_step(...)`.

    When search is wanted it first yields an update (keyed by the tab's own `sources` and
    `message_box` components) saying the search runs, since a slow provider takes seconds.
    """
    if not wanted:
        return "", None
    yield {sources: SEARCHING, message_box: ""}
    return search_for_turn(search, message)
