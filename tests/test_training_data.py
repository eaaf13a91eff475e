"""Training data: real files in every format, row-level reasons, and loss masks checked token by token.

Everything runs on the shared public files and the real SmolLM2 tokenizer and chat template; other
templates (TinyLlama's zephyr, a Llama 3 style one) are set on a second copy of that real tokenizer.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from tests.helpers import shared_data
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

from kernel.errors import ArenaError
from training.data import TOOLS_PREAMBLE, Example, load_dataset, split_examples
from training.encoding import (IGNORE, DataCollator, encode, encode_all, loss_runs, pack, preview,
                               render)

DATA = shared_data()
ALPACA, GLAIVE, DPO = DATA / "alpaca_en_demo.json", DATA / "glaive_toolcall_en_demo.json", DATA / "dpo_en_demo.json"
ZEPHYR_TEMPLATE = (  # TinyLlama-1.1B-Chat-v1.0's template, verbatim
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
LLAMA3_TEMPLATE = (  # Meta-Llama-3-8B-Instruct's template, verbatim
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a primary colour."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Another one, please?"},
    {"role": "assistant", "content": "Blue, and then yellow."},
]


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    return AutoTokenizer.from_pretrained(default_model_path)


@pytest.fixture(scope="module")
def other_tokenizer(default_model_path):
    """A second copy of the real tokenizer, free to take other templates and tokens."""
    return AutoTokenizer.from_pretrained(default_model_path)


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def jsonl(folder: Path, name: str, rows: list) -> Path:
    return write(folder, name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def loss_texts(tokenizer, item) -> list[str]:
    return [text for carries, text in loss_runs(tokenizer, item) if carries]


def expected_answers(messages: list[dict], end: str) -> list[str]:
    return [m["content"] + end for m in messages if m["role"] == "assistant"]


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


# ----- loss masks ---------------------------------------------------------------------------------

def test_only_assistant_answers_and_end_of_turn_carry_loss(tokenizer):
    item = encode(Example(CHAT, row=1), tokenizer, max_length=512)
    assert loss_texts(tokenizer, item) == ["Red.<|im_end|>", "Blue, and then yellow.<|im_end|>"]
    assert tokenizer.decode(item.input_ids) == render(tokenizer, CHAT)  # exactly the template's text
    for token, label in zip(item.input_ids, item.labels):
        assert label in (IGNORE, token)
    masked = "".join(text for carries, text in loss_runs(tokenizer, item) if not carries)
    assert "Name a primary colour." in masked and "You are terse." in masked and "<|im_start|>assistant\n" in masked


def test_loss_mask_on_real_rows(tokenizer):
    for path, index in ((ALPACA, 5), (GLAIVE, 0)):
        examples, _ = load_dataset(path)
        item = encode(examples[index], tokenizer, max_length=4096)
        assert loss_texts(tokenizer, item) == expected_answers(examples[index].messages, "<|im_end|>")
        loss_text = "".join(loss_texts(tokenizer, item))
        for message in examples[index].messages:
            if message["role"] != "assistant":
                assert message["content"] not in loss_text  # no user, system, tool text learned


def test_loss_on_all(tokenizer):
    item = encode(Example(CHAT, row=1), tokenizer, max_length=512, loss_on="all")
    assert item.labels == item.input_ids


@pytest.mark.parametrize("template,end", [(ZEPHYR_TEMPLATE, "<|im_end|>"), (LLAMA3_TEMPLATE, "<|eot_id|>")])
def test_loss_mask_with_other_templates(other_tokenizer, template, end):
    other_tokenizer.chat_template = template
    llama3_tokens = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]  # special in Llama 3's tokenizer
    other_tokenizer.add_special_tokens({"additional_special_tokens": llama3_tokens})
    item = encode(Example(CHAT, row=1), other_tokenizer, max_length=512)
    assert loss_texts(other_tokenizer, item) == expected_answers(CHAT, end)


def test_loss_mask_without_a_chat_template(other_tokenizer):
    other_tokenizer.chat_template = None  # a base model: the plain transcript inference also uses
    item = encode(Example(CHAT, row=1), other_tokenizer, max_length=512)
    assert other_tokenizer.decode(item.input_ids).startswith("System: You are terse.\nUser: Name a primary colour.\n")
    assert loss_texts(other_tokenizer, item) == [" Red.\n", " Blue, and then yellow.\n"]


def test_tool_results_become_observations_for_templates_without_tool_role(other_tokenizer, tokenizer):
    examples, _ = load_dataset(GLAIVE)
    example = examples[0]
    observation = next(m["content"] for m in example.messages if m["role"] == "tool")
    chatml = encode(example, tokenizer, max_length=4096)
    assert "<|im_start|>tool\n" + observation in tokenizer.decode(chatml.input_ids)
    other_tokenizer.chat_template = ZEPHYR_TEMPLATE  # knows no tool role: it would drop the result
    zephyr = encode(example, other_tokenizer, max_length=4096)
    text = other_tokenizer.decode(zephyr.input_ids)
    assert "<|user|>\nObservation: " + observation in text
    assert loss_texts(other_tokenizer, zephyr) == expected_answers(example.messages, "<|im_end|>")


# ----- length ----------------------------------------------------------------------------------

def long_example(row: int = 1) -> Example:
    answer = " ".join(["one two three"] * 60)
    return Example([{"role": "user", "content": "Count."}, {"role": "assistant", "content": answer}], row)


def test_truncate_keeps_the_start_and_drop_refuses(tokenizer):
    whole = encode(long_example(), tokenizer, max_length=4096)
    cut = encode(long_example(), tokenizer, max_length=64)
    assert cut.truncated and not whole.truncated and cut.n_tokens == 64 < whole.n_tokens
    assert cut.input_ids == whole.input_ids[:64] and cut.labels == whole.labels[:64]
    assert encode(long_example(), tokenizer, max_length=64, overlong="drop") is None
    encoded, report = encode_all([long_example(1), Example(CHAT, 2)], tokenizer, max_length=64, overlong="drop")
    assert [e.row for e in encoded] == [2] and report.tokens.over_max_length == 1 and report.rows_kept == 1
    assert report.bad_rows == [(1, f"longer than max_length: {whole.n_tokens} tokens, max_length 64")]


def test_prompt_longer_than_max_length_cannot_train(tokenizer):
    example = Example([{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}], row=7)
    assert encode(example, tokenizer, max_length=64) is None
    encoded, report = encode_all([example, Example(CHAT, 8)], tokenizer, max_length=64)
    assert [e.row for e in encoded] == [8] and report.dropped_by_reason == {"prompt longer than max_length": 1}
    assert re.fullmatch(r"prompt longer than max_length: \d+ prompt tokens, max_length 64", report.bad_rows[0][1])
    assert report.bad_rows[0][0] == 7


# ----- split, batches, preview ---------------------------------------------------------------------

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


def test_collator_pads_to_the_longest_in_the_batch(tokenizer):
    examples, _ = load_dataset(ALPACA)
    encoded, _ = encode_all(examples[:8], tokenizer, max_length=128)
    short, long_ = sorted(encoded[:2], key=lambda e: e.n_tokens)
    batch = DataCollator.for_tokenizer(tokenizer)([short, long_])
    width = long_.n_tokens
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    pad = width - short.n_tokens
    assert batch["input_ids"][0].tolist() == short.input_ids + [tokenizer.pad_token_id] * pad
    assert batch["labels"][0].tolist() == short.labels + [IGNORE] * pad
    assert batch["attention_mask"][0].tolist() == [1] * short.n_tokens + [0] * pad
    assert batch["input_ids"][1].tolist() == long_.input_ids and batch["attention_mask"][1].all()
    assert DataCollator(tokenizer.pad_token_id, pad_to_multiple_of=64)([short])["input_ids"].shape[1] % 64 == 0
    # Trainer's group_by_length reads lengths from the rows themselves
    sampler = LengthGroupedSampler(batch_size=2, dataset=encoded)
    assert sampler.lengths == [e.n_tokens for e in encoded]


def test_pack_resets_positions_and_masks_across_examples(tokenizer, default_model_path):
    encoded, _ = encode_all([Example(CHAT, 1), Example(CHAT[1:3], 2), long_example(3)], tokenizer, max_length=256)
    blocks = pack(encoded, max_length=256)
    first, second = encoded[0], encoded[1]
    assert blocks[0]["input_ids"] == first.input_ids + second.input_ids
    assert blocks[0]["labels"] == first.labels + second.labels  # their first labels are IGNORE already
    assert blocks[0]["position_ids"] == list(range(first.n_tokens)) + list(range(second.n_tokens))
    assert all(len(b["input_ids"]) <= 256 for b in blocks) and len(blocks) == 2
    batch = DataCollator.for_tokenizer(tokenizer)(blocks)
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    width, third = batch["input_ids"].shape[1], encoded[2].n_tokens  # padding: a pseudo-example of its own
    assert batch["position_ids"][1].tolist() == list(range(third)) + list(range(width - third))
    # The packed second example gives the same logits as alone: attention does not cross examples.
    model = AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        packed = model(**batch).logits[0]
        alone = model(input_ids=torch.tensor([second.input_ids])).logits[0]
    assert torch.allclose(packed[first.n_tokens:first.n_tokens + second.n_tokens], alone, atol=1e-4)


def test_preview_marks_exactly_the_loss_tokens(tokenizer):
    examples, _ = load_dataset(GLAIVE)
    shown = preview(examples, tokenizer, n=2, max_length=512)
    assert shown.count("<h4>row ") == 2
    for example, section in zip(examples[:2], shown.split("<h4>")[1:]):
        item = encode(example, tokenizer, max_length=512)
        marked = [html.unescape(m) for m in re.findall(r"<mark>(.*?)</mark>", section, re.S)]
        assert marked == loss_texts(tokenizer, item)
        body = re.search(r"<pre[^>]*>(.*)</pre>", section, re.S).group(1)
        assert html.unescape(re.sub(r"</?mark>", "", body)) == tokenizer.decode(item.input_ids)
    assert "<|im_start|>tool" in html.unescape(shown) and "<mark>" not in shown.split("<pre")[0]


def test_preview_says_why_a_row_is_not_trained(tokenizer):
    example = Example([{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}], row=4)
    assert "row 4: not trained (prompt longer than max_length" in preview([example], tokenizer, max_length=64)
