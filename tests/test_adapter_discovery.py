"""Adapters where training scripts leave them: nested folders, runs of checkpoints, Unsloth and Hub folders.

Every folder here is written by PEFT (tests/helpers.py), then laid out and its config rewritten as the
seeds' scripts, the Hugging Face Trainer and Unsloth leave them.
"""
from __future__ import annotations

import json
import shutil

import pytest

from models import ArenaError, Engine, EngineConfig, SamplingParams
from tests.helpers import make_random_adapter

GREEDY = SamplingParams(max_new_tokens=5)
UNSLOTH_FIELDS = {  # as Unsloth 2025 and PEFT 0.1x write adapter_config.json
    "task_type": "CAUSAL_LM", "lora_dropout": 0, "use_rslora": False, "modules_to_save": None, "loftq_config": {},
    "megatron_config": None, "megatron_core": "megatron.core", "layer_replication": None, "bias": "none",
    "fan_in_fan_out": False, "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
    "auto_mapping": None, "revision": None, "use_dora": False, "inference_mode": True,
    "eva_config": None, "corda_config": None, "future_field_from_2027": {"anything": [1, 2]},
}


def rewrite_config(folder, **fields):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


def trainer_state(folder, step, epoch, losses):
    """trainer_state.json as transformers' Trainer writes it into checkpoint-N."""
    history = [{"step": s, "epoch": s / 10, "loss": loss} for s, loss in losses if s <= step]
    history += [{"step": s, "epoch": s / 10, "eval_loss": loss + 0.5} for s, loss in losses if s <= step]
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": epoch,
                                                           "log_history": history}))


@pytest.fixture(scope="module")
def layout(tmp_path_factory, tiny_model_path, tiny_adapters):
    root = tmp_path_factory.mktemp("discovery")
    adapters = root / "adapters"
    # The first seed's script: finetuned-model/lora_weights/
    shutil.copytree(tiny_adapters / "a1", adapters / "finetuned-model" / "lora_weights")
    # The Trainer's output/checkpoint-N/ and a final adapter in output/ itself.
    losses = [(5, 2.0), (10, 1.5), (15, 1.2), (20, 1.0)]
    for seed, step in enumerate((10, 20, 5), start=10):
        ck = make_random_adapter(tiny_model_path, adapters / "output" / f"checkpoint-{step}", seed=seed)
        trainer_state(ck, step, step / 10, losses)
    shutil.copytree(tiny_adapters / "a2", adapters / "output", dirs_exist_ok=True)
    # Unsloth: outputs/checkpoint-N/ and lora_model/, configs naming the 4-bit copy, a README card.
    unsloth = make_random_adapter(tiny_model_path, adapters / "lora_model", seed=21)
    rewrite_config(unsloth, base_model_name_or_path="unsloth/tiny-llama-bnb-4bit", **UNSLOTH_FIELDS)
    (unsloth / "README.md").write_text("---\nbase_model: unsloth/tiny-llama-bnb-4bit\nlibrary_name: peft\n---\n# x\n")
    shutil.copy(tiny_model_path / "tokenizer.json", unsloth / "tokenizer.json")
    other = make_random_adapter(tiny_model_path, adapters / "other-family", seed=22)
    rewrite_config(other, base_model_name_or_path="Qwen/Qwen2.5-0.5B-Instruct")
    # Too deep, an empty folder, a link out of the root.
    make_random_adapter(tiny_model_path, adapters / "a" / "b" / "c" / "deep", seed=23)
    (adapters / "empty" / "nothing").mkdir(parents=True)
    outside = make_random_adapter(tiny_model_path, root / "outside" / "escaped", seed=24)
    (adapters / "link").symlink_to(outside.parent)
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=root, adapter_dirs=[adapters]))
    yield engine
    engine.close()


def by_name(engine):
    return {a.name: a for a in engine.adapters()}


def test_nested_adapter_is_named_by_its_relative_path(layout):
    info = by_name(layout)["finetuned-model/lora_weights"]
    assert info.status == "loaded"
    assert layout.generate("finetuned-model/lora_weights", "Hi", params=GREEDY).text


