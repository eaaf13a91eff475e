"""Optional web search for the chat: fetch a few sources, put them into the prompt, list them under the answers.

Search is a helper, never a point of failure: `WebSearch.search` does not raise, gives up after a timeout
(a hung provider must not hang the chat) and turns every problem into a one-line notice, so the chat goes
on answering without sources. One search serves every column, so all models see the same sources.
"""
from __future__ import annotations

import datetime
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from kernel.errors import ArenaError

SNIPPET_CHARS = 500  # per source: five of these fit a small model's context with room for the question
TITLE_CHARS = 200
NOTICE_TAIL = "answering without search."
PROVIDER_NAMES = ("duckduckgo", "searxng", "off")


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str = ""


@dataclass(frozen=True)
class SearchOutcome:
    """What one search gave: results, or an empty list and a notice saying why, for the user to see."""
    query: str
    results: list[SearchResult] = field(default_factory=list)
    notice: str = ""  # empty when the search worked; otherwise one sentence for the user
    provider: str = ""
    seconds: float = 0.0
    cached: bool = False

    @property
    def has_sources(self) -> bool:
        return bool(self.results)


@runtime_checkable
class SearchProvider(Protocol):
    """A search backend. `search` may raise or hang: WebSearch deals with both."""
    name: str

    def search(self, query: str, max_results: int) -> list[SearchResult]: ...


def _clean(text: object, limit: int) -> str:
    """One line of plain text, bounded, whatever a provider sent (None, numbers, newlines)."""
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _result(title: object, url: object, snippet: object) -> SearchResult:
    return SearchResult(_clean(title, TITLE_CHARS), str(url or "").strip(), _clean(snippet, SNIPPET_CHARS))


class DuckDuckGoProvider:
    """DuckDuckGo and friends through the `ddgs` package (no API key)."""
    name = "DuckDuckGo"

    def __init__(self, timeout_s: float = 5.0):
        self.timeout_s = timeout_s

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        from ddgs import DDGS  # imported here so the app starts even if ddgs is missing and search is off

        hits = DDGS(timeout=max(1, round(self.timeout_s))).text(query, max_results=max_results) or []
        return [_result(h.get("title"), h.get("href"), h.get("body")) for h in hits if h.get("href")]


