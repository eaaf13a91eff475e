"""LLM judges (Prometheus 2 absolute grades, MT-bench pairwise verdicts in both orders), their agreement
with Arena votes, and judged multi-turn evaluation.

Nothing is mocked: the "remote" judge is a real HTTP server on 127.0.0.1 (tests/chat_server.py) speaking
the OpenAI chat completions route; the local judge is the real tiny engine.
"""
from __future__ import annotations

import json

import pytest

from tests.chat_server import Reply, closed_port, scripted
from tests.helpers import shared_data

from evaluation.judge import (
    ABS_SYSTEM_PROMPT, PAIR_SYSTEM_PROMPT, PAIR_TEMPLATE, Completion, EngineJudge, OpenAIJudge, PairwiseVerdict,
    agreement_with_votes, grade_absolute, grade_pairwise, judge_from_spec, parse_result, rubric_text,
)
from arena.votes import Vote
from kernel.config import ArenaError, SamplingParams

JUDGE_PROMPTS = shared_data() / "judge_prompts.jsonl"


# ----- absolute grading ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The answer is accurate and complete. [RESULT] 4", (4, "The answer is accurate and complete.")),
    ("Feedback: Clear and polite. [RESULT]: 5", (5, "Clear and polite.")),
    ("Mostly right. [RESULT] (3)", (3, "Mostly right.")),
    ("Too short.\nScore: 2", (2, "Too short.")),
    ("Quotes [RESULT] (an integer number between 1 and 5), then [RESULT] 1",
     (1, "Quotes [RESULT] (an integer number between 1 and 5), then")),
    ("Great. [RESULT] 7", None),
    ("Bad. [RESULT] 0", None),
    ("Half marks. [RESULT] 4.5", None),
    ("Score 1: The model's responses are irrelevant.", None),  # the rubric echoed is not a score
    ("I cannot grade this.", None),
])
def test_prometheus_result_parsing(text, expected):
    assert parse_result(text) == expected


def test_absolute_grade_uses_the_prometheus_prompt(chat_server):
    server = chat_server(scripted("Relevant and correct. [RESULT] 4"))
    grade = grade_absolute(OpenAIJudge(server.url, "prometheus"), "Name a prime.", "7 is prime.",
                           reference="2 is the smallest prime.")
    assert (grade.score, grade.feedback, grade.attempts, grade.parsed) == (4, "Relevant and correct.", 1, True)
    system, user = server.bodies()[0]["messages"]
    assert system == {"role": "system", "content": ABS_SYSTEM_PROMPT}
    prompt = user["content"]
    assert "a reference answer that gets a score of 5, and a score rubric" in prompt
    assert "###The instruction to evaluate:\nName a prime.\n\n###Response to evaluate:\n7 is prime.\n\n" in prompt
    assert "###Reference Answer (Score 5):\n2 is the smallest prime.\n\n###Score Rubrics:\n[Does the model" in prompt
    assert '"(write a feedback for criteria) [RESULT] (an integer number between 1 and 5)"' in prompt
    assert "\nScore 5: The model consistently offers" in prompt and prompt.endswith("###Feedback: ")


def test_absolute_grade_without_reference_and_with_colon(chat_server):
    server = chat_server(scripted("Fine. [RESULT]: 5"))
    grade = grade_absolute(OpenAIJudge(server.url, "m"), "Say hi.", "Hi!")
    assert (grade.score, grade.parsed, grade.attempts) == (5, True, 1)
    prompt = server.bodies()[0]["messages"][1]["content"]
    assert "Reference Answer" not in prompt and "a response to evaluate, and a score rubric" in prompt


def test_absolute_grade_retries_garbage_then_reads_the_score(chat_server):
    server = chat_server(scripted("What a lovely answer!", "Good, though brief. [RESULT] 3"))
    grade = grade_absolute(OpenAIJudge(server.url, "m"), "Say hi.", "Hi!")
    assert (grade.score, grade.attempts, grade.parsed, grade.feedback) == (3, 2, True, "Good, though brief.")
    retry = server.bodies()[1]["messages"]
    assert retry[2] == {"role": "assistant", "content": "What a lovely answer!"}
    assert retry[3]["role"] == "user" and "[RESULT]" in retry[3]["content"]


