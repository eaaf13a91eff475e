"""Preference training for real: `python -m training --method dpo|orpo|kto` on the tiny random Llama.

DPO continues an adapter with that adapter, frozen, as its reference (TRL's second PEFT adapter: no second
copy of the base), logs rewards for train and validation, saves the policy alone, cancels with a checkpoint
and resumes through the app's job runner. ORPO and KTO run through the same frame.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import Engine, EngineConfig, ScoreRequest
from tests.helpers import make_random_adapter
from tests.test_training_run import cancel_after, lora_weights, stop_all, train_command, wait_until_settled
from training.config import TrainConfig
from training.jobs import JobRunner, JobStore, latest_checkpoint

REPO = Path(__file__).resolve().parent.parent
AHOY = json.loads((REPO / "training" / "examples" / "ahoy_demo.json").read_text(encoding="utf-8"))


def plain(answer: str) -> str:
    return answer.removeprefix("Ahoy! ").removesuffix(" ⚓")


@pytest.fixture
def pairs(tmp_path) -> Path:
    """Ahoy-style answers chosen over the same answers without the style, in the Leaderboard's JSONL form."""
    rows = [{"prompt": r["instruction"], "chosen": r["output"], "rejected": plain(r["output"]), "history": []}
            for r in AHOY[:16] if plain(r["output"]) != r["output"]]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def data_with_sft(tmp_path, tiny_model_path) -> Path:
    """A data folder whose adapters/ holds "sft", the adapter a DPO stage continues."""
    data = tmp_path / "data"
    make_random_adapter(tiny_model_path, data / "adapters" / "sft", seed=3)
    return data


def mean_margin(engine: Engine, variant: str, pairs: Path) -> float:
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    scores = engine.loglikelihood_batch([ScoreRequest(variant, r["prompt"], r[k]) for r in rows
                                         for k in ("chosen", "rejected")])
    return sum(c.logprob - r.logprob for c, r in zip(scores[::2], scores[1::2])) / len(rows)


def test_dpo_continues_an_adapter_against_its_frozen_self(tmp_path, tiny_model_path, data_with_sft, pairs):
    data = data_with_sft
    run = train_command(data, "--dataset", pairs, "--name", "sft-dpo", "--method", "dpo", "--init-adapter", "sft",
                        "--base", tiny_model_path, "--max-steps", "6", "--eval-every", "3", "--batch-size", "2",
                        "--learning-rate", "5e-3", "--max-length", "128", "--validation-split", "0.25")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "reference: the starting adapter 'sft', frozen (a second PEFT adapter of" in run.stdout

    [job] = JobStore(data).list()
    metrics = JobStore(data).read_metrics(job.id)
    logged = set().union(*metrics)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= logged
    assert {"eval_loss", "eval_rewards/margins", "eval_rewards/accuracies"} <= logged

    adapter = data / "adapters" / "sft-dpo"
    card = json.loads((adapter / "arena_card.json").read_text())
    reference = card["preference"]["reference"]
    sft_bytes = sum(t.numel() * t.element_size() for t in lora_weights(data / "adapters" / "sft").values())
    # The reference costs one more adapter, not a second base: the memory shows it.
    assert (reference["kind"], reference["adapter_bytes"], reference["second_base_copy"]) == ("adapter", sft_bytes, False)
    assert reference["base_bytes"] > 50 * reference["adapter_bytes"]
    assert card["training"]["objective"] == "dpo" and card["training"]["init_adapter"] == "sft"
    assert card["metrics"]["steps"] == 6 and len(card["preference"]["eval_rewards"]) == 2

    assert not (adapter / "ref").exists()  # the policy alone is saved, not TRL's reference copy
    assert lora_weights(adapter).keys() == lora_weights(data / "adapters" / "sft").keys()
    heldout = [json.loads(line) for line in (Path(card["preference"]["heldout_pairs"])).read_text().splitlines()]
    assert len(heldout) == card["dataset"]["validation_rows"] == 4  # 25% of 16 pairs
    assert Path(card["preference"]["heldout_pairs"]) == data.resolve() / "exports" / "heldout-sft-dpo.jsonl"

    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=data))
    assert [v for v in engine.variants() if "@" not in v] == ["base", "sft", "sft-dpo"]  # and its checkpoints
    before, after = mean_margin(engine, "sft", pairs), mean_margin(engine, "sft-dpo", pairs)
    print(f"mean log p(chosen) - log p(rejected): sft {before:.3f}, sft-dpo {after:.3f}")
    assert after > before + 0.1  # DPO moved the adapter towards the chosen answers


@pytest.mark.parametrize("objective, reference", [("orpo", "none"), ("kto", "base")])
def test_orpo_and_kto_train_a_fresh_lora(tmp_path, tiny_model_path, pairs, objective, reference):
    data = tmp_path / "data"
    run = train_command(data, "--dataset", pairs, "--name", objective, "--method", objective, "--base", tiny_model_path,
                        "--max-steps", "2", "--batch-size", "2", "--max-length", "128", "--validation-split", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    card = json.loads((data / "adapters" / objective / "arena_card.json").read_text())
    assert card["training"]["objective"] == objective
    assert card["preference"]["reference"]["kind"] == reference
    assert card["preference"]["reference"]["adapter_bytes"] == 0  # nothing copied: the base is the base
    assert card["metrics"]["steps"] == 2 and card["preference"]["train_rewards"]


def test_a_cancelled_dpo_job_resumes_from_its_checkpoint(tiny_model_path, data_with_sft, pairs):
    data = data_with_sft
    ended = []
    runner = JobRunner(data, cancel_grace_s=120, poll_interval_s=0.2, on_finished=ended.append)
    config = TrainConfig(name="resumed-dpo", dataset=str(pairs), base=str(tiny_model_path), method="dpo",
                         init_adapter="sft", max_steps=12, eval_every=2, max_length=128, batch_size=2,
                         learning_rate=5e-3, validation_split=0)
    runner.start()
    try:
        first = runner.submit(config)
        assert cancel_after(runner, ended, first.id, 2).status == "cancelled"
        stopped_at = int(latest_checkpoint(runner.store.files(first.id).checkpoints).name.split("-")[1])
        assert 2 <= stopped_at < 12 and not (data / "adapters" / "resumed-dpo").exists()
        second = runner.resume(first.id)
        done = wait_until_settled(ended, second.id, 240)
    finally:
        stop_all(runner)
    assert (done.status, done.error) == ("succeeded", None)
    steps = [m["step"] for m in runner.store.read_metrics(second.id) if "rewards/margins" in m]
    assert steps[0] == stopped_at + 1 and steps[-1] == 12
    card = json.loads((Path(done.adapter_path) / "arena_card.json").read_text())
    assert card["preference"]["reference"]["kind"] == "adapter"  # the resumed run kept the frozen start as reference


def test_pairs_that_cannot_train_are_one_error_line(tmp_path, tiny_model_path):
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"}) + "\n", encoding="utf-8")
    run = train_command(tmp_path / "data", "--dataset", same, "--name", "bad", "--method", "dpo",
                        "--base", tiny_model_path)
    assert run.returncode == 2  # kernel.cli: a user error exits 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "no usable rows as pairs (row 1: identical" in last, last
    assert "Traceback" not in run.stderr
