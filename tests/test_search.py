"""Web search as the chat sees it: sources in the prompt, kept for follow-ups, and under the answers.

A failing search never stops a chat.

Nothing is mocked: the DuckDuckGo test really goes to the network (there is none here, so it sees the real
failure path), and SearXNG is talked to over real HTTP on a local server started by the test.
"""
from __future__ import annotations

import datetime
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from app.web_search import SEARCHING, search_for_turn, search_step
from chat.turns import Column, answer_turn, drop_last_turn, model_messages, shown_messages
from kernel.config import ArenaError, SamplingParams
from models.prompts import build_prompt_ids
from chat.search import (
    DuckDuckGoProvider, SearchOutcome, SearchResult, SearxngProvider, WebSearch, augment_question,
    provider_from_settings, sources_markdown, sources_prompt,
)
from tests.static_search import StaticProvider

TODAY = datetime.date(2026, 11, 23)
PARIS = [
    SearchResult("Paris - Wikipedia", "https://en.wikipedia.org/wiki/Paris", "Paris is the capital of France."),
    SearchResult("Visit Paris", "https://www.parisinfo.com/", "Official tourist site."),
]


def test_real_duckduckgo_without_network_gives_a_notice_not_an_exception():
    search = WebSearch(DuckDuckGoProvider(timeout_s=3), timeout_s=3)
    started = time.monotonic()
    outcome = search.search("capital of France")
    assert time.monotonic() - started < 3 + 2
    assert outcome.provider == "DuckDuckGo"
    if not outcome.results:  # the machine has no network: the chat must still go on
        assert outcome.notice.startswith("Web search ")
        assert outcome.notice.endswith("answering without search.")
        assert "\n" not in outcome.notice and len(outcome.notice) < 200
        assert sources_markdown(outcome) == f"_{outcome.notice}_"


def test_a_hung_provider_gives_the_timeout_notice_quickly():
    slow = StaticProvider({"capital of france": PARIS}, delay_s=5)
    started = time.monotonic()
    outcome = WebSearch(slow, timeout_s=0.3).search("capital of France")
    assert time.monotonic() - started < 1.5
    assert outcome.results == []
    assert outcome.notice == "Web search timed out after 0.3 s: answering without search."


def test_default_timeout_notice_reads_ten_seconds():
    assert WebSearch(StaticProvider()).timeout_s == 10.0
    outcome = WebSearch(StaticProvider(delay_s=1), timeout_s=0.1).search("x")
    assert "timed out after 0.1 s" in outcome.notice


def test_a_failing_provider_gives_a_notice_naming_the_error():
    broken = StaticProvider(error=RuntimeError("quota exceeded\nmore detail nobody needs"))
    outcome = WebSearch(broken).search("capital of France")
    assert outcome.results == []
    assert outcome.notice == "Web search failed (RuntimeError: quota exceeded): answering without search."


def test_a_network_error_is_called_no_network():
    offline = StaticProvider(error=OSError("[Errno -3] Temporary failure in name resolution"))
    assert WebSearch(offline).search("x").notice == "Web search failed (no network): answering without search."


def test_failures_are_not_cached_so_the_next_message_tries_again():
    broken = StaticProvider(error=RuntimeError("down"))
    search = WebSearch(broken)
    search.search("capital of France")
    search.search("capital of France")
    assert broken.calls == 2


def test_results_are_cached_per_normalised_query():
    provider = StaticProvider({"capital of france": PARIS})
    search = WebSearch(provider)
    first = search.search("capital of France")
    second = search.search("  CAPITAL   of france ")
    assert provider.calls == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.results == first.results == PARIS
    assert second.notice == ""


def test_the_cache_is_bounded_and_forgets_the_oldest_query():
    provider = StaticProvider(lambda query, n: [SearchResult(query, f"https://example.org/{len(query)}")])
    search = WebSearch(provider, cache_size=2)
    for query in ("a", "bb", "ccc"):
        search.search(query)
    search.search("ccc")
    assert provider.calls == 3
    search.search("a")
    assert provider.calls == 4