def test_absolute_grade_always_garbage_is_marked_unparsed(chat_server):
    server = chat_server(scripted("No idea, sorry."))
    grade = grade_absolute(OpenAIJudge(server.url, "m"), "Say hi.", "Hi!", retries=2)
    assert (grade.score, grade.parsed, grade.attempts, grade.raw, grade.feedback) == (
        None, False, 3, "No idea, sorry.", "")
    assert len(server.requests) == 3


def test_rubrics_as_suites_write_them():
    suite_rubric = {"criteria": "Is it a poem?", **{f"score{n}_description": f"level {n}" for n in range(1, 6)}}
    assert rubric_text(suite_rubric) == "[Is it a poem?]\n" + "\n".join(f"Score {n}: level {n}" for n in range(1, 6))
    assert rubric_text("Is it helpful?").startswith("[Is it helpful?]\nScore 1: The response does not meet")
    whole = "[Tone]\n" + "\n".join(f"Score {n}: tone {n}" for n in range(1, 6))
    assert rubric_text(whole) == whole
    with pytest.raises(ArenaError, match="score3_description"):
        rubric_text({k: v for k, v in suite_rubric.items() if k != "score3_description"})


# ----- pairwise grading ------------------------------------------------------------------------

def test_pairwise_prompt_is_fastchat_pair_v2():
    if not JUDGE_PROMPTS.is_file():
        pytest.skip(f"{JUDGE_PROMPTS} is not here")
    prompts = {p["name"]: p for p in map(json.loads, JUDGE_PROMPTS.read_text().splitlines())}
    assert PAIR_SYSTEM_PROMPT == prompts["pair-v2"]["system_prompt"]
    assert PAIR_TEMPLATE == prompts["pair-v2"]["prompt_template"]


def test_pairwise_same_letter_in_both_orders_is_inconsistent_so_a_tie(chat_server):
    server = chat_server(scripted("A is more detailed. [[A]]"))
    verdict = grade_pairwise(OpenAIJudge(server.url, "m"), "Capital of France?", "Paris.", "Lyon, I think.")
    assert (verdict.winner, verdict.consistent, verdict.inconsistent, verdict.unparsed) == ("tie", False, True, 0)
    first, second = (body["messages"][1]["content"] for body in server.bodies())
    assert first.index("Paris.") < first.index("Lyon, I think.")  # order 1: a shown as assistant A
    assert second.index("Lyon, I think.") < second.index("Paris.")  # order 2: b shown as assistant A
    assert "[The Start of Assistant A's Answer]\nLyon, I think.\n" in second
    assert server.bodies()[0]["messages"][0]["content"] == PAIR_SYSTEM_PROMPT


@pytest.mark.parametrize("replies, winner", [
    (("Explanation. [[A]]", "Explanation. [[B]]"), "a"),  # the first answer wins in both orders
    (("[[B]]", "[[A]]"), "b"),
    (("[[C]]", "[[C]]"), "tie"),
])
def test_pairwise_consistent_verdicts(chat_server, replies, winner):
    server = chat_server(scripted(*replies))
    verdict = grade_pairwise(OpenAIJudge(server.url, "m"), "Q?", "answer one", "answer two")
    assert verdict == PairwiseVerdict(winner, replies[0], replies[1], consistent=True, unparsed=0)


def test_pairwise_unreadable_order_gives_no_winner(chat_server):
    server = chat_server(scripted("Both fine.", "Both fine.", "[[B]]"))
    verdict = grade_pairwise(OpenAIJudge(server.url, "m"), "Q?", "one", "two", retries=1)
    assert (verdict.winner, verdict.unparsed, verdict.consistent, verdict.inconsistent) == (None, 1, False, False)
    assert len(server.requests) == 3  # order 1 asked twice, order 2 once


# ----- the OpenAI-compatible client --------------------------------------------------------------

