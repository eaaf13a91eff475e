"""Training rows as tokens: loss masks checked token by token (only the assistant's answers and their
end-of-turn carry loss), other chat templates, truncation, batches, packing and the preview.

Everything runs on the real SmolLM2 tokenizer and chat template; other templates (TinyLlama's zephyr, a
Llama 3 style one) are set on a second copy of that real tokenizer.
"""
from __future__ import annotations

import html
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

from tests.helpers import CHAT, shared_data
from training.data import Example, load_dataset
from training.encoding import (IGNORE, DataCollator, encode, encode_all, loss_runs, pack, preview,
                               render)

DATA = shared_data()
ALPACA, GLAIVE = DATA / "alpaca_en_demo.json", DATA / "glaive_toolcall_en_demo.json"
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


@pytest.fixture(scope="module")
def other_tokenizer(default_model_path):
    """A second copy of the real tokenizer, free to take other templates and tokens."""
    return AutoTokenizer.from_pretrained(default_model_path)


def loss_texts(tokenizer, item) -> list[str]:
    return [text for carries, text in loss_runs(tokenizer, item) if carries]


def expected_answers(messages: list[dict], end: str) -> list[str]:
    return [m["content"] + end for m in messages if m["role"] == "assistant"]


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


# ----- batches, packing, preview -------------------------------------------------------------------

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
