"""The final number of an answer, for `numeric` checks, in three modes.

`lm-eval-strict` and `lm-eval-flexible` are lm-evaluation-harness's two GSM8K filters exactly as
`lm_eval/tasks/gsm8k/gsm8k.yaml` (v3.0) defines them: the answer is cut at the YAML's stop strings, a
`regex` filter (its pattern, its `group_select`, fallback "[invalid]") takes one match, `take_first`
keeps it, and `exact_match` compares it as text with the reference after the YAML's
`regexes_to_ignore` ("," "$" "(?s).*#### " "\\.$") and `ignore_case`. So "72.0" is not "72", as in the
harness, and a number of such a suite can be set beside a published lm-eval GSM8K number (those are
5-shot with the harness's own prompt; the prompt is not part of the check).

`lenient` (the default) reads what models write and compares numerically (1,234 = 1234.0, 3/4 = 0.75,
within `tolerance`): after a self-correction ("Wait,", "Actually,", "Correction:" starting a sentence)
only what follows counts; then the first "#### N", else the last \\boxed{N}, else the last "answer is N"
whose number comes right after the marker and starts no calculation ("answer is 3 x 4 = 12" is not 3),
else the last number in the text.
"""
from __future__ import annotations

import math
import re

LENIENT, LM_EVAL_STRICT, LM_EVAL_FLEXIBLE = "lenient", "lm-eval-strict", "lm-eval-flexible"
MODES = (LENIENT, LM_EVAL_STRICT, LM_EVAL_FLEXIBLE)

# --- lm-evaluation-harness, gsm8k.yaml -------------------------------------------------------------------------
LM_EVAL_STOP = ("Question:", "</s>", "<|im_end|>")  # generation_kwargs.until: generation ends there
LM_EVAL_FILTERS = {  # filter_list: (regex_pattern, group_select); then take_first
    LM_EVAL_STRICT: (re.compile(r"#### (\-?[0-9\.\,]+)"), 0),
    LM_EVAL_FLEXIBLE: (re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)"), -1),
}
LM_EVAL_FALLBACK = "[invalid]"  # RegexFilter's default fallback
LM_EVAL_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")  # exact_match's regexes_to_ignore, then ignore_case

# --- lenient ------------------------------------------------------------------------------------------------------
# A number as models write them: -3.5, 1,234, $1,234.50, 3/4; units and "%" after it are simply not part of it.
# The look-behind keeps "5-3" from reading as -3 and "H2O" from reading as 2.
NUMBER = re.compile(r"(?<![\w.])(?P<sign>-)?(?:[$€£¥]\s?)?(?P<whole>\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
                    r"(?P<fraction>\.\d+)?(?:\s*/\s*(?P<denominator>[1-9]\d*)(?![\d/]))?")
HASH_MARKER = re.compile(r"(?<!#)####[ \t]*")  # "#### 42"; "#### Step 1" is a Markdown heading, read below
ANSWER_MARKER = re.compile(r"\banswer\s*(?:is|=|:)\s*:?", re.I)
BEFORE_NUMBER = re.compile(r"[\s*_:]*(?:(?:approximately|about|around|roughly|exactly)\s+)?", re.I)
HEADING_NEXT = re.compile(r"[.):]\s*[A-Za-z]")  # "#### 1. Find the total" is a numbered heading
CALCULATION_NEXT = re.compile(r"\s*(?:[-+*/×x÷^=]|times|plus|minus)\s*[$€£¥]?\d", re.I)
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
CORRECTION = re.compile(r"(?:^|(?<=[.!?…:\n]))\s*(?:wait|hold on|actually|correction|oops|on second thought)\b"
                        r"|\bi made an? (?:mistake|error)\b", re.I)
MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-"})


def number_value(match: re.Match) -> float:
    value = float(match["whole"].replace(",", "") + (match["fraction"] or ""))
    if match["denominator"]:
        value /= int(match["denominator"])
    return -value if match["sign"] else value


def numbers_in(text: str) -> list[float]:
    return [number_value(match) for match in NUMBER.finditer(text.translate(MINUS_SIGNS))]


