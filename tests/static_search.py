"""A web search provider for tests: given results instead of the web (there is no network here), and
told to fail or to be slow where a test needs that. The real providers are in `chat.search`."""
from __future__ import annotations

import threading
import time
from typing import Callable, Mapping

from chat.search import SearchResult, normalize_query

ResultSource = Mapping[str, list[SearchResult]] | Callable[[str, int], list[SearchResult]]


class StaticProvider:
    """Given results instead of the web; can be told to fail or to be slow.

    A mapping is looked up by the normalised query (unknown queries find nothing); a callable gets
    (query, max_results). `calls` counts how often the provider was really reached.
    """

    def __init__(self, results: ResultSource | None = None, *, error: BaseException | None = None,
                 delay_s: float = 0.0, name: str = "static"):
        self.results = results if results is not None else {}
        self.error = error
        self.delay_s = delay_s
        self.name = name
        self.calls = 0
        self._lock = threading.Lock()

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        with self._lock:
            self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        if callable(self.results):
            return list(self.results(query, max_results))[:max_results]
        by_query = {normalize_query(q): r for q, r in self.results.items()}
        return list(by_query.get(normalize_query(query), []))[:max_results]
