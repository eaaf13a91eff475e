"""LLM judges (Prometheus 2 absolute grades, MT-bench pairwise verdicts in both orders), their agreement
with Arena votes, and instruction-data generation with a teacher.

Nothing is mocked: the "remote" judge and teacher is a real HTTP server on 127.0.0.1 speaking the OpenAI
chat completions route, answering with contents each test chooses per request; the local judge is the
real tiny engine.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import shared_data

from evaluation.generate_data import generate_data, load_template, looks_cut_off, read_texts
from evaluation.judge import (
    ABS_SYSTEM_PROMPT, PAIR_SYSTEM_PROMPT, PAIR_TEMPLATE, Completion, EngineJudge, OpenAIJudge, PairwiseVerdict,
    agreement_with_votes, grade_absolute, grade_pairwise, judge_from_spec, parse_result, rubric_text,
)
from evaluation.votes import Vote
from models.config import ArenaError, SamplingParams
from training.data import load_dataset

JUDGE_PROMPTS = shared_data() / "judge_prompts.jsonl"


# ----- a real OpenAI-compatible server ---------------------------------------------------------

class Reply:
    """What the server answers: a chat completion with this content, or a raw status and body."""

    def __init__(self, content: str = "", finish_reason: str = "stop", status: int = 200,
                 body: str | None = None, delay: float = 0.0):
        self.content, self.finish_reason, self.status, self.body, self.delay = (
            content, finish_reason, status, body, delay)

    def encoded(self) -> bytes:
        if self.body is not None:
            return self.body.encode()
        return json.dumps({"id": "cmpl-1", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": self.content},
             "finish_reason": self.finish_reason}]}).encode()


class ChatServer:
    """Records every request (headers and JSON body); `respond(body)` picks the Reply (or a str content)."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"headers": dict(self.headers), "body": body})
                reply = server.respond(body)
                reply = Reply(reply) if isinstance(reply, str) else reply
                time.sleep(reply.delay)
                data = reply.encoded()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    started = []

    def start(respond) -> ChatServer:
        server = ChatServer(respond)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def scripted(*replies):
    """Answers in turn; the last one is repeated."""
    queue = list(replies)
    return lambda body: queue.pop(0) if len(queue) > 1 else queue[0]


def closed_port() -> int:
    with socket.socket() as probe:  # free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


# ----- dataset generation ----------------------------------------------------------------------

VALID = '{"agree": "I agree, the battery easily lasts all day.", "disagree": "Mine died after two hours."}'
# review text -> the teacher's replies in turn (the last repeats)
TEACHER = {
    "Battery life is superb.": [VALID],
    "The screen is gorgeous.": ['{"agree": "Totally, colours are vivid and bright.", '
                                '"disagree": "It looks washed out to me.",}'],
    "Shipping was fast.": ['```json\n{"agree": "Yes, my parcel came next day.", '
                           '"disagree": "Mine took three weeks to arrive."}\n```'],
    "Sound quality is great.": ['{"agree": "The speakers are crisp", "disagree": "The bass is mudd'],
    "Fair price for what you get.": ['{"agree": "Agreed, good value."}'],
    "Battery lasts forever.": ['{"agree": "I agree, the battery easily lasts all day!", '
                               '"disagree": "Mine died after two hours!"}'],
    "The case feels cheap.": ["What a fun review to reply to! I think people will agree."],
    "Setup took five minutes.": ['{"agree": "Same here"}',
                                 '{"agree": "Same here, the app guided me through it.", '
                                 '"disagree": "It took me an hour to pair it."}'],
    "The keyboard is too loud.": [Reply('{"agree": "Yes, it clacks a lot.", "disagree": "I like the sound."}',
                                        finish_reason="length")],
    "The support team never answered.": [Reply(status=500, body='{"error": "overloaded"}')],
}
REVIEWS = list(TEACHER)[:9] + [""] + list(TEACHER)[9:]  # row 10 has no text


def review_of(body: dict) -> str:
    first = body["messages"][0]["content"]
    return next(review for review in TEACHER if f"\n\n{review}\n\n" in first)


def teacher_server(chat_server) -> ChatServer:
    asked: dict[str, int] = {}

    def respond(body):
        review = review_of(body)
        replies = TEACHER[review]
        asked[review] = asked.get(review, 0) + 1
        return replies[min(asked[review], len(replies)) - 1]

    return chat_server(respond)


