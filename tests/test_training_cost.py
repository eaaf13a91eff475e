"""QLoRA on the CPU and a full fine-tune, for real, and what each job cost: the card, the Training tab's
Cost table and the lines the evaluation report can add.

The jobs run through `training.__main__.main`, the code `python -m training` runs, in this process (an
interpreter start and the imports cost more than the tiny model's training).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gradio_client import Client
from safetensors.torch import load_file

from models import Engine, EngineConfig, SamplingParams
from training.__main__ import main as train_main
from training.config import TrainConfig
from training.cost import cost_rows, cost_section, read_card
from training.jobs import JobStore
from training.trainer import add_lora, load_for_training

REPO = Path(__file__).resolve().parent.parent
AHOY = REPO / "training" / "examples" / "ahoy_demo.json"
SHORT = ["--dataset", str(AHOY), "--max-length", "128", "--batch-size", "4", "--eval-every", "2"]
QUESTION = "What is the capital of France?"
GREEDY = SamplingParams(max_new_tokens=12)
COST_KEYS = {"trainable_parameters", "trainable_share", "wall_seconds", "train_seconds", "tokens_per_second",
             "peak_memory_mb", "optimizer_state_bytes", "saved_bytes"}


def train(data: Path, *options) -> None:
    assert train_main(["--data-dir", str(data), *SHORT, *map(str, options)]) == 0


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, tiny_model_path) -> Path:
    """One data folder holding a QLoRA job and a full fine-tune of the tiny model, three steps each."""
    data = tmp_path_factory.mktemp("cost_data")
    train(data, "--name", "q-ahoy", "--base", tiny_model_path, "--method", "qlora", "--max-steps", "3",
          "--learning-rate", "5e-3")
    train(data, "--name", "full-ahoy", "--base", tiny_model_path, "--method", "full", "--max-steps", "3",
          "--learning-rate", "1e-3")
    return data


def test_qlora_keeps_learning_after_an_evaluation(tiny_model_path, tmp_path):
    """bitsandbytes repacks 4-bit weights for a forward-only CPU kernel at the first eval-mode forward;
    a validation pass must not cost the training steps after it their gradients."""
    cfg = TrainConfig(name="q", dataset=str(AHOY), base=str(tiny_model_path), method="qlora")
    _, model, _ = load_for_training(cfg, tmp_path)
    model = add_lora(model, cfg)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # what the Trainer's evaluation does
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    # B starts at zero, so B's gradients are the ones that move first; layer 0's flow back through layer 1
    lora_b = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    lost = [n for n, grad in lora_b.items() if grad is None or grad.abs().sum() == 0]
    assert lora_b and not lost, lost


def test_a_qlora_adapter_serves_on_the_full_precision_base_and_its_card_says_what_it_cost(jobs, tiny_model_path):
    card = read_card(jobs / "adapters" / "q-ahoy")
    assert COST_KEYS <= set(card) and card["training"]["method"] == "qlora"
    assert 0 < card["trainable_share"] < 0.05 and card["tokens_per_second"] > 0
    assert card["train_tokens"] > 0 and card["peak_memory_kind"] == "RSS"
    # AdamW keeps two fp32 moments per trainable weight (and a step count per tensor)
    assert 8 * card["trainable_parameters"] <= card["optimizer_state_bytes"] < 8 * card["trainable_parameters"] + 4096
    weights = (jobs / "adapters" / "q-ahoy" / "adapter_model.safetensors").stat().st_size
    assert weights < card["saved_bytes"] < weights + 64 * 1024

    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=jobs))  # unquantised
    assert "q-ahoy" in engine.variants()
    base, adapter = engine.compare(["base", "q-ahoy"], QUESTION, params=GREEDY)
    assert adapter.text and adapter.text != base.text


def test_a_later_stage_starts_from_an_adapter_on_a_4bit_base(jobs, tiny_model_path):
    """--init-adapter with QLoRA: stage 2 goes on from the QLoRA adapter's exact weights on the 4-bit base."""
    train(jobs, "--name", "q-stage2", "--base", tiny_model_path, "--method", "qlora", "--init-adapter", "q-ahoy",
          "--learning-rate", "1e-12", "--max-steps", "1")
    first = load_file(str(jobs / "adapters" / "q-ahoy" / "adapter_model.safetensors"))
    second = load_file(str(jobs / "adapters" / "q-stage2" / "adapter_model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)
    assert any("lora_B" in k and t.abs().max() > 0 for k, t in second.items())  # not a fresh LoRA


def test_a_full_fine_tune_is_a_new_base_model(jobs, tiny_model_path):
    folder = jobs / "models" / "full-ahoy"
    card = read_card(folder)
    assert COST_KEYS <= set(card) and card["trainable_share"] == 1.0
    assert card["optimizer_state_bytes"] >= 8 * card["trainable_parameters"]
    assert card["saved_bytes"] > (folder / "model.safetensors").stat().st_size
    before = load_file(str(tiny_model_path / "model.safetensors"))
    after = load_file(str(folder / "model.safetensors"))
    assert not torch.equal(before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"])

    engine = Engine.load(EngineConfig(base="full-ahoy", data_dir=jobs))  # a name under DATA/models
    assert engine.backend.base.name == "full-ahoy" and engine.generate("base", QUESTION, params=GREEDY).text
    adapters = {a.name: a for a in engine.adapters()}
    # an adapter of the original base fits the fine-tuned one's shapes: served, saying what it was made for
    q = adapters["q-ahoy"]
    assert q.status == "loaded" and "tiny-llama" in q.fit_note + q.fit_warning


def test_the_training_tab_compares_the_cost_of_the_jobs_picked(jobs, tiny_model_path, launch_app):
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=jobs))
    _, url = launch_app(engine)
    picked = [job.id for job in JobStore(jobs).list() if job.name in ("q-ahoy", "full-ahoy")]
    table = Client(url, verbose=False).predict(picked, api_name="/train_cost")
    rows = {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}
    assert rows["q-ahoy"]["method"] == "QLoRA r=16" and rows["full-ahoy"]["method"] == "full"
    assert rows["full-ahoy"]["share"] == "100.00 %"
    assert float(rows["q-ahoy"]["optimizer state"].split()[0]) < float(rows["full-ahoy"]["optimizer state"].split()[0])


def test_the_report_puts_cost_beside_quality(jobs):
    cards = {name: read_card(folder) for name, folder in
             [("q-ahoy", jobs / "adapters" / "q-ahoy"), ("full-ahoy", jobs / "models" / "full-ahoy")]}
    lines = cost_section(cards, {"q-ahoy": {"ahoy_style vs base": "+95.0"}})
    text = "\n".join(lines)
    assert lines[0] == "## What each variant cost to train"
    assert "| job | method | trainable parameters |" in text and "ahoy_style vs base |" in text
    q_row = next(line for line in lines if line.startswith("| q-ahoy |"))
    full_row = next(line for line in lines if line.startswith("| full-ahoy |"))
    assert q_row.endswith("| +95.0 |") and full_row.endswith("| – |")  # no score given: a dash, not a gap
    assert [row["job"] for row in cost_rows(cards)] == ["q-ahoy", "full-ahoy"]
