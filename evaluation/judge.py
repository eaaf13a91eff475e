"""LLM judges: grade one answer 1-5 against a rubric (as Prometheus 2 does) or pick the better of two
answers (as FastChat's MT-bench judge does), and measure how often the judge agrees with Arena votes.

A judge is anything with `complete(messages) -> str`: a loaded variant of our own engine
(`EngineJudge`) or a model behind an OpenAI-compatible server (`OpenAIJudge`). The command line takes
any URL (its user is the operator); the web app takes only variants and the endpoints the operator
configured (`JudgeEndpoint`, by name), so no visitor can send the server's key to a URL of theirs.
Judges are weak
parsers of their own format, so every grade retries on output it cannot read, and what is still
unreadable comes back marked (`parsed=False`, `winner=None`) for the caller to count, never dropped.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx

from kernel.config import SamplingParams
from kernel.errors import ArenaError, first_line

JUDGE_MODEL_ENV = "ARENA_JUDGE_MODEL"
JUDGE_MAX_NEW_TOKENS = 512  # room for Prometheus' feedback paragraph and the verdict after it


class Judge(Protocol):
    def complete(self, messages: list[dict]) -> str: ...


class Completion(str):
    """A reply's text that also says why generation stopped: "stop", "length", or "" when unknown."""

    finish_reason: str

    def __new__(cls, text: str, finish_reason: str = "") -> "Completion":
        reply = super().__new__(cls, text)
        reply.finish_reason = finish_reason or ""
        return reply


@dataclass
class EngineJudge:
    """One variant (base or adapter) of our engine as the judge; greedy so grades are repeatable."""

    engine: object  # models.engine.Engine; not imported so this module loads without torch
    variant: str
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=JUDGE_MAX_NEW_TOKENS))

    def __post_init__(self) -> None:
        if self.variant not in self.engine.variants():
            raise ArenaError(f"judge '{self.variant}' is not a loaded variant: choose from "
                             f"{', '.join(self.engine.variants())} or give an http(s) URL")

    def complete(self, messages: list[dict]) -> str:
        answer = self.engine.generate(self.variant, messages, params=self.params)
        return Completion(answer.text, answer.stats.finish_reason)


@dataclass
class OpenAIJudge:
    """A model behind `POST {base_url}/chat/completions`; the key comes from `api_key_env` (None: no key),
    never logged."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = 60
    max_tokens: int | None = None  # None: the server's default (some reject max_tokens outright)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def complete(self, messages: list[dict]) -> str:
        payload = {"model": self.model, "messages": messages, "temperature": 0}
        if self.max_tokens:
            payload["max_tokens"] = self.max_tokens
        try:
            response = httpx.post(self.url, json=payload, headers=self._headers(), timeout=self.timeout)
        except httpx.ConnectError as exc:
            raise ArenaError(f"judge {self.url}: cannot connect ({first_line(exc)})") from None
        except httpx.TimeoutException:
            raise ArenaError(f"judge {self.url}: no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ArenaError(f"judge {self.url}: {type(exc).__name__} ({first_line(exc)})") from None
        if response.status_code >= 400:
            raise ArenaError(f"judge {self.url}: HTTP {response.status_code} {first_line(response.text)[:200]}")
        return self._reply(response)

    def _headers(self) -> dict:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _reply(self, response: httpx.Response) -> Completion:
        try:
            choice = response.json()["choices"][0]
            text = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ArenaError(f"judge {self.url}: malformed response, no choices[0].message.content "
                             f"({first_line(response.text)[:120]!r})") from None
        if not isinstance(text, str):
            raise ArenaError(f"judge {self.url}: malformed response, content is {type(text).__name__}, not text")
        return Completion(text, str(choice.get("finish_reason") or ""))


def judge_from_spec(spec: str, engine=None) -> Judge:
    """For the command line: a variant name of `engine`, or `http(s)://host:port/v1?model=NAME`
    (model else $ARENA_JUDGE_MODEL; the key from $OPENAI_API_KEY, or from the variable `&key_env=VAR` names)."""
    spec = spec.strip()
    if spec.startswith(("http://", "https://")):
        return openai_judge_from_url(spec, default_key_env="OPENAI_API_KEY")
    if engine is None:
        raise ArenaError(f"judge '{spec}': no model is loaded here; give an http(s) URL instead")
    return EngineJudge(engine, spec)


def openai_judge_from_url(url: str, default_key_env: str | None) -> OpenAIJudge:
    """`http(s)://host/v1?model=NAME&key_env=VAR` as an OpenAIJudge; both query keys are ours, not sent."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ArenaError(f"judge {url}: not an http(s) URL")
    query = parse_qs(parts.query)
    model = (query.pop("model", [""])[0] or os.environ.get(JUDGE_MODEL_ENV, "")).strip()
    if not model:
        raise ArenaError(f"judge {url}: which model? add ?model=NAME to the URL or set ${JUDGE_MODEL_ENV}")
    key_env = query.pop("key_env", [""])[0].strip() or default_key_env
    base = urlunsplit(parts._replace(query=urlencode(query, doseq=True), fragment=""))
    return OpenAIJudge(base, model, api_key_env=key_env)