def write_reviews_csv(path: Path) -> Path:
    lines = ["id,review"] + [f'{n},"{text}"' if text else f"{n}," for n, text in enumerate(REVIEWS, 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def counts(report) -> tuple:
    return report.inputs, report.kept, report.rows, report.repaired, report.retried, report.rejected_by_reason


EXPECTED = (11, 4, 8, 2, 3, {"truncated": 2, "schema": 1, "duplicate": 1, "invalid_json": 1, "no_text": 1,
                             "teacher_error": 1})
EXPECTED_REJECTS = [(4, "truncated"), (5, "schema"), (6, "duplicate"), (7, "invalid_json"), (9, "truncated"),
                    (10, "no_text"), (11, "teacher_error")]


def test_generation_counts_outputs_rejects_and_resume(chat_server, tmp_path):
    server = teacher_server(chat_server)
    source, output = write_reviews_csv(tmp_path / "reviews.csv"), tmp_path / "out" / "replies.json"
    report = generate_data(source, "review", "review_replies", OpenAIJudge(server.url, "teacher"), output)
    assert counts(report) == EXPECTED and report.resumed == 0 and report.stopped == ""
    asked = [review_of(body) for body in server.bodies()]
    assert {r: asked.count(r) for r in TEACHER} == {
        "Battery life is superb.": 1, "The screen is gorgeous.": 1, "Shipping was fast.": 1,
        "Sound quality is great.": 1,  # truncated: dropped, not re-asked
        "Fair price for what you get.": 3, "Battery lasts forever.": 1, "The case feels cheap.": 3,
        "Setup took five minutes.": 2, "The keyboard is too loud.": 1, "The support team never answered.": 1}
    retry = next(b for b in server.bodies()
                 if review_of(b) == "Setup took five minutes." and len(b["messages"]) > 1)
    assert retry["messages"][1] == {"role": "assistant", "content": '{"agree": "Same here"}'}
    assert retry["messages"][2]["content"] == (
        "Your previous answer was invalid: disagree: field required. Reply with JSON only.")

    rows = json.loads(output.read_text())
    assert rows[0] == {"instruction": "Write a reply that agrees with this review.",
                       "input": "Battery life is superb.", "output": "I agree, the battery easily lasts all day."}
    assert [r["input"] for r in rows[::2]] == ["Battery life is superb.", "The screen is gorgeous.",
                                               "Shipping was fast.", "Setup took five minutes."]
    examples, dataset = load_dataset(output)
    assert dataset.format == "alpaca" and dataset.rows_kept == 8 and not dataset.dropped_by_reason
    assert examples[1].messages[-2:] == [
        {"role": "user", "content": "Write a reply that disagrees with this review.\n\nBattery life is superb."},
        {"role": "assistant", "content": "Mine died after two hours."}]

    rejects = [json.loads(line) for line in (tmp_path / "out" / "replies.rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in rejects] == EXPECTED_REJECTS
    assert "disagree" in rejects[1]["detail"] and "ROUGE-L 1.00" in rejects[2]["detail"]
    assert "HTTP 500" in rejects[-1]["detail"] and rejects[0]["answer"].endswith("The bass is mudd")

    before = len(server.requests)
    again = generate_data(source, "review", "review_replies", OpenAIJudge(server.url, "teacher"), output,
                          progress=False)
    assert counts(again) == EXPECTED and again.resumed == 10
    assert [review_of(b) for b in server.bodies()[before:]] == [
        "The support team never answered."]  # teacher errors are asked again; nothing else is
    assert json.loads(output.read_text()) == rows

    with pytest.raises(ArenaError, match="other input, field or template"):
        generate_data(source, "review", "qa_pairs", OpenAIJudge(server.url, "teacher"), output, progress=False)


def test_a_teacher_that_is_down_stops_the_run(tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(f"text number {n}" for n in range(1, 9)) + "\n")
    teacher = OpenAIJudge(f"http://127.0.0.1:{closed_port()}/v1", "m")
    report = generate_data(source, None, "qa_pairs", teacher, tmp_path / "qa.json", progress=False)
    assert report.rejected_by_reason == {"teacher_error": 5} and "5 times in a row" in report.stopped
    assert (report.inputs, report.pending) == (8, 3) and "3 not asked" in report.summary()
    assert json.loads((tmp_path / "qa.json").read_text()) == []
    progress = (tmp_path / "qa.progress.jsonl").read_text().splitlines()
    assert len(progress) == 1 and "settings" in json.loads(progress[0])  # nothing recorded as done


def test_custom_yaml_template_and_jsonl_input(chat_server, tmp_path):
    template = tmp_path / "summary.yaml"
    template.write_text('prompt: "Summarise in one sentence: {text}. Keys like {\\"summary\\": ...}"\n'
                        "fields: [summary, title]\n"
                        "rows:\n  - instruction: 'Summarise this text.'\n    input: '{text}'\n"
                        "    output: '{title}: {summary}'\n")
    source = tmp_path / "docs.jsonl"
    source.write_text('{"body": "LoRA trains small matrices."}\n{"other": 1}\n{"body": "QLoRA quantises."}\n')
    server = chat_server(lambda body: json.dumps({"summary": f"about {len(body['messages'][0]['content'])}",
                                                  "title": "T {x}"}))
    report = generate_data(source, "body", str(template), OpenAIJudge(server.url, "m"), tmp_path / "s.json",
                           dedupe_threshold=1.0, progress=False)
    assert (report.kept, report.rejected_by_reason) == (2, {"no_text": 1})
    rows = json.loads((tmp_path / "s.json").read_text())
    assert rows[0]["input"] == "LoRA trains small matrices." and rows[0]["output"].startswith("T {x}: about ")
    request = server.bodies()[0]["messages"][0]["content"]
    assert 'Summarise in one sentence: LoRA trains small matrices.. Keys like {"summary": ...}' in request
    assert request.endswith('Reply with JSON only: one object with the text fields "summary", "title".')


def test_template_and_input_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"prompt": "no placeholder", "fields": ["a"]}')
    with pytest.raises(ArenaError, match="contains {text}"):
        load_template(str(bad))
    bad.write_text('{"prompt": "{text}", "fields": ["question", "answer"]}')
    with pytest.raises(ArenaError, match="give 'rows'"):
        load_template(str(bad))
    bad.write_text('{"prompt": "{text}", "fields": ["q"], "rows": [{"instruction": "{q}", "output": "{nope}"}]}')
    with pytest.raises(ArenaError, match="nope"):
        load_template(str(bad))
    bad.write_text('{"prompt": "{text}", "fields": ["instruction", "output"]}')
    assert load_template(str(bad)).to_rows(
        load_template(str(bad)).schema(instruction="Do it", output="Done"), "src") == [
        {"instruction": "Do it", "input": "", "output": "Done"}]
    with pytest.raises(ArenaError, match="unknown template 'nope'"):
        load_template("nope")
    csv_file = tmp_path / "r.csv"
    csv_file.write_text("id,review\n1,good\n")
    with pytest.raises(ArenaError, match="no row has the field 'text'.*id, review"):
        read_texts(csv_file, "text")
    with pytest.raises(ArenaError, match="give the field"):
        read_texts(csv_file, None)


@pytest.mark.parametrize("reply, cut", [
    ('{"a": "b"', True), ('{"a": "b", "c": "unfinished', True), ('{"a": "x \\" still', True),
    ('{"a": "b",}', False), ('```json\n{"a": "b"}\n```', False), ("no json here", False),
    ('{"a": "b"} and prose with an apostrophe\'s {', False),
])
def test_looks_cut_off(reply, cut):
    assert looks_cut_off(reply) is cut


def test_command_line_with_an_http_teacher(chat_server, tmp_path, capsys):
    from evaluation.generate_data import main

    source = tmp_path / "facts.txt"
    source.write_text("Water boils at 100 C at sea level.\n\nThe Moon orbits the Earth.\n")
    server = chat_server(lambda body: json.dumps(
        {"question": f"What does this say? ({len(body['messages'][0]['content'])})", "answer": "A fact."}))
    code = main([str(source), "--template", "qa_pairs", "--teacher", f"{server.url}?model=teacher",
                 "--output", str(tmp_path / "qa.json"), "--no-progress", "--dedupe-threshold", "1"])
    assert code == 0 and "2 of 2 inputs kept (2 rows" in capsys.readouterr().out
    assert server.requests[0]["body"]["model"] == "teacher"
    assert main([str(tmp_path / "missing.txt"), "--teacher", f"{server.url}?model=t", "--output",
                 str(tmp_path / "x.json")]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err


def test_generation_with_the_tiny_engine_as_teacher(tiny_engine, tmp_path):
    source = tmp_path / "two.txt"
    source.write_text("first text\nsecond text\n")
    teacher = EngineJudge(tiny_engine, "base", SamplingParams(max_new_tokens=12))
    report = generate_data(source, None, "instruction", teacher, tmp_path / "g.json", max_retries=1, progress=False)
    assert report.inputs == 2 and report.kept + sum(report.rejected_by_reason.values()) == 2  # every input accounted


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
