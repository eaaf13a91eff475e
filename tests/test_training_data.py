"""Training data as users bring it: real files in every format (the shared public ones and hand-made
rows), row-level reasons for what cannot train, one-line file errors, and the validation split.

How the kept rows become tokens and loss masks: tests/test_training_encoding.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernel.errors import ArenaError
from tests.helpers import CHAT, shared_data
from training.data import TOOLS_PREAMBLE, load_dataset, split_examples
from training.encoding import encode, encode_all

DATA = shared_data()
ALPACA, GLAIVE, DPO = DATA / "alpaca_en_demo.json", DATA / "glaive_toolcall_en_demo.json", DATA / "dpo_en_demo.json"


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def jsonl(folder: Path, name: str, rows: list) -> Path:
    return write(folder, name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


# ----- the shared files --------------------------------------------------------------------------

def test_alpaca_demo_is_detected_and_converted():
    examples, report = load_dataset(ALPACA)
    assert (report.format, report.rows_total, report.rows_kept, report.dropped_by_reason) == ("alpaca", 999, 999, {})
    first = examples[0]
    assert first.row == 1 and [m["role"] for m in first.messages] == ["user", "assistant"]
    assert first.messages[0]["content"] == "Describe a process of making crepes."
    sixth = examples[5].messages  # the first row with an input: joined under the instruction
    assert sixth[0]["content"] == ("Given the parameters of a triangle, find out its perimeter.\n\n"
                                   "Side 1 = 4\nSide 2 = 6\nSide 3 = 8")
    assert sixth[1]["content"].endswith("the perimeter of the triangle is 18 units.")


def test_glaive_toolcall_keeps_calls_observations_and_tools():
    examples, report = load_dataset(GLAIVE)
    assert (report.format, report.rows_total, report.rows_kept) == ("sharegpt", 300, 300)
    first = examples[0].messages
    assert first[0]["role"] == "system" and first[0]["content"].startswith(TOOLS_PREAMBLE)
    assert '"name": "search_recipes"' in first[0]["content"]
    assert "Search for recipes based on ingredients" in first[0]["content"]
    assert [m["role"] for m in first[1:]] == ["user", "assistant", "user", "assistant", "tool", "assistant",
                                              "user", "assistant"]
    call = json.loads(first[4]["content"])
    assert call == {"name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}
    assert first[5]["content"].startswith('{"recipes": [{"name": "Chicken and Bell Pepper Stir Fry"')
    calls = sum(m["role"] == "assistant" and m["content"].startswith('{"name"') for e in examples for m in e.messages)
    tools = sum(m["role"] == "tool" for e in examples for m in e.messages)
    assert calls == tools == 211  # every function_call and observation turn of the file survived


def test_preference_file_is_refused_with_the_reason():
    with pytest.raises(ArenaError, match=r"dpo_en_demo.json: no usable rows as sharegpt \(row 1: preference pair"):
        load_dataset(DPO)


def test_shared_files_token_stats_at_512(tokenizer):
    examples, report = load_dataset(ALPACA)
    encoded, report = encode_all(examples, tokenizer, max_length=512, report=report)
    t = report.tokens
    assert (report.rows_kept, len(encoded), t.rows, t.dropped) == (999, 999, 999, 0)
    assert t.over_max_length == t.truncated == sum(e.truncated for e in encoded) > 0
    assert t.min <= t.median <= t.p95 <= 512 < t.max
    assert all(e.n_tokens <= 512 for e in encoded)

    examples, report = load_dataset(GLAIVE)
    encoded, report = encode_all(examples, tokenizer, max_length=512, report=report)
    dropped = report.dropped_by_reason["prompt longer than max_length"]
    assert report.rows_kept == len(encoded) == 300 - dropped and dropped >= 1
    assert report.tokens.over_max_length == report.tokens.truncated + dropped
    assert report.bad_rows[0][1].startswith("prompt longer than max_length: ")


# ----- small files in each format ----------------------------------------------------------------

def test_jsonl_messages_with_line_numbers(tmp_path):
    path = jsonl(tmp_path, "chat.jsonl", [{"messages": CHAT}, "", {"messages": [
        {"role": "human", "content": "Hi"}, {"role": "gpt", "content": "Hello!"}]}])
    examples, report = load_dataset(path)
    assert report.format == "messages" and [e.row for e in examples] == [1, 3]
    assert examples[0].messages == CHAT
    assert examples[1].messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_messages_with_tools_as_a_list(tmp_path):
    tool = {"name": "add", "parameters": {"type": "object"}}
    row = {"tools": [tool], "messages": [
        {"role": "user", "content": "1+2?"}, {"role": "function_call", "content": {"name": "add", "arguments": [1, 2]}},
        {"role": "observation", "content": "3"}, {"role": "assistant", "content": "3."}]}
    examples, _ = load_dataset(jsonl(tmp_path, "tools.jsonl", [row]))
    assert examples[0].messages == [
        {"role": "system", "content": TOOLS_PREAMBLE + json.dumps(tool)},
        {"role": "user", "content": "1+2?"}, {"role": "assistant", "content": '{"name": "add", "arguments": [1, 2]}'},
        {"role": "tool", "content": "3"}, {"role": "assistant", "content": "3."}]


def test_csv_prompt_completion_and_json_column(tmp_path):
    path = write(tmp_path, "pc.csv", 'prompt,completion,system\n"What is 2+2?",4,\n"Say ""hi""","hi",Be kind\n')
    examples, report = load_dataset(path)
    assert report.format == "prompt_completion" and report.rows_kept == 2
    assert examples[0].messages == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    assert examples[1].messages[0] == {"role": "system", "content": "Be kind"}
    assert examples[1].messages[1]["content"] == 'Say "hi"'

    cell = json.dumps([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]).replace('"', '""')
    path = write(tmp_path, "conv.csv", f'conversations\n"{cell}"\nnot json\n')
    examples, report = load_dataset(path)
    assert report.format == "sharegpt" and [e.row for e in examples] == [1]
    assert report.bad_rows == [(2, "wrong type: conversations must be a list, not str")]


