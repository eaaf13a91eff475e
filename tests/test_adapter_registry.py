"""Broken or incompatible adapters are listed with their reason and skipped; the rest keep serving."""
from __future__ import annotations

import json
import shutil

import pytest

from models import ArenaError, Engine, EngineConfig, SamplingParams, validate_name
from tests.helpers import make_random_adapter, make_tiny_llama

GREEDY = SamplingParams(max_new_tokens=6)


def _break_truncate(folder):
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def _break_missing_weights(folder):
    (folder / "adapter_model.safetensors").unlink()


def _break_bad_json(folder):
    (folder / "adapter_config.json").write_text("{not json")


def _break_other_peft_type(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _break_other_base(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "meta-llama/Llama-3.2-1B-Instruct"
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _break_missing_target(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "query_key_value"]
    (folder / "adapter_config.json").write_text(json.dumps(config))


BROKEN = {
    "truncated": (_break_truncate, "truncated"),
    "no-weights": (_break_missing_weights, "no adapter_model.safetensors"),
    "bad-config": (_break_bad_json, "adapter_config.json is not valid JSON"),
    "not-lora": (_break_other_peft_type, "only LORA adapters"),
    "missing-module": (_break_missing_target, "query_key_value do not exist"),
}


@pytest.fixture(scope="module")
def broken_setup(tmp_path_factory, tiny_model_path, tiny_adapters):
    root = tmp_path_factory.mktemp("broken")
    adapters = root / "adapters"
    shutil.copytree(tiny_adapters / "a1", adapters / "good")
    for name, (breaker, _) in BROKEN.items():
        shutil.copytree(tiny_adapters / "a2", adapters / name)
        breaker(adapters / name)
    # Same base name, other shapes: an adapter made for a wider model of the same name.
    wide = make_tiny_llama(root / "wide" / "tiny-llama", tiny_model_path)
    config = json.loads((wide / "config.json").read_text())
    config.update(hidden_size=96, intermediate_size=192)
    (wide / "config.json").write_text(json.dumps(config))
    from transformers import AutoModelForCausalLM, LlamaConfig
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    model.save_pretrained(wide)
    make_random_adapter(wide, adapters / "wrong-shapes", seed=3)
    (adapters / "bad name!").mkdir()
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=root, adapter_dirs=[adapters]))
    return engine


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_adapter_is_listed_with_its_reason(broken_setup, name):
    info = {a.name: a for a in broken_setup.adapters()}[name]
    assert info.status == "failed"
    assert BROKEN[name][1] in info.reason


def test_another_named_base_is_served_with_a_warning_when_the_weights_fit(tmp_path, tiny_model_path, tiny_adapters):
    shutil.copytree(tiny_adapters / "a2", tmp_path / "adapters" / "other-base")
    _break_other_base(tmp_path / "adapters" / "other-base")
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path))
    try:
        info = engine.adapters()[0]
        assert info.status == "loaded"
        assert info.fit_warning.startswith("made for meta-llama/Llama-3.2-1B-Instruct (another family)")
    finally:
        engine.close()


def test_compare_repeats_the_warning_under_that_adapters_answer(tmp_path, tiny_model_path, tiny_adapters,
                                                               launch_app):
    from gradio_client import Client

    from tests.app_client import call_args

    shutil.copytree(tiny_adapters / "a2", tmp_path / "adapters" / "other-base")
    config_file = tmp_path / "adapters" / "other-base" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-0.5B-Instruct-<b>x</b>"  # the adapter's own words: markup
    config_file.write_text(json.dumps(config))
    shutil.copytree(tiny_adapters / "a1", tmp_path / "adapters" / "a1")
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path))
    _, url = launch_app(engine)
    client = Client(url, verbose=False)
    args = call_args(client, "/compare_send", Message="Hi", **{"Column 1": "a1", "Column 2": "other-base",
                                                                "Max new tokens": 4})
    final = client.submit(*args, api_name="/compare_send").result(timeout=120)
    stats_a1, stats_other = final[7], final[8]  # as in test_app_api.py
    assert "tok/s" in stats_a1 and "warning" not in stats_a1
    assert "tok/s" in stats_other and "(another family)" in stats_other
    assert "Instruct-&lt;b&gt;x&lt;/b&gt;" in stats_other and "<b>" not in stats_other  # shown as text, not markup
    engine.close()


def test_wrong_shapes_are_caught_before_peft(broken_setup):
    info = {a.name: a for a in broken_setup.adapters()}["wrong-shapes"]
    assert info.status == "failed" and "does not fit the base layer" in info.reason


def test_bad_folder_name_is_refused(broken_setup):
    info = {a.name: a for a in broken_setup.adapters()}["bad name!"]
    assert info.status == "failed" and "must be 1-64 letters" in info.reason


def test_base_and_good_adapter_keep_serving(broken_setup, tiny_engine):
    assert broken_setup.variants() == ["base", "good"]
    assert broken_setup.generate("good", "Hi", params=GREEDY).text == tiny_engine.generate("a1", "Hi", params=GREEDY).text
    assert broken_setup.generate("base", "Hi", params=GREEDY).text == tiny_engine.generate("base", "Hi", params=GREEDY).text
    with pytest.raises(ArenaError, match="adapter 'truncated' cannot answer: .*truncated"):
        broken_setup.generate("truncated", "Hi")


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a\\b", "../etc", "x" * 65, "base", "-dash", "sp ace"])
def test_adapter_names_are_validated(bad):
    with pytest.raises(ArenaError):
        validate_name(bad)


@pytest.mark.parametrize("good", ["pirate", "tinyllama-r16_v2", "A.1"])
def test_plain_names_pass(good):
    assert validate_name(good) == good
