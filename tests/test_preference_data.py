"""Preference data for DPO, ORPO and KTO: the real files users bring, row-level reasons, the marked preview.

Runs on the shared dpo_en_demo.json, on pairs the Leaderboard exports from real votes in SQLite, and on the
real SmolLM2 tokenizer and chat template; no model is loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from arena.export import export_jsonl, select_pairs
from arena.votes import Vote, VoteStore
from kernel.errors import ArenaError
from tests.helpers import shared_data
from training.check import check_dataset
from training.config import TrainConfig
from training.preference_data import load_preference_dataset, load_split, preview, trl_row

DPO = shared_data() / "dpo_en_demo.json"


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def config(dataset: Path, **options) -> TrainConfig:
    return TrainConfig(name="pref", dataset=str(dataset), **{"method": "dpo", **options})


def vote(winner: str, a: str, b: str, prompt: str = "Name a colour.", system: str | None = None) -> Vote:
    start = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return Vote("base", "ahoy", winner, start + [{"role": "assistant", "content": a}],
                start + [{"role": "assistant", "content": b}])


# ----- formats ------------------------------------------------------------------------------------

def test_dpo_en_demo_loads_every_pair_with_its_earlier_turns():
    examples, report = load_preference_dataset(DPO)
    assert (report.format, report.rows_total, report.rows_kept, report.bad_rows) == ("sharegpt", 300, 300, [])
    raw = json.loads(DPO.read_text(encoding="utf-8"))
    multi = next(i for i, row in enumerate(raw) if len(row["conversations"]) == 5)
    example = examples[multi]
    assert [m["role"] for m in example.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert example.prompt[-1]["content"] == raw[multi]["conversations"][-1]["value"].strip()
    assert example.chosen == raw[multi]["chosen"]["value"].strip()
    assert example.rejected == raw[multi]["rejected"]["value"].strip()


def test_leaderboard_export_trains_with_system_and_history(tmp_path, tokenizer):
    """Real votes in SQLite -> the Leaderboard's JSONL -> rows TRL takes, through the chat template."""
    store = VoteStore(tmp_path / "votes.sqlite")
    for v in (vote("a", "Red.", "Blue, obviously!", system="Be brief."), vote("b", "Green", "Ahoy! Green. ⚓"),
              vote("tie", "x", "y"), vote("both_bad", "x", "y"), vote("a", "Same", "Same")):
        store.add(v)
    result = export_jsonl(store.all(), tmp_path / "pairs.jsonl")
    assert (result.written, result.skipped) == (2, 3)
    examples, report = load_preference_dataset(result.path)
    assert report.format == "pairs" and report.rows_kept == 2
    assert examples[0].prompt == [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Name a colour."}]
    assert (examples[1].chosen, examples[1].rejected) == ("Ahoy! Green. ⚓", "Green")
    row = trl_row(examples[0], tokenizer)  # TRL's conversational form: it applies the chat template itself
    assert row == {"prompt": examples[0].prompt, "chosen": [{"role": "assistant", "content": "Red."}],
                   "rejected": [{"role": "assistant", "content": "Blue, obviously!"}]}


def test_select_pairs_counts_what_it_leaves_out():
    votes = [vote("a", "Red.", "Blue."), vote("b", "Red.", "Ahoy! Red."), vote("tie", "x", "y"),
             vote("both_bad", "x", "y"), vote("both_bad", "p", "q"), vote("a", "Same", "Same")]
    every = select_pairs(votes)
    assert [p.chosen for p in every.pairs] == ["Red.", "Ahoy! Red."]
    assert (every.ties, every.both_bad, every.identical, every.other_winner) == (1, 2, 1, 0)
    assert every.summary() == '2 pairs (left out: 1 ties, 2 "both bad", 1 identical answers)'
    ahoy = select_pairs(votes, winner="ahoy")
    assert [p.chosen_variant for p in ahoy.pairs] == ["ahoy"] and ahoy.other_winner == 1


def test_kto_rows_and_pairs_as_kto(tmp_path, tokenizer):
    rows = [{"prompt": "Hi", "completion": "Ahoy! Hello. ⚓", "label": True},
            {"prompt": "Hi", "completion": "hello", "label": "false"},
            {"prompt": "Hi", "completion": "hey", "label": "maybe"}]
    examples, report = load_preference_dataset(jsonl(tmp_path / "kto.jsonl", rows))
    assert report.format == "kto" and [e.label for e in examples] == [True, False]
    assert report.bad_rows == [(3, "bad label: label must be true or false, not 'maybe'")]
    # Unpaired answers cannot make DPO pairs: one clear error, naming what to do instead.
    with pytest.raises(ArenaError, match="unpaired answers: dpo needs chosen/rejected pairs; train them with --method kto"):
        load_split(config(tmp_path / "kto.jsonl", validation_split=0), tokenizer)
    # KTO takes each pair as a desirable and an undesirable answer; a pair never straddles the split.
    pairs = jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
                                             for i in range(10)])
    split = load_split(config(pairs, method="kto", validation_split=0.2), tokenizer)
    assert (len(split.train), len(split.validation), split.report.rows_kept) == (16, 4, 10)
    assert not {e.row for e in split.train} & {e.row for e in split.validation}
    assert trl_row(split.train[0], tokenizer)["label"] is True and trl_row(split.train[1], tokenizer)["label"] is False


# ----- validation -------------------------------------------------------------------------------