def test_folders_without_adapters_keep_their_one_line_reason(layout):
    infos = by_name(layout)
    assert infos["empty"].status == "failed" and "no adapter_config.json" in infos["empty"].reason
    assert not any(name.startswith("a/") for name in infos), "deeper than 3 levels is not searched"
    assert not any("escaped" in name for name in infos), "a symlink out of the root is not followed"


def test_checkpoints_are_variants_ordered_by_step_with_their_losses(layout):
    variants = layout.variants()
    assert [v for v in variants if v.startswith("output")] == ["output", "output@5", "output@10", "output@20"]
    ck = by_name(layout)["output@10"]
    assert (ck.step, ck.epoch, ck.train_loss, ck.eval_loss) == (10, 1.0, 1.5, 2.0)
    labels = dict((v, label) for label, v in layout.variant_choices())
    assert labels["output@10"] == "output@10 · step 10 · epoch 1 · train 1.5 · val 2"


def test_checkpoints_load_on_first_use_and_unload_least_recently_used(layout, monkeypatch):
    assert {by_name(layout)[f"output@{s}"].status for s in (5, 10, 20)} == {"available"}
    monkeypatch.setattr(layout.config, "max_loaded_checkpoints", 2)  # the setting, for this test only
    answers = {s: layout.generate(f"output@{s}", "Hi", params=GREEDY).text for s in (5, 10, 20)}
    infos = by_name(layout)
    assert [infos[f"output@{s}"].status for s in (5, 10, 20)] == ["available", "loaded", "loaded"]
    assert len(set(answers.values())) == 3, "each checkpoint answers with its own weights"
    assert layout.generate("output@5", "Hi", params=GREEDY).text == answers[5], "reloaded on demand, same answer"
    assert by_name(layout)["output@10"].status == "available"


def test_random_arena_battles_are_between_finished_models_never_checkpoints(layout):
    import random

    from app.arena_tab import draw_pair

    layout.generate("output@10", "Hi", params=GREEDY)  # a checkpoint used once stays loaded for a while
    assert by_name(layout)["output@10"].status == "loaded"
    finished = layout.variants(checkpoints=False)
    assert "output" in finished and not [v for v in finished if "@" in v]
    rng = random.Random(0)
    drawn = {v for _ in range(300) for v in draw_pair(finished, rng)}
    assert drawn == set(finished), "every finished model takes part"


def test_several_checkpoints_in_one_request_are_all_kept_while_streaming(layout, monkeypatch):
    monkeypatch.setattr(layout.config, "max_loaded_checkpoints", 1)  # the setting, for this test only
    answers = layout.compare(["output@5", "output@10", "output@20"], "Hi", params=GREEDY)
    assert all(a.text for a in answers)


def test_unsloth_folder_loads_with_a_note_naming_its_4bit_base(layout):
    info = by_name(layout)["lora_model"]
    assert info.status == "loaded", info.reason
    assert info.fit_note == "trained on unsloth/tiny-llama-bnb-4bit; the weights fit this base"
    assert info.card_base == "unsloth/tiny-llama-bnb-4bit" and not info.fit_warning


def test_another_family_is_served_with_a_warning_until_the_user_decides(layout):
    info = by_name(layout)["other-family"]
    assert info.status == "loaded" and "made for Qwen/Qwen2.5-0.5B-Instruct (another family)" in info.fit_warning
    assert "warning:" in info.to_row()["note"]
    refused = layout.decide("other-family", "do not serve")
    assert refused.status == "failed" and "do not serve" in refused.reason
    with pytest.raises(ArenaError, match="other-family"):
        layout.generate("other-family", "Hi")
    decisions = json.loads(layout.config.paths.adapter_decisions.read_text())
    assert decisions == {"other-family": "do not serve"}
    layout.rescan()
    assert by_name(layout)["other-family"].status == "failed", "the decision is remembered across rescans"
    restarted = Engine.load(layout.config)  # as the app after a restart, on the same data folder
    assert by_name(restarted)["other-family"].status == "failed", "and across restarts"
    assert "do not serve" in by_name(restarted)["other-family"].reason
    assert layout.decide("other-family", "serve anyway").status == "loaded"
    assert by_name(layout)["other-family"].to_row()["note"].endswith("(serve anyway)")