def test_text_in_both_chat_styles_and_plain(tmp_path, tokenizer):
    rows = [
        {"text": "<|user|>\nWhat is red?</s>\n<|assistant|>\nA colour.</s>"},
        {"text": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                 "<|im_start|>assistant\nHello.<|im_end|>\n"},
        {"text": "Once upon a time there was a tokenizer."},
    ]
    examples, report = load_dataset(jsonl(tmp_path, "text.jsonl", rows))
    assert report.format == "text" and report.rows_kept == 3
    assert examples[0].messages == [{"role": "user", "content": "What is red?"},
                                    {"role": "assistant", "content": "A colour."}]
    assert examples[1].messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": "Hello."}]
    assert examples[2].messages == [] and examples[2].text == "Once upon a time there was a tokenizer."
    plain = encode(examples[2], tokenizer, max_length=64)
    assert plain.labels == plain.input_ids  # plain text: every token carries loss
    assert tokenizer.decode(plain.input_ids) == "Once upon a time there was a tokenizer.<|im_end|>"


def test_bad_rows_are_reported_with_row_numbers_and_reasons(tmp_path):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    rows = [
        good,                                                                            # 1
        [1, 2],                                                                          # 2
        {},                                                                              # 3
        {"messages": "hi"},                                                              # 4
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},  # 5
        {"messages": [{"role": "user", "content": "q"}]},                                # 6
        {"instruction": "a", "output": "b"},                                             # 7
        {"foo": 1},                                                                      # 8
        "{broken",                                                                       # 9
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},  # 10
        {"messages": [{"role": "wizard", "content": "q"}]},                              # 11
        good,                                                                            # 12
    ]
    examples, report = load_dataset(jsonl(tmp_path, "bad.jsonl", rows))
    assert [e.row for e in examples] == [1, 12] and (report.rows_total, report.rows_kept) == (12, 2)
    assert report.bad_rows == [
        (2, "not a dict: row is list, expected an object"),
        (3, "empty: no fields"),
        (4, "wrong type: messages must be a list, not str"),
        (5, "bad role order: message 1 is assistant at the start"),
        (6, "bad role order: the last message is user, not assistant"),
        (7, "other format: row is alpaca, the file is messages"),
        (8, "unknown format: none of messages, conversations, instruction, prompt, text"),
        (9, "not valid JSON: Expecting property name enclosed in double quotes"),
        (10, "empty: message 1 (user) is empty"),
        (11, "bad role: messages item 1 has role 'wizard'"),
    ]
    assert report.dropped_by_reason == {"not a dict": 1, "empty": 2, "wrong type": 1, "bad role order": 2,
                                        "other format": 1, "unknown format": 1, "not valid JSON": 1, "bad role": 1}