def test_api_key_is_sent_as_bearer_from_the_env_var(chat_server, monkeypatch):
    monkeypatch.setenv("ARENA_TEST_JUDGE_KEY", "sk-test-123")
    server = chat_server(scripted("hello"))
    reply = OpenAIJudge(server.url, "judge-7b", api_key_env="ARENA_TEST_JUDGE_KEY").complete(
        [{"role": "user", "content": "hi"}])
    assert reply == "hello" and reply.finish_reason == "stop"
    request = server.requests[0]
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    assert request["body"] == {"model": "judge-7b", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    monkeypatch.delenv("ARENA_TEST_JUDGE_KEY")
    OpenAIJudge(server.url, "judge-7b", api_key_env="ARENA_TEST_JUDGE_KEY").complete([{"role": "user", "content": "hi"}])
    assert "Authorization" not in server.requests[1]["headers"]


def one_line_error(judge: OpenAIJudge) -> str:
    with pytest.raises(ArenaError) as caught:
        judge.complete([{"role": "user", "content": "hi"}])
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"judge {judge.url}: ")
    return message


def test_closed_port_is_one_line_error():
    assert "cannot connect" in one_line_error(OpenAIJudge(f"http://127.0.0.1:{closed_port()}/v1", "m"))


def test_http_500_is_one_line_error_without_the_key(chat_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-456")
    server = chat_server(lambda body: Reply(status=500, body='{"error": "model overloaded"}\nmore'))
    message = one_line_error(OpenAIJudge(server.url, "m"))
    assert "HTTP 500" in message and "model overloaded" in message and "sk-secret-456" not in message


@pytest.mark.parametrize("body", ["this is not json", '{"choices": []}', '{"choices": [{"message": {}}]}',
                                  '{"choices": [{"message": {"content": 5}}]}'])
def test_malformed_bodies_are_one_line_errors(chat_server, body):
    server = chat_server(lambda _: Reply(body=body))
    assert "malformed response" in one_line_error(OpenAIJudge(server.url, "m"))


def test_slow_server_times_out(chat_server):
    server = chat_server(lambda _: Reply("late", delay=1.0))
    assert "no answer within 0.2 s" in one_line_error(OpenAIJudge(server.url, "m", timeout=0.2))


def test_judge_from_spec(tiny_engine, monkeypatch):
    monkeypatch.delenv("ARENA_JUDGE_MODEL", raising=False)
    judge = judge_from_spec("http://127.0.0.1:9/v1?model=qwen2.5-7b")
    assert (judge.base_url, judge.model) == ("http://127.0.0.1:9/v1", "qwen2.5-7b")
    with pytest.raises(ArenaError, match="ARENA_JUDGE_MODEL"):
        judge_from_spec("http://127.0.0.1:9/v1")
    monkeypatch.setenv("ARENA_JUDGE_MODEL", "from-env")
    assert judge_from_spec("https://judge.example/v1").model == "from-env"
    assert isinstance(judge_from_spec("a2", tiny_engine), EngineJudge)
    with pytest.raises(ArenaError, match="not a loaded variant"):
        judge_from_spec("nope", tiny_engine)


def test_engine_judge_on_the_tiny_engine_returns_text(tiny_engine):
    judge = EngineJudge(tiny_engine, "a1", SamplingParams(max_new_tokens=6))
    reply = judge.complete([{"role": "user", "content": "Grade this answer."}])
    assert isinstance(reply, str) and isinstance(reply, Completion)
    assert reply.finish_reason in ("stop", "length")
    grade = grade_absolute(judge, "Say hi.", "Hi!", retries=0)  # a random model: any outcome, but counted
    assert grade.attempts == 1 and grade.parsed == (grade.score is not None)


# ----- agreement with votes --------------------------------------------------------------------

def vote(prompt: str, a: str, b: str, winner: str, earlier: list[dict] | None = None) -> Vote:
    def side(name):
        return (earlier or []) + [{"role": "user", "content": prompt}, {"role": "assistant", "content": name}]
    return Vote(a, b, winner, side(a), side(b))


def verdict(winner):
    return PairwiseVerdict(winner, "", "", consistent=winner != "tie", unparsed=int(winner is None))


def test_agreement_with_votes():
    verdicts = {("p1", "base", "pirate"): verdict("a"), ("p2", "base", "pirate"): verdict("a"),
                ("p3", "base", "pirate"): verdict("tie"), ("p4", "base", "pirate"): verdict("b"),
                ("p5", "base", "pirate"): verdict(None), ("p7", "base", "pirate"): verdict("a")}
    votes = [vote("p1", "base", "pirate", "a"),
             vote("p2", "pirate", "base", "b"),  # the same pair the other way round: base wins both
             vote("p3", "base", "pirate", "tie", earlier=[{"role": "user", "content": "p0"},
                                                            {"role": "assistant", "content": "x"}]),
             vote("p4", "base", "pirate", "both_bad"),
             vote("p5", "base", "pirate", "a"),
             vote("p6", "base", "pirate", "a"),
             vote("p7", "base", "pirate", "b")]
    as_tie = agreement_with_votes(verdicts, votes)
    assert (as_tie.compared, as_tie.agreed, as_tie.rate) == (5, 3, 0.6)
    assert (as_tie.both_bad, as_tie.unparsed, as_tie.no_verdict, as_tie.both_bad_as) == (1, 1, 1, "tie")
    assert "3 of 5 votes (60.0%)" in as_tie.summary() and "counted as ties" in as_tie.summary()
    skipped = agreement_with_votes(verdicts, votes, both_bad="skip")
    assert (skipped.compared, skipped.agreed, skipped.rate, skipped.both_bad) == (4, 3, 0.75, 1)
    assert agreement_with_votes({}, votes).rate is None
    with pytest.raises(ArenaError):
        agreement_with_votes(verdicts, votes, both_bad="drop")


def test_a_multi_turn_case_follows_each_variants_own_answers(tiny_engine, chat_server, tmp_path):
    """MT-bench's second turn: asked after the variant's own first answer; the judge sees that conversation."""
    from evaluation.report import write_report
    from evaluation.runner import EvalConfig, run_evaluation

    server = chat_server(lambda body: "Good. [RESULT] 5")
    suite = tmp_path / "two_turns.jsonl"
    suite.write_text(json.dumps({
        "id": "mt-1", "category": "writing", "turns": ["Say hi.", "Now say bye."], "reference_turns": ["Hi!", "Bye!"],
        "check": {"type": "judge", "rubric": "Is it helpful?"}}) + "\n", encoding="utf-8")
    cfg = EvalConfig(suite=str(suite), variants=["base", "a1"], max_new_tokens=8)
    run = run_evaluation(tiny_engine, cfg, tmp_path, judge=OpenAIJudge(server.url, "judge"))
    by_turn = {(r.case_id, r.variant): r for r in run.results}
    assert sorted(by_turn) == [("mt-1", "a1"), ("mt-1", "base"), ("mt-1#2", "a1"), ("mt-1#2", "base")]
    params = SamplingParams(max_new_tokens=8)
    for variant in ("base", "a1"):
        first = by_turn[("mt-1", variant)].answer
        assert first == tiny_engine.generate(variant, "Say hi.", params=params).text
        conversation = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": first},
                        {"role": "user", "content": "Now say bye."}]
        assert by_turn[("mt-1#2", variant)].answer == tiny_engine.generate(variant, conversation, params=params).text
        assert by_turn[("mt-1#2", variant)].prompt == "Now say bye."
    prompts = [body["messages"][1]["content"] for body in server.bodies()]
    first_turn = [p for p in prompts if "Earlier in this conversation" not in p]
    second_turn = [p for p in prompts if "Earlier in this conversation" in p]
    assert len(first_turn) == len(second_turn) == 2
    assert all("Say hi." in p and "(Score 5):\nHi!" in p for p in first_turn)
    for variant, prompt in zip(("base", "a1"), second_turn):
        assert f"User: Say hi.\n\nAssistant: {by_turn[('mt-1', variant)].answer}" in prompt
        assert "[The question to answer now]\nNow say bye." in prompt and "(Score 5):\nBye!" in prompt
    assert run.judge_graded == 4 and all(r.passed for r in run.results)
    report = write_report(run)["markdown"].read_text()
    assert "Cases: 1 (2 turns)." in report
    assert "| 2 | 100.0 [100.0, 100.0] (n=1) | 100.0 [100.0, 100.0] (n=1) |" in report  # the second turn's row
    # A rerun reuses the stored answers of both turns.
    again = run_evaluation(tiny_engine, cfg, tmp_path, judge=OpenAIJudge(server.url, "judge"))
    assert all(r.reused for r in again.results)
    assert [r.answer for r in again.results] == [r.answer for r in run.results]
