"""Instruction-data generation with a teacher: counts, rejects with reasons, resume, templates, the CLI.

The teacher is a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/chat_server.py), or the tiny engine.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.chat_server import ChatServer, Reply, closed_port

from evaluation.generate_data import generate_data, looks_cut_off, read_texts
from evaluation.judge import EngineJudge, OpenAIJudge
from evaluation.templates import load_template
from kernel.config import ArenaError, SamplingParams
from training.data import load_dataset


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
    """`python -m evaluation generate-data`, the one dataset command: an HTTP teacher needs no local model."""
    from evaluation.__main__ import main

    source = tmp_path / "facts.txt"
    source.write_text("Water boils at 100 C at sea level.\n\nThe Moon orbits the Earth.\n")
    server = chat_server(lambda body: json.dumps(
        {"question": f"What does this say? ({len(body['messages'][0]['content'])})", "answer": "A fact."}))
    code = main(["generate-data", "--input", str(source), "--teacher", f"{server.url}?model=teacher",
                 "--output", str(tmp_path / "qa.json"), "--no-progress", "--dedupe-threshold", "1",
                 "--base", "no-such-model-is-loaded"])
    assert code == 0 and "2 of 2 inputs kept (2 rows" in capsys.readouterr().out
    assert server.requests[0]["body"]["model"] == "teacher"
    assert main(["generate-data", "--input", str(tmp_path / "missing.txt"), "--teacher", f"{server.url}?model=t",
                 "--output", str(tmp_path / "x.json")]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err



def test_generation_with_the_tiny_engine_as_teacher(tiny_engine, tmp_path):
    source = tmp_path / "two.txt"
    source.write_text("first text\nsecond text\n")
    teacher = EngineJudge(tiny_engine, "base", SamplingParams(max_new_tokens=12))
    report = generate_data(source, None, "instruction", teacher, tmp_path / "g.json", max_retries=1, progress=False)
    assert report.inputs == 2 and report.kept + sum(report.rejected_by_reason.values()) == 2  # every input accounted
