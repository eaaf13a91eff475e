"""Glue between the chat tabs and models.search: one search per turn, the same sources for every column."""
from __future__ import annotations

from models.chat import today
from models.search import augment_messages, sources_markdown


def search_for_turn(search, message: str):
    """Return (markdown to show under the answers, message rewrite for every column or None)."""
    if search is None:  # search is off on this server
        return "", None
    outcome = search.search(message)
    markdown = sources_markdown(outcome)
    if not outcome.results:
        return markdown, None
    return markdown, lambda messages: augment_messages(messages, outcome, today())
