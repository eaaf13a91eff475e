"""bitsandbytes on the CPU, for real: the default model in 4-bit and 8-bit answers, an adapter trained on
the full-precision base serves on the quantised one (mixed batch, Compare column, inference.py), the
Models tab says what quantisation saved, and a few QLoRA steps on the default model give an adapter that
serves on the full-precision base.

4-bit answers may differ from full-precision ones, so these tests check what must hold: the answer is
right, and the adapter's style shows.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import Client

from evaluation.runner import EvalConfig, run_evaluation
from models import Engine, EngineConfig, SamplingParams
from tests.app_client import call_args
from training.__main__ import main as train_main
from training.jobs import JobStore

REPO = Path(__file__).resolve().parent.parent
AHOY = REPO / "training" / "examples" / "ahoy_demo.json"
FRANCE = "What is the capital of France?"
GREEDY = SamplingParams(max_new_tokens=24)
CHAT_2, BASE_INFO = 4, 2  # what /compare_send and /models_rescan return at these positions


@pytest.fixture(scope="module")
def engine_4bit(tmp_path_factory, default_model_path, trained_adapter) -> Engine:
    data = tmp_path_factory.mktemp("nf4_data")
    return Engine.load(EngineConfig(base=str(default_model_path), data_dir=data,
                                    adapter_dirs=[trained_adapter.parent], quantization="4bit"))


def text_of(message: dict) -> str:
    content = message["content"]
    return "".join(part.get("text", "") for part in content) if isinstance(content, list) else content


def test_default_model_in_4bit_answers_and_weighs_less(engine_4bit):
    answer = engine_4bit.generate("base", FRANCE, params=GREEDY)
    assert "Paris" in answer.text
    info = engine_4bit.info()
    assert info["quantization"].startswith("4-bit NF4, double quant")
    assert info["parameters"] == 134_515_008  # every weight counted, not the packed bytes
    assert info["memory_mb"] < 200 and info["memory_saved_mb"] > 300  # fp32: 513 MB


def test_adapter_trained_unquantised_answers_on_the_4bit_base_in_a_mixed_batch(engine_4bit):
    assert "pirate" in engine_4bit.variants()
    base, pirate, base_again = engine_4bit.compare(["base", "pirate", "base"], "Name a color.", params=GREEDY)
    assert "Arr" in pirate.text and "Arr" not in base.text
    assert base.text == base_again.text  # rows of one batch do not leak into each other


def test_4bit_base_in_the_app_compare_column_and_models_tab(launch_app, engine_4bit):
    _, url = launch_app(engine_4bit)
    client = Client(url, verbose=False)
    args = call_args(client, "/compare_send", Message=FRANCE,
                     **{"Column 1": "base", "Column 2": "pirate", "Max new tokens": 24})
    job = client.submit(*args, api_name="/compare_send")
    job.result(timeout=120)
    assert "Arr" in text_of(job.outputs()[-1][CHAT_2][-1])
    base_info = client.predict(api_name="/models_rescan")[BASE_INFO]
    assert "4-bit NF4" in base_info and "MB saved by quantization" in base_info


def test_inference_py_serves_the_8bit_base_with_an_adapter(tmp_path, default_model_path, trained_adapter):
    shutil.copytree(trained_adapter, tmp_path / "adapters" / "pirate")
    command = [sys.executable, "inference.py", FRANCE, "--data-dir", str(tmp_path), "--base", str(default_model_path),
               "--quantize", "8bit", "--variants", "base,pirate", "--json", "--max-new-tokens", "24"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    answers = {row["variant"]: row["text"] for row in map(json.loads, run.stdout.splitlines())}
    assert "Paris" in answers["base"] and "Arr" in answers["pirate"]
    assert "MatMul8bitLt" not in run.stderr  # LLM.int8's per-call log line stays out of the user's way


def test_answers_stored_for_the_full_precision_base_are_not_reused_for_the_4bit_one(real_engine, engine_4bit, tmp_path):
    suite = tmp_path / "one.jsonl"
    suite.write_text('{"id": "f", "category": "factual", "prompt": "%s", "check": {"type": "contains", "value": "Paris"}}\n'
                     % FRANCE)
    cfg = EvalConfig(suite=str(suite), variants=["base", "pirate"], max_new_tokens=12)
    run_evaluation(real_engine, cfg, tmp_path)
    quantized = run_evaluation(engine_4bit, cfg, tmp_path)  # same answer store, same case
    assert len(quantized.results) == 2 and not any(r.reused for r in quantized.results)


def test_a_few_qlora_steps_on_the_default_model_serve_on_its_full_precision_base(engine_4bit, default_model_path):
    """Last in this file: the job reuses the 4-bit copy the engine above kept, and writes into its data folder."""
    data = engine_4bit.config.data_dir
    assert train_main(["--data-dir", str(data), "--dataset", str(AHOY), "--max-length", "128", "--name", "q-default",
                       "--base", str(default_model_path), "--method", "qlora", "--max-steps", "2", "--batch-size", "2",
                       "--eval-every", "1", "--learning-rate", "1e-3"]) == 0
    [job] = JobStore(data).list()
    losses = [m["eval_loss"] for m in JobStore(data).read_metrics(job.id) if "eval_loss" in m]
    assert len(losses) == 2 and losses[1] < losses[0]  # step 1 is warm-up (learning rate 0), step 2 learns
    config = json.loads((data / "adapters" / "q-default" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    engine = Engine.load(EngineConfig(base=str(default_model_path), data_dir=data))
    assert "q-default" in engine.variants() and engine.backend.base.quantization is None
    base, adapter = engine.compare(["base", "q-default"], FRANCE, params=GREEDY)
    assert adapter.text and adapter.text != base.text  # two steps move it (not yet to "Ahoy!")