def test_many_users_at_once_all_get_their_results():
    provider = StaticProvider(lambda query, n: [SearchResult(f"about {query}", f"https://example.org/{query}")],
                              delay_s=0.05)
    search = WebSearch(provider)
    outcomes: list[SearchOutcome] = []
    threads = [threading.Thread(target=lambda q=f"q{i % 4}": outcomes.append(search.search(q))) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 16
    assert all(o.results and o.results[0].title == f"about {o.query}" for o in outcomes)


def test_max_results_is_respected():
    many = [SearchResult(f"r{i}", f"https://example.org/{i}") for i in range(9)]
    outcome = WebSearch(StaticProvider(lambda q, n: many), max_results=3).search("x")
    assert [r.title for r in outcome.results] == ["r0", "r1", "r2"]


def test_an_empty_query_gives_a_notice_and_does_not_call_the_provider():
    provider = StaticProvider({"": PARIS})
    outcome = WebSearch(provider).search("   ")
    assert provider.calls == 0
    assert outcome.results == [] and outcome.notice


def test_no_results_gives_a_notice():
    outcome = WebSearch(StaticProvider()).search("nothing matches")
    assert outcome.results == [] and "found nothing" in outcome.notice


def test_the_question_gets_numbered_sources_and_the_date_in_front():
    outcome = WebSearch(StaticProvider({"capital of france": PARIS})).search("capital of France")
    asked = augment_question("capital of France", outcome, TODAY)
    assert asked.startswith("Today's date is 2026-11-23.")
    assert "[1] Paris - Wikipedia (https://en.wikipedia.org/wiki/Paris)\nParis is the capital of France." in asked
    assert "[2] Visit Paris (https://www.parisinfo.com/)" in asked
    assert "cite them as [n]" in asked
    assert asked.endswith("Question: capital of France")


def test_without_results_the_question_comes_back_unchanged():
    failed = WebSearch(StaticProvider(error=RuntimeError("down"))).search("hello")
    assert augment_question("hello", failed, TODAY) == "hello"
    assert augment_question("hello", None, TODAY) == "hello"
    assert sources_prompt(failed, TODAY) == ""


def test_long_snippets_are_cut_so_small_models_are_not_flooded():
    huge = [SearchResult("Long", f"https://example.org/{i}", "word " * 2000) for i in range(5)]
    outcome = WebSearch(StaticProvider(lambda q, n: huge)).search("long")
    assert len(sources_prompt(outcome, TODAY)) < 5 * 600 + 500


def test_sources_markdown_lists_the_links_or_shows_the_notice():
    outcome = WebSearch(StaticProvider({"q": PARIS})).search("q")
    shown = sources_markdown(outcome)
    assert "1. [Paris - Wikipedia](https://en.wikipedia.org/wiki/Paris)" in shown
    assert "2. [Visit Paris](https://www.parisinfo.com/)" in shown
    failed = WebSearch(StaticProvider(error=RuntimeError("down"))).search("q")
    assert sources_markdown(failed) == "_Web search failed (RuntimeError: down): answering without search._"
    assert sources_markdown(None) == ""


def test_sources_markdown_does_not_link_non_web_urls():
    odd = SearchOutcome("q", [SearchResult("click [me]", "javascript:alert(1)")], provider="static")
    assert "](javascript:" not in sources_markdown(odd)




def test_model_messages_send_each_turn_as_it_was_sent_and_the_chat_shows_the_words():
    history = [{"role": "user", "content": "capital of France", "sent": "[1] Paris...\n\nQuestion: capital of France"},
               {"role": "assistant", "content": "Paris [1]."},
               {"role": "user", "content": "tell me more about [1]"}]
    assert model_messages(history) == [
        {"role": "user", "content": "[1] Paris...\n\nQuestion: capital of France"},
        {"role": "assistant", "content": "Paris [1]."},
        {"role": "user", "content": "tell me more about [1]"},
    ]
    assert shown_messages(history) == [{"role": m["role"], "content": m["content"]} for m in history]
    assert "sent" in history[0]  # the kept history itself is not changed


def test_regenerate_drops_the_sent_text_with_its_turn():
    sent = {"role": "user", "content": "q2", "sent": "sources\n\nQuestion: q2"}
    columns = [Column(v, [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                          dict(sent), {"role": "assistant", "content": "a2"}]) for v in ("base", "a1")]
    assert drop_last_turn(columns) == "q2"
    assert all(c.history == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
               for c in columns)


def test_search_step_yields_the_notice_only_when_search_is_wanted():
    search = WebSearch(StaticProvider({"capital of france": PARIS}))
    step = search_step(search, "capital of France", True, "sources", "box")
    assert next(step) == {"sources": SEARCHING, "box": ""}
    with pytest.raises(StopIteration) as done:
        next(step)
    markdown, sent = done.value.value
    assert "[Paris - Wikipedia](https://en.wikipedia.org/wiki/Paris)" in markdown
    assert sent == augment_question("capital of France", search.search("capital of France"), datetime.date.today())
    assert list(search_step(search, "capital of France", False, "sources", "box")) == []


def test_a_follow_up_turn_still_sends_the_first_turns_sources_to_every_column(tiny_engine):
    """Turn 1 is searched, turn 2 ("more about [1]") is not: the model must still see turn 1's sources."""
    search = WebSearch(StaticProvider({"capital of france": PARIS}))
    params = SamplingParams(max_new_tokens=6)
    columns = [Column("base", params=params), Column("a1", params=params)]
    _, sent = search_for_turn(search, "capital of France")
    columns = list(answer_turn(tiny_engine, columns, "capital of France", sent=sent))[-1]
    columns = list(answer_turn(tiny_engine, columns, "tell me more about [1]"))[-1]
    tokenizer = tiny_engine.tokenizer
    for column in columns:
        first_answer = column.history[1]["content"]
        expected = [{"role": "user", "content": sent}, {"role": "assistant", "content": first_answer},
                    {"role": "user", "content": "tell me more about [1]"}]
        assert "[1] Paris - Wikipedia (https://en.wikipedia.org/wiki/Paris)" in sent
        assert column.stats.prompt_tokens == len(build_prompt_ids(tokenizer, expected))
        assert column.history[-1]["content"] == tiny_engine.generate(column.variant, expected, params=params).text
        assert [m["content"] for m in shown_messages(column.history) if m["role"] == "user"] == [
            "capital of France", "tell me more about [1]"]


class _SearxngHandler(BaseHTTPRequestHandler):
    """A SearXNG instance's JSON answer, echoing the query so the test sees what was asked."""

    def do_GET(self):  # noqa: N802 - the http.server API
        url = urlparse(self.path)
        params = parse_qs(url.query)
        if url.path != "/search" or params.get("format") != ["json"]:
            self.send_error(403, "json format not enabled")
            return
        query = params["q"][0]
        body = json.dumps({"query": query, "results": [
            {"title": f"{query} result {i}", "url": f"https://example.org/{i}", "content": f"snippet {i}"}
            for i in range(1, 8)
        ]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def searxng_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SearxngHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_searxng_results_are_parsed_from_a_real_http_server(searxng_url):
    outcome = WebSearch(SearxngProvider(searxng_url, timeout_s=3), max_results=3).search("lora adapters")
    assert outcome.notice == ""
    assert outcome.provider == "SearXNG"
    assert outcome.results == [
        SearchResult(f"lora adapters result {i}", f"https://example.org/{i}", f"snippet {i}") for i in (1, 2, 3)
    ]


def test_searxng_on_a_closed_port_gives_a_notice():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    outcome = WebSearch(SearxngProvider(f"http://127.0.0.1:{port}", timeout_s=2), timeout_s=3).search("x")
    assert time.monotonic() - started < 3 + 2
    assert outcome.results == []
    assert outcome.notice == "Web search failed (connection refused): answering without search."


def test_provider_from_settings():
    assert provider_from_settings("off", None) is None
    assert isinstance(provider_from_settings("DuckDuckGo", None), DuckDuckGoProvider)
    searxng = provider_from_settings("searxng", "http://127.0.0.1:8888")
    assert isinstance(searxng, SearxngProvider) and searxng.base_url == "http://127.0.0.1:8888"
    with pytest.raises(ArenaError, match="URL"):
        provider_from_settings("searxng", None)
    with pytest.raises(ArenaError, match="unknown search provider"):
        provider_from_settings("bing", None)