def parse_number(text: str) -> float | None:
    """The number a numeric string stands for ("1,234", "$5", "3/4", "1e3"); None unless it holds exactly one."""
    try:
        value = float(text)
        return value if math.isfinite(value) else None
    except ValueError:
        found = numbers_in(text)
        return found[0] if len(found) == 1 else None


def number_right_after(text: str, start: int, not_before: re.Pattern = CALCULATION_NEXT) -> float | None:
    """The number that opens text[start:] (after spaces, "**" or "approximately"), unless a calculation
    (or, after "####", a heading's title) starts with it."""
    match = NUMBER.match(text, BEFORE_NUMBER.match(text, start).end())
    if match is None or CALCULATION_NEXT.match(text, match.end()) or not_before.match(text, match.end()):
        return None
    return number_value(match)


def marked_number(text: str) -> tuple[float, str] | None:
    """A number the text marks as its answer: "#### N" (first), \\boxed{N} (last), "answer is N" (last)."""
    for marker in HASH_MARKER.finditer(text):
        if (found := number_right_after(text, marker.end(), HEADING_NEXT)) is not None:
            return found, "after ####"
    boxed = [numbers_in(inside) for inside in BOXED.findall(text)]
    if boxed and boxed[-1]:
        return boxed[-1][-1], "in \\boxed{}"
    for marker in reversed(list(ANSWER_MARKER.finditer(text))):
        if (found := number_right_after(text, marker.end())) is not None:
            return found, f"after '{marker.group(0).strip()}'"
    return None


def final_number(answer: str) -> tuple[float, str] | None:
    """The answer's final number and where it was found (the lenient mode; see the module's docstring)."""
    text = answer.translate(MINUS_SIGNS)
    where = ""
    corrections = list(CORRECTION.finditer(text))
    if corrections and numbers_in(text[corrections[-1].end():]):
        text, where = text[corrections[-1].end():], f" after the correction '{corrections[-1].group(0).strip()}'"
    if found := marked_number(text):
        return found[0], found[1] + where
    numbers = numbers_in(text)
    return (numbers[-1], "last number" + where) if numbers else None


def lm_eval_extract(answer: str, mode: str) -> str:
    """What the harness's filters keep of a generated answer: RegexFilter, then take_first."""
    for stop in LM_EVAL_STOP:
        answer = answer.split(stop)[0]
    pattern, group_select = LM_EVAL_FILTERS[mode]
    matches = pattern.findall(answer)
    if not matches:
        return LM_EVAL_FALLBACK
    match = matches[group_select]
    if isinstance(match, tuple):  # several groups: the first that matched
        match = next((group for group in match if group), LM_EVAL_FALLBACK)
    return match.strip()


def lm_eval_normalize(text: str) -> str:
    for pattern in LM_EVAL_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def reference_text(expected) -> str:
    """The reference as GSM8K writes it: a string as given, a whole number without ".0"."""
    if isinstance(expected, str):
        return expected
    return str(int(expected)) if float(expected).is_integer() else repr(expected)


def expected_value(expected) -> float:
    return parse_number(expected) if isinstance(expected, str) else float(expected)


def score_number(check: dict, answer: str) -> tuple[bool, str]:
    """(passed, detail naming the mode and what was read) for a validated numeric check."""
    mode = check.get("mode", LENIENT)
    if mode != LENIENT:
        got, reference = lm_eval_extract(answer, mode), reference_text(check["answer"])
        passed = lm_eval_normalize(got) == lm_eval_normalize(reference)
        return passed, f"{mode}: extracted {got!r}, expected {reference!r}"
    expected = expected_value(check["answer"])
    extracted = final_number(answer)
    if extracted is None:
        return False, f"{mode}: no number in the answer (expected {expected:g})"
    got, where = extracted
    tolerance = check.get("tolerance", 1e-6)
    passed = math.isclose(got, expected, rel_tol=tolerance, abs_tol=tolerance)
    return passed, f"{mode}: got {got:g} ({where}), expected {expected:g}"
