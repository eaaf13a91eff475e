"""One preference-training run: pairs (or KTO's labelled answers) -> a LoRA adapter, with TRL's DPO, ORPO or KTO.

The SFT job's frame (training.trainer) around TRL's trainers, which compute the losses: the same base
loading, `--init-adapter`, progress and metrics through the JobReporter, CANCEL between steps with a
checkpoint kept, resume, card and atomic save.

The reference model (DPO and KTO; ORPO has none). TRL given a PEFT model loads no second copy of the
base: it scores the reference on the same base weights, either through a frozen copy of the starting
adapter (a second PEFT adapter named "ref") or with the adapter switched off. Here `reference` picks:
`init`, the frozen --init-adapter (the usual SFT-then-DPO recipe); `base`, the adapter off. A fresh LoRA
starts equal to the base, so its reference is the base with nothing copied. The card says which it was
and what it cost: the reference adapter's bytes against the base's.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, TrainerCallback

from kernel.data_dir import DataDir
from kernel.errors import ArenaError

from .callbacks import LOSS_KEYS, ProgressCallback
from .config import TrainConfig
from .preference_data import load_split, trl_row
from .trainer import (PreparedData, add_lora, argument_values, file_sha256, load_for_training, make_card, save_adapter,
                      starting_adapter)

REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "kl")
METRIC_KEYS = LOSS_KEYS + REWARDS + tuple("eval_" + key for key in REWARDS)
REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of the starting adapter
# The chosen answers this many nats less likely than under the reference (mean of the last DRIFT_STEPS logged
# steps): DPO is widening the margin by pushing both answers down. The Fair winds demo at lr 1e-3 passed this at
# step 11 of 24 and ended answering everything with the rule; at 2e-4 the chosen answers grew likelier throughout.
DRIFT_NATS = 5.0
DRIFT_STEPS = 3


def trl_classes(objective: str):
    """(config class, trainer class) of TRL for an objective."""
    if objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if objective == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    if objective == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # moved to experimental in TRL 1.x

        return ORPOConfig, ORPOTrainer
    raise ArenaError(f"no preference trainer for objective '{objective}'")


def trl_arguments(cfg: TrainConfig, output_dir: Path, has_validation: bool):
    """The SFT job's TrainingArguments, plus what the preference loss needs."""
    config_class, _ = trl_classes(cfg.objective)
    values = argument_values(cfg, output_dir, has_validation)
    # Rows are prompt/chosen/rejected, not input_ids: nothing to group by length. KTO reads them in order
    # (TRL's default: its KL estimate pairs each answer with the next row's prompt).
    values.update(beta=cfg.beta, max_length=cfg.max_length,
                  train_sampling_strategy="sequential" if cfg.objective == "kto" else "random")
    return config_class(**values)


@dataclass
class Reference:
    """What the policy was compared with, for the card and the log."""

    kind: str  # "adapter", "base" or "none"
    text: str
    adapter_bytes: int  # what the reference adds to memory: the frozen adapter copy, 0 for the base
    base_bytes: int
    second_base: bool  # TRL loaded another copy of the base (never, with PEFT)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "description": self.text, "adapter_bytes": self.adapter_bytes,
                "base_bytes": self.base_bytes, "second_base_copy": self.second_base}


def parameter_bytes(named) -> int:
    """Bytes of the distinct tensors among (name, parameter) pairs (tied embeddings counted once)."""
    unique = {id(p): p for _, p in named}
    return sum(p.numel() * p.element_size() for p in unique.values())


def choose_reference(trainer, cfg: TrainConfig, start: Path | None, base_bytes: int) -> Reference:
    """Keep TRL's frozen copy of the starting adapter as the reference, or drop it so the base (adapter off) is."""
    model = trainer.model
    second_base = getattr(trainer, "ref_model", None) is not None
    if cfg.objective == "orpo":
        return Reference("none", "none: ORPO needs no reference model", 0, base_bytes, second_base)
    use_init = cfg.reference == "init" or (cfg.reference == "auto" and start is not None)
    if not use_init and REFERENCE_ADAPTER in model.peft_config:
        model.delete_adapter(REFERENCE_ADAPTER)  # TRL then scores the reference with the adapter switched off
    if use_init and REFERENCE_ADAPTER in model.peft_config:
        size = parameter_bytes((n, p) for n, p in model.named_parameters() if f".{REFERENCE_ADAPTER}." in n)
        text = (f"the starting adapter '{Path(cfg.init_adapter).name}', frozen (a second PEFT adapter of {size / 2**20:.1f} MB "
                f"on the same {base_bytes / 2**20:.0f} MB base)")
        return Reference("adapter", text, size, base_bytes, second_base)
    text = f"the base model with the adapter switched off (no copy: the same {base_bytes / 2**20:.0f} MB weights)"
    return Reference("base", text, 0, base_bytes, second_base)


def as_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else None