class SearxngProvider:
    """A SearXNG instance's JSON API; the instance must list `json` under `search.formats`."""
    name = "SearXNG"

    def __init__(self, base_url: str, timeout_s: float = 5.0):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ArenaError(f"SearXNG URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def search(self, query: str, max_results: int) -> list[SearchResult]:
        import httpx

        response = httpx.get(
            f"{self.base_url}/search", params={"q": query, "format": "json"},
            headers={"Accept": "application/json"}, timeout=self.timeout_s,
        )
        response.raise_for_status()
        hits = response.json().get("results") or []
        found = [_result(h.get("title"), h.get("url"), h.get("content")) for h in hits if h.get("url")]
        return found[:max_results]


def normalize_query(query: str) -> str:
    """The cache key: case and spacing do not make a different question."""
    return " ".join((query or "").split()).lower()


def describe_error(error: BaseException) -> str:
    """A few words for the user about why search failed (the full error is too long for a notice)."""
    text = f"{type(error).__name__} {error}".lower()
    if any(s in text for s in ("dns", "name or service not known", "name resolution", "nodename nor servname",
                               "network is unreachable", "no route to host", "getaddrinfo")):
        return "no network"
    if "connection refused" in text or isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if "ratelimit" in text:
        return "rate limited by the search site"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    if "timeout" in text or "timed out" in text:
        return "the search site timed out"
    if isinstance(error, json.JSONDecodeError):
        return "the search site did not send JSON"
    first_line = (str(error).strip().splitlines() or [""])[0]
    return _clean(f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__, 120)


class WebSearch:
    """Runs one provider with a timeout and a small shared cache; safe to call from many browser sessions."""

    def __init__(self, provider: SearchProvider, max_results: int = 5, timeout_s: float = 10.0,
                 cache_size: int = 64):
        self.provider = provider
        self.max_results = max_results
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self._cache: OrderedDict[str, SearchOutcome] = OrderedDict()
        self._lock = threading.Lock()

    def search(self, query: str) -> SearchOutcome:
        """Never raises: a failure comes back as an outcome with no results and a notice."""
        started = time.monotonic()
        query = (query or "").strip()
        key = normalize_query(query)
        if not key:
            return self._outcome(query, started, notice=f"Web search skipped (empty question): {NOTICE_TAIL}")
        cached = self._cached(key)
        if cached is not None:
            return replace(cached, query=query, seconds=round(time.monotonic() - started, 3), cached=True)
        outcome = self._run_provider(query, started)
        if outcome.has_sources:
            self._remember(key, outcome)
        return outcome

    def _run_provider(self, query: str, started: float) -> SearchOutcome:
        # A daemon thread rather than a pool: a provider that hangs for good must not use up a pool's
        # workers (later searches would queue behind it) nor keep the server from exiting.
        box: dict[str, object] = {}

        def work() -> None:
            try:
                box["results"] = self.provider.search(query, self.max_results)
            except BaseException as error:  # noqa: BLE001 - any provider bug becomes a notice, not a crash
                box["error"] = error

        worker = threading.Thread(target=work, name=f"web-search-{self.provider.name}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            return self._outcome(query, started, notice=f"Web search timed out after {self.timeout_s:g} s: {NOTICE_TAIL}")
        if "error" in box:
            cause = describe_error(box["error"])  # type: ignore[arg-type]
            return self._outcome(query, started, notice=f"Web search failed ({cause}): {NOTICE_TAIL}")
        results = [r for r in (box.get("results") or []) if isinstance(r, SearchResult) and r.url]
        if not results:
            return self._outcome(query, started, notice=f"Web search found nothing: {NOTICE_TAIL}")
        return self._outcome(query, started, results=results[: self.max_results])

    def _outcome(self, query: str, started: float, results: list[SearchResult] | None = None,
                 notice: str = "") -> SearchOutcome:
        return SearchOutcome(query=query, results=list(results or []), notice=notice, provider=self.provider.name,
                             seconds=round(time.monotonic() - started, 3))

    def _cached(self, key: str) -> SearchOutcome | None:
        with self._lock:
            outcome = self._cache.get(key)
            if outcome is not None:
                self._cache.move_to_end(key)
            return outcome

    def _remember(self, key: str, outcome: SearchOutcome) -> None:
        with self._lock:
            self._cache[key] = outcome
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)


def provider_from_settings(name: str | None, searxng_url: str | None = None,
                           timeout_s: float = 5.0) -> SearchProvider | None:
    """The provider a settings choice names; None when search is off."""
    choice = (name or "off").strip().lower()
    if choice in ("off", "none", ""):
        return None
    if choice == "duckduckgo":
        return DuckDuckGoProvider(timeout_s=timeout_s)
    if choice == "searxng":
        if not searxng_url:
            raise ArenaError("SearXNG search needs the instance URL (for example http://127.0.0.1:8888)")
        return SearxngProvider(searxng_url, timeout_s=timeout_s)
    raise ArenaError(f"unknown search provider {name!r}; use one of {', '.join(PROVIDER_NAMES)}")


def _as_date(today: datetime.date) -> datetime.date:
    # datetime is a date subclass whose isoformat() adds the time; the prompt wants the day only
    return today.date() if isinstance(today, datetime.datetime) else today


def sources_prompt(outcome: SearchOutcome | None, today: datetime.date, snippet_chars: int = SNIPPET_CHARS) -> str:
    """The block of numbered sources for the prompt, or "" when there are none."""
    if outcome is None or not outcome.results:
        return ""
    lines = [f"Today's date is {_as_date(today).isoformat()}.",
             f"Web search results for: {outcome.query}", ""]
    for n, result in enumerate(outcome.results, 1):
        lines.append(f"[{n}] {result.title} ({result.url})")
        if result.snippet:
            lines.append(_clean(result.snippet, snippet_chars))
        lines.append("")
    lines.append("Answer the user's question using these sources where they are relevant, and cite them "
                 "as [n] (for example [1]). If the sources do not answer it, say so.")
    return "\n".join(lines)


def augment_question(question: str, outcome: SearchOutcome | None, today: datetime.date) -> str:
    """The user's question with the sources in front, as the model gets it; the question alone without sources."""
    block = sources_prompt(outcome, today)
    return f"{block}\n\nQuestion: {question}" if block else question


def _markdown_text(text: str) -> str:
    return "".join("\\" + ch if ch in "\\`*_[]<>#|" else ch for ch in text)


def _markdown_link(result: SearchResult) -> str:
    title = _markdown_text(result.title or result.url)
    if not result.url.startswith(("http://", "https://")):  # no javascript: or file: links under the answers
        return f"{title} ({_markdown_text(result.url)})"
    url = result.url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
    return f"[{title}]({url})"


def sources_markdown(outcome: SearchOutcome | None) -> str:
    """Sources to show under the answers: a numbered list of links, the notice in italics, or ""."""
    if outcome is None:
        return ""
    if outcome.results:
        detail = f"{outcome.provider}, cached" if outcome.cached else f"{outcome.provider}, {outcome.seconds:.1f} s"
        links = "\n".join(f"{n}. {_markdown_link(r)}" for n, r in enumerate(outcome.results, 1))
        return f"**Sources** ({_markdown_text(detail)})\n\n{links}"
    return f"_{outcome.notice}_" if outcome.notice else ""