def ask_until_parsed(judge: Judge, messages: list[dict], parse, reminder: str, retries: int):
    """(parsed value or None, last raw reply, attempts); each retry shows the judge its unreadable reply."""
    conversation = list(messages)
    raw, attempts = "", 0
    for attempts in range(1, retries + 2):
        raw = judge.complete(conversation)
        value = parse(raw)
        if value is not None:
            return value, raw, attempts
        # Greedy judges repeat themselves when asked the same thing: say what was wrong instead.
        conversation += [{"role": "assistant", "content": raw}, {"role": "user", "content": reminder}]
    return None, raw, attempts


# ----- absolute grading (Prometheus 2) ----------------------------------------------------------

# The prompts of prometheus-eval (prometheus_eval/prompts.py), unchanged: Prometheus 2 was trained on them.
ABS_SYSTEM_PROMPT = ("You are a fair judge assistant tasked with providing clear, objective feedback based on "
                     "specific criteria, ensuring each assessment reflects the absolute standards set for performance.")
ABS_TASK = """###Task Description:
An instruction (might include an Input inside it), a response to evaluate, {given}and a score rubric representing a evaluation criteria are given.
1. Write a detailed feedback that assess the quality of the response strictly based on the given score rubric, not evaluating in general.
2. After writing a feedback, write a score that is an integer between 1 and 5. You should refer to the score rubric.
3. The output format should look as follows: "(write a feedback for criteria) [RESULT] (an integer number between 1 and 5)"
4. Please do not generate any other opening, closing, and explanations.

###The instruction to evaluate:
{instruction}

###Response to evaluate:
{response}

"""
ABS_REFERENCE = "###Reference Answer (Score 5):\n{reference}\n\n"
ABS_RUBRIC = "###Score Rubrics:\n{rubric}\n\n###Feedback: "
ABS_REMINDER = ("Your reply did not end with a score. Write the feedback again and end it with "
                "'[RESULT] (an integer between 1 and 5)'.")

