"""Judges and teachers the web app may use: loaded variants and the endpoints the operator configured.

A visitor picks a name, never a URL: `--judge-endpoint NAME=URL` (repeatable, or
$ARENA_JUDGE_ENDPOINTS, space-separated) names an OpenAI-compatible server, and its key is read from
the variable the URL's `&key_env=VAR` names and sent to that URL only. The command line takes any URL
(`evaluation.judge.judge_from_spec`): its user is the operator.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from kernel.errors import ArenaError

from .judge import EngineJudge, Judge, OpenAIJudge, openai_judge_from_url

ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class JudgeEndpoint:
    """An OpenAI-compatible judge or teacher the operator configured: visitors pick its name, never its URL.

    Its key is read from the variable `key_env` names (`&key_env=VAR` in the URL) and sent to this URL
    only; without one no key is sent at all, not even $OPENAI_API_KEY.
    """

    name: str
    url: str

    @classmethod
    def parse(cls, text: str) -> "JudgeEndpoint":
        """`NAME=URL`, as given to --judge-endpoint or listed in $ARENA_JUDGE_ENDPOINTS."""
        name, sep, url = text.strip().partition("=")
        name = name.strip()
        if not sep or not ENDPOINT_NAME.match(name) or name.lower() in ("base", "none"):
            raise ArenaError(f"judge endpoint {text.strip()[:80]!r}: expected NAME=URL, NAME being 1-64 letters, "
                             "digits, '.', '_' or '-' and not 'base' or 'none'")
        endpoint = cls(name, url.strip())
        endpoint.judge()  # a bad URL stops the server at start, not a visitor later
        return endpoint

    def judge(self) -> OpenAIJudge:
        return openai_judge_from_url(self.url, default_key_env=None)


def parse_judge_endpoints(items) -> dict[str, JudgeEndpoint]:
    """Endpoints by name from NAME=URL items (the flag's list, or $ARENA_JUDGE_ENDPOINTS split on spaces)."""
    endpoints: dict[str, JudgeEndpoint] = {}
    for item in items:
        endpoint = JudgeEndpoint.parse(item)
        if endpoint.name in endpoints:
            raise ArenaError(f"judge endpoint '{endpoint.name}' is configured twice")
        endpoints[endpoint.name] = endpoint
    return endpoints


def judge_by_name(name: str, engine, endpoints: dict[str, JudgeEndpoint]) -> Judge:
    """The web app's judge or teacher: a configured endpoint or a loaded variant, never a typed URL."""
    name = (name or "").strip() if isinstance(name, str) else ""
    if name in endpoints:
        return endpoints[name].judge()
    if name and name in engine.variants():
        return EngineJudge(engine, name)
    offered = ", ".join([*engine.variants(), *endpoints])
    raise ArenaError(f"judge '{name[:80]}' is neither a loaded variant nor an endpoint configured on this server "
                     f"(choose from {offered})")