def train_preference(cfg: TrainConfig, data_dir: Path, reporter=None, resume_from: Path | None = None,
                     output_dir: Path | None = None) -> Path | None:
    """Run the whole job; returns the adapter folder, or None when it was cancelled."""
    import datasets

    datasets.disable_progress_bars()  # TRL's tokenising passes would fill the job's log with bars
    started = time.time()
    torch.manual_seed(cfg.seed)
    paths = DataDir(data_dir)
    base_name, model, tokenizer = load_for_training(cfg, paths.models)
    start = starting_adapter(cfg, paths.adapters, base_name, model)
    split = load_split(cfg, tokenizer)
    if not split.train:
        raise ArenaError(f"{cfg.dataset}: no row is left to train on (max_length {cfg.max_length})")
    data = PreparedData([trl_row(e, tokenizer) for e in split.train], [trl_row(e, tokenizer) for e in split.validation],
                        split.report, file_sha256(cfg.dataset))
    heldout = write_heldout(split.validation, paths.heldout_pairs(cfg.name))
    base_bytes = parameter_bytes(model.named_parameters())
    model = add_lora(model, cfg, start)
    checkpoints = Path(output_dir or tempfile.mkdtemp(prefix="arena-train-")) / "checkpoints"
    args = trl_arguments(cfg, checkpoints, bool(data.validation))
    progress = ProgressCallback(reporter, tokens_per_step=tokens_per_step(cfg, split.report, args),
                                cancel_flag=Path(output_dir) / "CANCEL" if output_dir else None, metric_keys=METRIC_KEYS)
    watch = DriftWatch(cfg)
    callbacks = [progress, watch]
    if cfg.early_stopping_patience and data.validation:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    _, trainer_class = trl_classes(cfg.objective)
    trainer = trainer_class(model=model, args=args, train_dataset=as_dataset(data.train),
                            eval_dataset=as_dataset(data.validation), processing_class=tokenizer, callbacks=callbacks)
    reference = choose_reference(trainer, cfg, start, base_bytes)
    print(f"{cfg.objective} on {len(data.train)} rows ({len(data.validation)} for validation); "
          f"reference: {reference.text}", flush=True)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if not trainer.is_world_process_zero() or progress.cancelled:
        return None
    if REFERENCE_ADAPTER in trainer.model.peft_config:  # the adapter saved is the policy alone
        trainer.model.delete_adapter(REFERENCE_ADAPTER)
    card = make_card(cfg, base_name, data, trainer, trainable, total, time.time() - started)
    card["preference"] = preference_card(cfg, reference, trainer.state.log_history)
    card["preference"]["heldout_pairs"] = str(heldout) if heldout else None
    card["preference"]["drift_warning"] = watch.warning or None
    return save_adapter(trainer.model, cfg.name, paths, base_name, card)


def write_heldout(examples: list, path: Path) -> Path | None:
    """The validation pairs as the Leaderboard's JSONL, so the preference view can measure the run on them."""
    from arena.export import PreferencePair, write_pairs_jsonl

    pairs = [PreferencePair(e.prompt[-1]["content"], e.chosen, e.rejected, e.prompt[:-1])
             for e in examples if e.chosen is not None]
    return write_pairs_jsonl(pairs, path) if pairs else None


def tokens_per_step(cfg: TrainConfig, report, args) -> float:
    """Roughly: a pair is two sequences (prompt + chosen, prompt + rejected), a KTO answer one."""
    sequences = 1 if cfg.objective == "kto" else 2
    median = report.tokens.median if report.tokens else 0
    return median * sequences * args.per_device_train_batch_size * args.gradient_accumulation_steps


def preference_card(cfg: TrainConfig, reference: Reference, history: list[dict]) -> dict:
    """What the card adds for a preference job: the objective, the reference and the reward curves."""
    def curve(prefix: str) -> list[dict]:
        rows = []
        for h in history:
            values = {key: h[prefix + key] for key in REWARDS if prefix + key in h}
            if values:
                rows.append({"step": h["step"], **{key.split("/")[-1]: value for key, value in values.items()}})
        return rows

    return {"objective": cfg.objective, "beta": cfg.beta, "reference": reference.to_dict(),
            "train_rewards": curve(""), "eval_rewards": curve("eval_")}


class DriftWatch(TrainerCallback):
    """Says once, in the job's log (the command line's output), when drift_warning first fires."""

    def __init__(self, cfg: TrainConfig):
        self.objective, self.beta = cfg.objective, cfg.beta
        self.metrics: list[dict] = []
        self.warning = ""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "rewards/chosen" in logs and not self.warning:
            self.metrics.append({"step": state.global_step, "rewards/chosen": logs["rewards/chosen"]})
            self.warning = drift_warning(self.metrics, self.objective, self.beta)
            if self.warning:
                print(f"warning: {self.warning}", flush=True)


def drift_warning(metrics: list[dict], objective: str, beta: float) -> str:
    """'' while the run looks healthy, else one line saying the chosen answers are losing likelihood.

    Reward accuracy and margin look perfect during a collapse; what gives it away is rewards/chosen
    (beta times the chosen answer's log-likelihood gain over the reference) turning negative. DPO and KTO
    define it so; ORPO's rewards are plain log-likelihoods, always negative, so it is not watched.
    """
    if objective not in ("dpo", "kto") or beta <= 0:
        return ""
    chosen = [m for m in metrics if "rewards/chosen" in m][-DRIFT_STEPS:]
    if len(chosen) < DRIFT_STEPS:
        return ""
    drop = -sum(m["rewards/chosen"] for m in chosen) / len(chosen) / beta
    if drop < DRIFT_NATS:
        return ""
    return (f"the chosen answers are {drop:.1f} nats less likely than under the reference (steps "
            f"{chosen[0]['step']}-{chosen[-1]['step']}): the margin grows by pushing both answers down, the first "
            f"sign of a collapse; lower the learning rate or stop and keep a checkpoint, and check the answers "
            f"with a suite")
