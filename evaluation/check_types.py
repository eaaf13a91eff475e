"""Every check type a suite may use, in one registry: its fields, its validator, how it is scored.

A new check type is one `CheckType` entry here (plus its validator in `evaluation.check_fields` and its
scorer in `evaluation.checks`); the loader, the runner and the tests all read this table.

Most types are scored from the answer text alone (`ANSWER`). Two need the model again, so the runner
scores them: `choice` and `preference` from the log-likelihood of each choice or answer (`LIKELIHOOD`;
nothing is generated for them) and `judge` by a judge model (`JUDGE`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from evaluation import check_fields as fields
from evaluation import checks
from evaluation.case import Case
from evaluation.checks import CheckResult

ANSWER = "answer"  # scored from the answer text by `score`
LIKELIHOOD = "likelihood"  # scored from the log-likelihood of each choice: one answer, nothing generated
JUDGE = "judge"  # graded by a judge model


@dataclass(frozen=True)
class CheckType:
    """One check type. A field outside required + optional is reported: it is almost always a typo
    ("treshold") that would otherwise silently fall back to a default."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    validate: Callable[[dict], str]  # why a check of this type cannot run, or ""
    example: dict  # a smallest valid check, for documentation and tests
    score: Callable[[dict, str, Case], CheckResult] | None = None  # set for ANSWER types only
    scored_by: str = ANSWER
    fits_tools: Callable[[dict, list[dict]], str] | None = None  # checked against the case's tools
    notes: Callable[[dict, list[dict]], list[str]] | None = None  # loads, but the suite's author should know

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


def registry(*types: CheckType) -> dict[str, CheckType]:
    return {kind.name: kind for kind in types}


CHECK_TYPES = registry(
    CheckType("contains", ("value",), ("ignore_case",), fields.validate_text_match,
              {"type": "contains", "value": ["Paris", "París"]}, checks.check_contains),
    CheckType("exact", ("value",), ("ignore_case",), fields.validate_text_match,
              {"type": "exact", "value": "Paris"}, checks.check_exact),
    CheckType("regex", ("value",), ("ignore_case",), fields.validate_text_match,
              {"type": "regex", "value": r"\bParis\b"}, checks.check_regex),
    CheckType("numeric", ("answer",), ("mode", "tolerance"), fields.validate_numeric,
              {"type": "numeric", "answer": 42}, checks.check_numeric),
    CheckType("choice", ("choices", "answer"), (), fields.validate_choice,
              {"type": "choice", "choices": ["Paris", "Lyon"], "answer": 0}, scored_by=LIKELIHOOD),
    CheckType("preference", ("chosen", "rejected"), (), fields.validate_preference,
              {"type": "preference", "chosen": "Paris is the capital.", "rejected": "Lyon is the capital."},
              scored_by=LIKELIHOOD),
    CheckType("function_call", ("calls",), (), fields.validate_calls,
              {"type": "function_call", "calls": [{"name": "get_weather", "arguments": {"city": ["Paris"]}}]},
              checks.check_function_call, fits_tools=fields.calls_match_tools, notes=fields.calls_notes),
    CheckType("refusal", ("should_refuse",), (), fields.validate_refusal,
              {"type": "refusal", "should_refuse": True}, checks.check_refusal),
    CheckType("max_words", ("value",), (), fields.validate_word_count,
              {"type": "max_words", "value": 60}, checks.check_word_count),
    CheckType("min_words", ("value",), (), fields.validate_word_count,
              {"type": "min_words", "value": 20}, checks.check_word_count),
    CheckType("json", (), ("required_keys",), fields.validate_json,
              {"type": "json", "required_keys": ["name"]}, checks.check_json),
    CheckType("rouge_l", ("reference", "threshold"), (), fields.validate_similarity,
              {"type": "rouge_l", "reference": "Paris is the capital.", "threshold": 0.3}, checks.check_rouge_l),
    CheckType("bleu", ("reference", "threshold"), (), fields.validate_similarity,
              {"type": "bleu", "reference": "Paris is the capital.", "threshold": 20}, checks.check_bleu),
    CheckType("bertscore", ("reference", "threshold"), ("model",), fields.validate_similarity,
              {"type": "bertscore", "reference": "Paris is the capital.", "threshold": 0.8}, checks.check_bertscore),
    CheckType("judge", ("rubric",), ("threshold", "reference"), fields.validate_judge,
              {"type": "judge", "rubric": "Is the answer helpful?"}, scored_by=JUDGE),
)


def check_type(check: dict) -> CheckType:
    """The registered type of a validated check."""
    return CHECK_TYPES[check["type"]]


def validate_check(check: dict, tools: list[dict] | None = None) -> str:
    """Why this check cannot be run ('' when it is fine): unknown type, missing field, wrong type, bad value.
    Given the case's tools, also whether the check fits them (a function call must name one of them)."""
    if not isinstance(check, dict):
        return "a check must be an object with a 'type'"
    name = check.get("type")
    if not isinstance(name, str) or not name:
        return "a check needs a 'type'"
    if name not in CHECK_TYPES:
        return f"unknown check type '{name}' (known: {', '.join(CHECK_TYPES)})"
    kind = CHECK_TYPES[name]
    extra = sorted(set(check) - set(kind.fields) - {"type"})
    if extra:
        return f"unknown field '{extra[0]}' for a {name} check (allowed: {', '.join(kind.fields)})"
    reason = kind.validate(check)
    if not reason and tools is not None and kind.fits_tools is not None:
        reason = kind.fits_tools(check, tools)
    return reason


def check_notes(check: dict, tools: list[dict]) -> list[str]:
    """Remarks on a valid check that loads but may not behave as its author expects (see `CheckType.notes`)."""
    kind = check_type(check)
    return kind.notes(check, tools) if kind.notes is not None else []


def run_check(check: dict, answer: str, case: Case) -> CheckResult:
    """Score an answer on one validated check (as `load_suite` gives them) that needs no model."""
    kind = CHECK_TYPES.get(check.get("type"))
    if kind is None:
        raise ValueError(f"unknown check type {check.get('type')!r}")
    if kind.score is None:
        raise ValueError(f"a {kind.name} check is scored by the runner ({kind.scored_by}), not by run_check")
    return kind.score(check, answer, case)
