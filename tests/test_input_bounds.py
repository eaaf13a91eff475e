"""One file or one row cannot make the program do unbounded work: sizes are capped, long text is cut first.

A 10 MB single-line training row used to be tokenised whole (5 million tokens, 4.6 GB resident)
although max_length kept 256 of them. Now a row is cut to what max_length can use before it is
tokenised, and still trains exactly as its truncation did; files and rows past fixed sizes are
refused with one line naming the file or the row. The same holds for evaluation suites and for
inference.py's prompt files. Files over a size limit are sparse: their size is real, their bytes
are never written.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import inference
from evaluation.suite import MAX_CASE_CHARS, load_suite
from kernel.errors import ArenaError
from kernel.files import MAX_LINE_CHARS
from training.data import MAX_ROW_CHARS, Example, load_dataset
from training.encoding import encode_all, fit_length, full_encoding
from tests.helpers import in_process, one_line_error
from kernel.files import MAX_TEXT_BYTES as MAX_DATASET_BYTES

MAX_LENGTH = 64


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def whole_then_truncated(example: Example, tokenizer) -> tuple[list[int], list[int]]:
    """What training saw before: the whole row tokenised, then cut to max_length."""
    ids, labels = full_encoding(example, tokenizer)
    item = fit_length(ids, labels, example.row, MAX_LENGTH, "truncate")
    return item.input_ids, item.labels


LONG = " ".join(f"word{i % 97}" for i in range(50_000))  # 340 KB: under the row limit, ~100k tokens
EXAMPLES = {
    "long-answer": Example([{"role": "user", "content": "Tell me a story."},
                            {"role": "assistant", "content": LONG}], row=1),
    "long-text": Example([], row=1, text=LONG),
    "many-turns": Example([m for i in range(150) for m in ({"role": "user", "content": f"Question {i}?"},
                                                         {"role": "assistant", "content": f"Answer {i}."})], row=1),
    "long-second-question": Example([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                     {"role": "user", "content": LONG}, {"role": "assistant", "content": "Yes."}],
                                    row=1),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_long_row_is_cut_before_tokenising_and_trains_as_its_truncation(tokenizer, name):
    example = EXAMPLES[name]
    [item], report = encode_all([example], tokenizer, max_length=MAX_LENGTH)
    assert (item.input_ids, item.labels) == whole_then_truncated(example, tokenizer)
    assert item.truncated and report.tokens.over_max_length == 1
    assert report.tokens.max < 10_000  # tokenised: a few thousand tokens, not the row's ~100,000


def test_a_prompt_cut_before_its_answer_is_still_too_long(tokenizer):
    example = Example([{"role": "user", "content": LONG}, {"role": "assistant", "content": "Yes."}], row=7)
    encoded, report = encode_all([example], tokenizer, max_length=MAX_LENGTH)
    assert encoded == [] and report.bad_rows == [
        (7, f"prompt longer than max_length: over {MAX_LENGTH} tokens before the first answer")]


def test_a_row_over_the_size_limit_is_dropped_by_number(tmp_path):
    rows = [{"instruction": f"Say hi {i}.", "output": "Ahoy!"} for i in range(3)]
    rows.insert(1, {"instruction": "Repeat this.", "output": "x" * MAX_ROW_CHARS})
    dataset = tmp_path / "rows.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, report = load_dataset(dataset)
    assert [e.row for e in examples] == [1, 3, 4]
    size = MAX_ROW_CHARS + len("Repeat this.") + len("instructionoutput")
    assert report.bad_rows == [(2, f"row too large: {size:,} characters, more than the {MAX_ROW_CHARS:,} allowed")]


def test_a_dataset_over_the_size_limit_is_refused_unread(tmp_path):
    big = sparse(tmp_path / "huge.jsonl", MAX_DATASET_BYTES + 1)
    with pytest.raises(ArenaError) as error:
        load_dataset(big)
    assert str(error.value) == f"{big}: the file is 256.0 MB, more than the limit of 256.0 MB; split it"


# ----- evaluation suites -------------------------------------------------------------------------

def test_a_suite_over_the_size_limit_is_refused(tmp_path):
    big = sparse(tmp_path / "huge.jsonl", 64 * 2**20 + 1)
    with pytest.raises(ArenaError, match=r"huge.jsonl: the suite file is 64.0 MB, more than the limit of 64.0 MB"):
        load_suite(big)


def test_an_overlong_suite_line_is_skipped_by_number(tmp_path):
    case = {"id": 1, "category": "c", "prompt": "Hi", "check": {"type": "contains", "value": "x"}}
    long_case = {**case, "id": 2, "prompt": "x" * MAX_CASE_CHARS}
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps(case) + "\n" + json.dumps(long_case) + "\n")
    loaded = load_suite(suite)
    assert [c.id for c in loaded.cases] == [1]
    [problem] = loaded.problems
    assert problem.line == 2 and problem.reason.startswith("the line is ") and "more than the" in problem.reason


# ----- inference.py prompt files -----------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ({"prompt": "x" * MAX_LINE_CHARS}, f"line 2: {MAX_LINE_CHARS + 14:,} characters, more than the "
                                       f"{MAX_LINE_CHARS:,} allowed"),
    ({"prompt": "x" * 700_000}, "line 2: the prompt is 700,000 characters, more than this model's context can hold"),
], ids=["line-over-the-limit", "prompt-over-the-context"])
def test_an_oversized_prompt_line_is_refused_by_number(tmp_path, tiny_model_path, capsys, line, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps(line) + "\n")
    proc = in_process(inference.main, ["--input", prompts, "--output", tmp_path / "o.jsonl",
                                       "--base", tiny_model_path, "--data-dir", tmp_path / "data"], capsys)
    assert one_line_error(proc, 2) == f"error: {prompts} {message}"
    assert not (tmp_path / "o.jsonl").exists()  # refused before the first answer