RESULT_SCORE = re.compile(r"\[RESULT\]\s*:?\s*[(\[]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
FALLBACK_SCORE = re.compile(r"\bscore\s*[:=]\s*[(\[]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)  # "Score 1:" is the rubric


@dataclass(frozen=True)
class Rubric:
    criteria: str
    score1: str
    score2: str
    score3: str
    score4: str
    score5: str

    def text(self) -> str:
        scores = (self.score1, self.score2, self.score3, self.score4, self.score5)
        return f"[{self.criteria}]\n" + "\n".join(f"Score {n}: {d}" for n, d in enumerate(scores, 1))


# For a rubric given as criteria only: Prometheus was trained with five described levels, so say what each means.
GENERIC_LEVELS = ("The response does not meet the criteria at all.",
                  "The response meets the criteria only slightly, with major shortcomings.",
                  "The response partly meets the criteria, with noticeable shortcomings.",
                  "The response mostly meets the criteria, with minor shortcomings.",
                  "The response fully meets the criteria.")


def rubric_text(rubric: Rubric | dict | str) -> str:
    """A Rubric; a suite's {criteria, score1_description..score5_description}; or text: a whole rubric
    when it already lists "Score 1:".."Score 5:", else the criteria, with generic levels."""
    if isinstance(rubric, Rubric):
        return rubric.text()
    if isinstance(rubric, dict):
        keys = ["criteria"] + [f"score{n}_description" for n in range(1, 6)]
        missing = [k for k in keys if not isinstance(rubric.get(k), str) or not rubric[k].strip()]
        if missing:
            raise ArenaError(f"rubric: '{missing[0]}' must be a non-empty string")
        return Rubric(*(rubric[k] for k in keys)).text()
    if not isinstance(rubric, str) or not rubric.strip():
        raise ArenaError("rubric: give criteria text, a Rubric, or {criteria, score1_description..}")
    if all(f"Score {n}:" in rubric for n in range(1, 6)):
        return rubric.strip()
    return Rubric(rubric.strip(), *GENERIC_LEVELS).text()


HELPFULNESS = Rubric(
    "Does the model provide relevant and useful responses to the user's needs or questions?",
    "The model's responses are irrelevant or unhelpful to the user's needs or queries.",
    "The model sometimes provides helpful information, but often fails to address the user's actual needs or questions.",
    "The model generally provides helpful responses that address the user's needs, though it may occasionally miss the mark.",
    "The model regularly provides helpful responses that are well-aligned with the user's inquiries, with only rare inaccuracies.",
    "The model consistently offers highly relevant and useful responses that perfectly cater to the user's needs and inquiries.",
)


@dataclass
class Grade:
    score: int | None  # None when the judge never wrote a readable score
    feedback: str
    raw: str
    attempts: int
    parsed: bool


def absolute_messages(instruction: str, response: str, rubric: Rubric | dict | str,
                      reference: str | None = None) -> list[dict]:
    given = "a reference answer that gets a score of 5, " if reference else ""
    prompt = ABS_TASK.format(given=given, instruction=instruction, response=response)
    if reference:
        prompt += ABS_REFERENCE.format(reference=reference)
    prompt += ABS_RUBRIC.format(rubric=rubric_text(rubric))
    return [{"role": "system", "content": ABS_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def parse_result(text: str) -> tuple[int, str] | None:
    """(score, feedback) from '... [RESULT] 4' (or 'Score: 4'); None when absent or not an integer 1-5."""
    matches = list(RESULT_SCORE.finditer(text)) or list(FALLBACK_SCORE.finditer(text))
    if not matches:
        return None
    last = matches[-1]  # the verdict comes after the feedback, which may quote the format
    number = last.group(1)
    if not number.isdigit() or not 1 <= int(number) <= 5:
        return None
    feedback = re.sub(r"^\s*feedback\s*:\s*", "", text[:last.start()], flags=re.IGNORECASE).strip()
    return int(number), feedback


def grade_absolute(judge: Judge, instruction: str, response: str, rubric: Rubric | dict | str = HELPFULNESS,
                   reference: str | None = None, retries: int = 2) -> Grade:
    messages = absolute_messages(instruction, response, rubric, reference)
    result, raw, attempts = ask_until_parsed(judge, messages, parse_result, ABS_REMINDER, retries)
    if result is None:
        return Grade(score=None, feedback="", raw=raw, attempts=attempts, parsed=False)
    return Grade(score=result[0], feedback=result[1], raw=raw, attempts=attempts, parsed=True)


# ----- pairwise grading (FastChat MT-bench "pair-v2") -------------------------------------------

# FastChat's judge_prompts.jsonl "pair-v2", unchanged, so verdicts are comparable with MT-bench's.
PAIR_SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any position biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow the length of "
    "the responses to influence your evaluation. Do not favor certain names of the assistants. Be as objective "
    "as possible. After providing your explanation, output your final verdict by strictly following this format: "
    "\"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
)
PAIR_TEMPLATE = ("[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n"
                 "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
                 "[The End of Assistant B's Answer]")
PAIR_REMINDER = ('Your reply did not end with a verdict. Give your explanation again and end it with '
                 '"[[A]]", "[[B]]" or "[[C]]" for a tie.')
VERDICT = re.compile(r"\[\[([ABC])\]\]")


@dataclass
class PairwiseVerdict:
    winner: str | None  # "a", "b", "tie"; None when an order stayed unreadable after retries
    first: str  # the judge's raw reply with answer a shown first
    second: str  # ... with answer b shown first
    consistent: bool  # both orders named the same winner (or both a tie)
    unparsed: int  # orders (0-2) whose reply had no verdict after retries

    @property
    def inconsistent(self) -> bool:
        """Both orders were read but disagreed: position bias, counted as a tie."""
        return self.unparsed == 0 and not self.consistent


def parse_pair_verdict(text: str) -> str | None:
    """'A', 'B' or 'C' from the last [[X]] in the reply (earlier ones may quote the instructions)."""
    found = VERDICT.findall(text)
    return found[-1] if found else None


def pair_messages(question: str, shown_first: str, shown_second: str) -> list[dict]:
    prompt = PAIR_TEMPLATE.format(question=question, answer_a=shown_first, answer_b=shown_second)
    return [{"role": "system", "content": PAIR_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def grade_pairwise(judge: Judge, question: str, answer_a: str, answer_b: str, retries: int = 2) -> PairwiseVerdict:
    """Judge (a, b) and then (b, a); a win counts only when the same answer wins in both orders."""
    first, raw_first, _ = ask_until_parsed(judge, pair_messages(question, answer_a, answer_b),
                                           parse_pair_verdict, PAIR_REMINDER, retries)
    second, raw_second, _ = ask_until_parsed(judge, pair_messages(question, answer_b, answer_a),
                                             parse_pair_verdict, PAIR_REMINDER, retries)
    unparsed = (first is None) + (second is None)
    if unparsed:
        return PairwiseVerdict(None, raw_first, raw_second, consistent=False, unparsed=unparsed)
    in_first = {"A": "a", "B": "b", "C": "tie"}[first]
    in_second = {"A": "b", "B": "a", "C": "tie"}[second]  # swapped: the judge's "A" is answer b
    consistent = in_first == in_second
    return PairwiseVerdict(in_first if consistent else "tie", raw_first, raw_second, consistent, 0)


# ----- agreement with the Arena's human votes ---------------------------------------------------

FLIPPED = {"a": "b", "b": "a", "tie": "tie"}


@dataclass
class Agreement:
    """How often the judge picked what the voters picked, over votes the judge also saw."""

    compared: int = 0  # votes with a readable verdict on the same prompt and pair
    agreed: int = 0
    no_verdict: int = 0  # votes on a prompt and pair the judge did not grade
    unparsed: int = 0  # votes whose verdict was unreadable (winner None)
    both_bad: int = 0  # "both bad" votes: counted as ties or skipped, per both_bad_as
    both_bad_as: str = "tie"

    @property
    def rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def summary(self) -> str:
        rate = "n/a" if self.rate is None else f"{self.rate:.1%}"
        handled = "counted as ties" if self.both_bad_as == "tie" else "skipped"
        return (f"judge agrees with {self.agreed} of {self.compared} votes ({rate}); "
                f"{self.both_bad} both-bad votes {handled}, {self.no_verdict} without a verdict, "
                f"{self.unparsed} with an unreadable verdict")


def vote_prompt(conversation: list[dict]) -> str:
    """The question both sides answered: the last user message."""
    return next(m["content"] for m in reversed(conversation) if m["role"] == "user")


def verdict_for(verdicts: dict, prompt: str, variant_a: str, variant_b: str) -> str | None | bool:
    """The judge's winner in the vote's own a/b terms; False when the judge never saw this pair."""
    if (prompt, variant_a, variant_b) in verdicts:
        return verdicts[(prompt, variant_a, variant_b)].winner
    if (prompt, variant_b, variant_a) in verdicts:
        winner = verdicts[(prompt, variant_b, variant_a)].winner
        return None if winner is None else FLIPPED[winner]
    return False


def agreement_with_votes(verdicts: dict[tuple[str, str, str], PairwiseVerdict], votes: Iterable,
                         both_bad: str = "tie") -> Agreement:
    """Compare verdicts keyed by (prompt, variant_a, variant_b) with Arena votes (evaluation.votes.Vote).

    A verdict for the pair in the other order counts, with a and b swapped. "both_bad" votes count as
    ties by default (as Chatbot Arena rates them), or are left out with both_bad="skip".
    """
    if both_bad not in ("tie", "skip"):
        raise ArenaError(f"agreement: both_bad must be 'tie' or 'skip', got {both_bad!r}")
    report = Agreement(both_bad_as=both_bad)
    for vote in votes:
        human = vote.winner
        if human == "both_bad":
            report.both_bad += 1
            if both_bad == "skip":
                continue
            human = "tie"
        judged = verdict_for(verdicts, vote_prompt(vote.conversation_a), vote.variant_a, vote.variant_b)
        if judged is False:
            report.no_verdict += 1
        elif judged is None:
            report.unparsed += 1
        else:
            report.compared += 1
            report.agreed += judged == human
    return report