def test_format_override_names_missing_fields(tmp_path):
    path = write(tmp_path, "a.json", json.dumps([{"instruction": "x"}, {"instruction": "y", "output": 3},
                                                 {"instruction": "z", "output": "ok", "history": [["q", "a"]]}]))
    examples, report = load_dataset(path, format="alpaca")
    assert report.bad_rows == [(1, "missing field: output"), (2, "wrong type: output must be text, not int")]
    assert [m["role"] for m in examples[0].messages] == ["user", "assistant", "user", "assistant"]


def test_file_errors_are_one_line(tmp_path):
    latin1 = b'[{"text": "caf\xe9"}]'
    with pytest.raises(ArenaError, match=rf"latin1.json: not UTF-8 text \(byte {latin1.index(0xE9)}\)"):
        load_dataset(write(tmp_path, "latin1.json", latin1))
    for name, content in (("empty.jsonl", b""), ("blank.csv", b"\n  \n")):
        with pytest.raises(ArenaError, match=rf"{name}: the file is empty"):
            load_dataset(write(tmp_path, name, content))
    with pytest.raises(ArenaError, match="unknown dataset format 'chatml': use one of auto, text, alpaca"):
        load_dataset(ALPACA, format="chatml")
    with pytest.raises(ArenaError, match="cannot detect the format"):
        load_dataset(DATA / "mt_bench_question.jsonl")
    with pytest.raises(ArenaError, match=r"no usable rows as messages \(row 1: bad role order: .*; row 2: empty"):
        load_dataset(jsonl(tmp_path, "none.jsonl", [{"messages": [{"role": "user", "content": "q"}]},
                                                    {"messages": []}]))
    with pytest.raises(ArenaError, match=r"pretty.json line 1: not valid JSON .*; expected a JSON array or JSONL"):
        load_dataset(write(tmp_path, "pretty.json", json.dumps({"messages": CHAT}, indent=2)))
    with pytest.raises(ArenaError, match="no such file"):
        load_dataset(tmp_path / "missing.json")


# ----- the validation split ------------------------------------------------------------------------

def test_split_is_deterministic_with_the_seed():
    examples, _ = load_dataset(ALPACA)
    train, val = split_examples(examples, 0.1, seed=42)
    again_train, again_val = split_examples(examples, 0.1, seed=42)
    _, other_val = split_examples(examples, 0.1, seed=7)
    assert (len(train), len(val)) == (899, 100)
    assert [e.row for e in val] == [e.row for e in again_val] != [e.row for e in other_val]
    assert [e.row for e in train] == [e.row for e in again_train]
    assert sorted(e.row for e in train + val) == list(range(1, 1000))
    assert split_examples(examples[:3], 0.0, seed=1) == (examples[:3], [])


def test_split_with_too_few_rows_says_how_many_are_needed():
    examples, _ = load_dataset(ALPACA)
    with pytest.raises(ArenaError, match="validation_split 0.1 needs at least 5 rows .* the data has 4"):
        split_examples(examples[:4], 0.1, seed=42)
    with pytest.raises(ArenaError, match="validation_split 0.5 needs at least 2 rows .* the data has 1"):
        split_examples(examples[:1], 0.5, seed=42)
    train, val = split_examples(examples[:5], 0.1, seed=42)
    assert (len(train), len(val)) == (4, 1)