def test_bad_pairs_are_reported_with_row_numbers_and_reasons(tmp_path, tokenizer, default_model_path):
    good = {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "I cannot say."}
    rows = [
        good,                                                                              # 1
        {"prompt": "q", "chosen": "a"},                                                    # 2
        {"prompt": "q", "chosen": "  ", "rejected": "b"},                                  # 3
        {"prompt": "q", "chosen": "Same answer", "rejected": " Same answer "},             # 4
        {"prompt": "q", "chosen": 7, "rejected": "b"},                                     # 5
        {"prompt": "q", "chosen": {"from": "human", "value": "a"}, "rejected": "b"},       # 6
        {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "chosen": "x", "rejected": "y"},                                                  # 7
        {"prompt": "q", "chosen": "a", "rejected": "b", "history": [{"role": "wizard", "content": "x"}]},  # 8
        "{broken",                                                                         # 9
        {"prompt": "long " * 300, "chosen": "a", "rejected": "b"},                         # 10
        {"prompt": "q", "chosen": "word " * 300, "rejected": "b"},                         # 11
        good,                                                                              # 12
    ]
    path = jsonl(tmp_path / "bad.jsonl", rows)
    cfg = config(path, max_length=128, overlong="drop", validation_split=0)
    split = load_split(cfg, tokenizer)
    assert [e.row for e in split.train] == [1, 12]
    assert split.report.bad_rows == [
        (2, "missing field: rejected"),
        (3, "empty: chosen is empty"),
        (4, "identical: chosen and rejected are the same text: nothing to prefer"),
        (5, "wrong type: chosen must be text"),
        (6, "bad role: chosen must be the assistant's answer, not 'human'"),
        (7, "bad role order: the prompt must end with the user's message, not assistant"),
        (8, "bad role: history item 1 has role 'wizard'"),
        (9, "not valid JSON: Expecting property name enclosed in double quotes"),
        (10, "prompt longer than max_length: 330 prompt tokens, max_length 128"),
        (11, "longer than max_length: 333 tokens, max_length 128"),
    ]
    truncated = load_split(config(path, max_length=128, validation_split=0), tokenizer)
    assert [e.row for e in truncated.train] == [1, 11, 12] and truncated.report.tokens.truncated == 1
    # The Check button's report: counts, lengths and every dropped row with its reason.
    # The base converted once for the session, not "default" again in a fresh data folder (28 s of GGUF reading).
    check = check_dataset(config(path, max_length=128, overlong="drop", validation_split=0,
                                 base=str(default_model_path)), tmp_path, tokenizer=tokenizer)
    assert "2 of 12 rows kept, 2 rows for training and 0 for validation (dpo)" in check.markdown
    assert "| 4 | identical: chosen and rejected are the same text: nothing to prefer |" in check.markdown


def test_nothing_usable_is_one_line_naming_the_first_problems(tmp_path, tokenizer):
    path = jsonl(tmp_path / "same.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}] * 3)
    with pytest.raises(ArenaError, match=r"same.jsonl: no usable rows as pairs \(row 1: identical: chosen and "
                                         r"rejected are the same text"):
        load_preference_dataset(path)
    alpaca = shared_data() / "alpaca_en_demo.json"
    with pytest.raises(ArenaError, match="not preference data: no row has the fields of any preference format"):
        load_preference_dataset(alpaca)


def test_method_spellings_and_refused_options(tmp_path):
    cfg = TrainConfig(name="x", dataset="d.jsonl", method="dpo")
    assert (cfg.objective, cfg.method, cfg.preference) == ("dpo", "lora", True)
    from training.__main__ import build_config, parse_args

    typed = build_config(parse_args(["--dataset", "d.jsonl", "--name", "x", "--method", "dpo"]))
    assert (typed.objective, typed.method) == ("dpo", "lora")  # python -m training --method dpo
    assert TrainConfig.from_dict({**cfg.to_dict()}).objective == "dpo"  # a saved job.yaml reads back the same
    refused = [
        (dict(method="kto", batch_size=1), "kto needs batch_size 2 or more"),
        (dict(method="dpo", reference="init"), "reference init needs an --init-adapter"),
        (dict(method="dpo", format="alpaca"), "format for dpo must be one of auto, pairs, sharegpt, kto"),
        (dict(method="orpo", packing=True), "packing is for SFT"),
        (dict(objective="ppo"), "objective must be one of sft, dpo, orpo, kto"),
    ]
    for options, message in refused:
        with pytest.raises(ArenaError, match=message):
            TrainConfig(name="x", dataset="d.jsonl", **options)


# ----- the preview ------------------------------------------------------------------------------

def test_preview_shows_the_templated_prompt_then_each_answer_marked(tokenizer):
    examples, _ = load_preference_dataset(DPO)
    html_preview = preview(examples, tokenizer, n=2)
    first = examples[0]
    assert html_preview.count('class="preference-chosen"') == 2 and html_preview.count('class="preference-rejected"') == 2
    assert "<|im_start|>assistant\n<mark" in html_preview.replace("&lt;", "<").replace("&gt;", ">")
    chosen_block = html_preview.split('class="preference-chosen"')[1].split("</div>")[0]
    assert "✓ chosen" in chosen_block and first.chosen[:40].replace("'", "&#x27;") in chosen_block
    rejected_block = html_preview.split('class="preference-rejected"')[1].split("</div>")[0]
    assert "✗ rejected" in rejected_block and "#f6c9c9" in rejected_block
