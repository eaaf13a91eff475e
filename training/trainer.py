"""One training run: dataset -> LoRA/QLoRA adapter (or a fully fine-tuned model), with transformers' Trainer and PEFT.

Runs inside the job process (`python -m training`, usually under `accelerate launch`). It reports
progress through a JobReporter, honours the CANCEL flag between steps (keeping a checkpoint), and
writes the result atomically: a temp folder beside the target, then one rename.

`--method full` trains every weight with the same data and loss masking, and writes a whole model
folder to DATA/models/<name>, which the engine loads as another base (`--base <name>`). A full model
rather than a weight diff: a diff of every weight is as large as the model, saves nothing, and only
works on the exact base it was taken from; a model folder loads anywhere (this engine, plain
transformers, vLLM), and its size on disk is the honest cost to compare with an adapter's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Before transformers' Trainer imports bitsandbytes (through peft): this module quiets its import-time warning.
from models.quantization import QUANTIZED_DIR, keep_trainable, load_quantized  # noqa: I001
from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback, Trainer, TrainingArguments

from kernel.data_dir import DataDir
from kernel.errors import ArenaError, first_line
from models import adapters as registry
from models.base import LoadedBase, hub_offline, resolve_base
from models.compatibility import check_compatible

from .callbacks import ProgressCallback
from .config import TrainConfig
from .cost import CARD_FILE, folder_bytes, optimizer_state_bytes, peak_memory
from .data import load_dataset, split_examples
from .encoding import DataCollator, encode_all, pack

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: list
    validation: list
    report: object  # training.data.DatasetReport
    dataset_hash: str


def prepare_data(cfg: TrainConfig, tokenizer) -> PreparedData:
    """Load, validate, split and tokenise; every problem is an ArenaError before any training starts."""
    examples, report = load_dataset(cfg.dataset, cfg.format)
    if cfg.validation_file:
        train_examples = examples
        validation_examples, _ = load_dataset(cfg.validation_file, cfg.format)
    else:
        train_examples, validation_examples = split_examples(examples, cfg.validation_split, cfg.seed)
    params = dict(max_length=cfg.max_length, loss_on=cfg.loss_on, overlong=cfg.overlong)
    train, report = encode_all(train_examples, tokenizer, report=report, **params)
    validation, _ = encode_all(validation_examples, tokenizer, **params)
    if not train:
        raise ArenaError(f"{cfg.dataset}: no row is left to train on after encoding (max_length {cfg.max_length})")
    if cfg.packing:
        train = pack(train, cfg.max_length)
    return PreparedData(train, validation, report, file_sha256(cfg.dataset))


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_for_training(cfg: TrainConfig, models_dir: Path):
    """Base model and tokenizer: bf16 on CUDA, fp32 on the CPU, 4-bit NF4 for QLoRA (CUDA or CPU);
    a full fine-tune keeps fp32 weights everywhere (on CUDA the Trainer adds bf16 autocast)."""
    name, source = resolve_base(cfg.base, models_dir)
    # under accelerate each process trains on its own GPU
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    offline = hub_offline()
    kwargs = {"dtype": torch.bfloat16 if device.type == "cuda" and cfg.method != "full" else torch.float32,
              "local_files_only": offline}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        if cfg.method == "qlora":  # the same quantised copy the engine serves, made once
            # FSDP shards only parameters of one dtype: under it the packed 4-bit weights are stored as bf16.
            storage = torch.bfloat16 if os.environ.get("ACCELERATE_USE_FSDP") == "true" else None
            model = load_quantized(source, "4bit", device, Path(models_dir) / QUANTIZED_DIR, quant_storage=storage,
                                   **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ArenaError(f"cannot load base model '{cfg.base}': {first_line(exc)}") from None
    if cfg.method == "qlora":
        keep_trainable(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return name, model, tokenizer


def starting_adapter(cfg: TrainConfig, adapters_dir: Path, base_name: str, model) -> Path | None:
    """The adapter a later stage continues from, checked against this base; None for a fresh LoRA."""
    if not cfg.init_adapter:
        return None
    given = Path(cfg.init_adapter)
    folder = given if (given / registry.CONFIG_FILE).is_file() else adapters_dir / cfg.init_adapter
    if not (folder / registry.CONFIG_FILE).is_file():
        raise ArenaError(f"init_adapter '{cfg.init_adapter}': no adapter by that name in {adapters_dir}")
    info = registry.inspect_folder(folder)
    base = LoadedBase(model, None, base_name, base_name, model.device, model.dtype, None, 0.0)
    reason = info.reason or check_compatible(info, base)
    if reason:
        raise ArenaError(f"init_adapter '{cfg.init_adapter}': {reason}")
    return folder


def add_lora(model, cfg: TrainConfig, start: Path | None = None):
    """The model the Trainer updates: a PEFT LoRA around the base, or the base itself for a full fine-tune."""
    if cfg.method == "full":
        return model.requires_grad_(True)
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if start is not None:  # the earlier stage's weights, trainable: this stage goes on from where it ended
        return PeftModel.from_pretrained(model, str(start), is_trainable=True)
    lora = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_list(),
        use_rslora=cfg.method == "rslora", use_dora=cfg.method == "dora", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total), each shared tensor counted once (tied embeddings) and 4-bit weights unpacked."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def training_arguments(cfg: TrainConfig, output_dir: Path, has_validation: bool) -> TrainingArguments:
    return TrainingArguments(**argument_values(cfg, output_dir, has_validation))


def argument_values(cfg: TrainConfig, output_dir: Path, has_validation: bool) -> dict:
    """TrainingArguments' values for a job; TRL's configs (training.preference) extend the same ones."""
    cuda = torch.cuda.is_available()
    evaluate = has_validation
    return dict(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=float(cfg.warmup_ratio),
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, logging_steps=cfg.logging_steps,
        eval_strategy="steps" if evaluate else "no", eval_steps=cfg.eval_every,
        save_strategy="steps", save_steps=cfg.eval_every, save_total_limit=cfg.keep_checkpoints or None,
        load_best_model_at_end=evaluate, metric_for_best_model="eval_loss", greater_is_better=False,
        train_sampling_strategy="random" if cfg.packing else "group_by_length",
        gradient_checkpointing=cfg.gradient_checkpointing, bf16=cuda, seed=cfg.seed, data_seed=cfg.seed,
        report_to=[], dataloader_num_workers=0, remove_unused_columns=False, use_cpu=not cuda,
        disable_tqdm=True, save_only_model=False, include_num_input_tokens_seen="non_padding",
    )


def train(cfg: TrainConfig, data_dir: Path, reporter=None, resume_from: Path | None = None,
          output_dir: Path | None = None) -> Path | None:
    """Run the whole job; returns the adapter (or full model) folder, or None when it was cancelled."""
    started = time.time()
    torch.manual_seed(cfg.seed)
    paths = DataDir(data_dir)
    base_name, model, tokenizer = load_for_training(cfg, paths.models)
    start = starting_adapter(cfg, paths.adapters, base_name, model)
    data = prepare_data(cfg, tokenizer)
    model = add_lora(model, cfg, start)
    trainable, total = parameter_counts(model)
    checkpoints = Path(output_dir or tempfile.mkdtemp(prefix="arena-train-")) / "checkpoints"
    args = training_arguments(cfg, checkpoints, bool(data.validation))
    cancel_flag = Path(output_dir) / "CANCEL" if output_dir else None
    progress = ProgressCallback(reporter, tokens_per_step=_tokens_per_step(data.train, args), cancel_flag=cancel_flag)
    callbacks = [progress]
    if cfg.early_stopping_patience and data.validation:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation or None,
                      data_collator=DataCollator(tokenizer.pad_token_id), callbacks=callbacks)
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    # Under FSDP each rank holds a shard of every weight: all ranks gather the full weights once, rank 0 writes.
    full_state = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if not trainer.is_world_process_zero():
        return None
    if progress.cancelled:
        return None
    card = make_card(cfg, base_name, data, trainer, trainable, total, time.time() - started)
    card["train_seconds"] = round(output.metrics.get("train_runtime", 0.0), 1)
    card["train_tokens"] = trainer.state.num_input_tokens_seen
    card["tokens_per_second"] = round(card["train_tokens"] / card["train_seconds"], 1) if card["train_seconds"] else None
    card["optimizer_state_bytes"] = optimizer_state_bytes(trainer.optimizer)
    saving = {"state_dict": full_state} if full_state is not None else {}
    if cfg.method == "full":
        write = lambda tmp: (model.save_pretrained(tmp, **saving), tokenizer.save_pretrained(tmp))  # noqa: E731
        return save_atomically(write, cfg.name, paths.models, card, paths, reporter, own_only=True)
    return save_adapter(model, cfg.name, paths, base_name, card, reporter, full_state)


def _tokens_per_step(train: list, args: TrainingArguments) -> float:
    tokens = sum(len(row["input_ids"]) for row in train)
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    return tokens / max(1, len(train)) * batch


def make_card(cfg, base_name, data: PreparedData, trainer, trainable, total, seconds) -> dict:
    history = trainer.state.log_history
    memory, memory_kind = peak_memory()
    import peft
    import transformers

    return {
        "base_model": base_name,
        "dataset": {"name": Path(cfg.dataset).name, "sha256": data.dataset_hash,
                    "rows_kept": data.report.rows_kept, "rows_total": data.report.rows_total,
                    "dropped_by_reason": data.report.dropped_by_reason,
                    "train_rows": len(data.train), "validation_rows": len(data.validation)},
        "training": cfg.to_dict(),
        "metrics": {
            "train_loss": [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h],
            "eval_loss": [{"step": h["step"], "loss": h["eval_loss"]} for h in history if "eval_loss" in h],
            "best_step": _best_step(trainer), "best_eval_loss": trainer.state.best_metric,
            "steps": trainer.state.global_step, "epochs": trainer.state.epoch,
        },
        "trainable_parameters": trainable, "total_parameters": total,
        "trainable_share": trainable / total if total else None,
        "wall_seconds": round(seconds, 1), "peak_memory_mb": memory, "peak_memory_kind": memory_kind,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
    }


def _best_step(trainer) -> int | None:
    best = trainer.state.best_model_checkpoint
    return int(best.rsplit("-", 1)[-1]) if best else None


def save_adapter(model, name: str, paths: DataDir, base_name: str, card: dict, reporter=None,
                 state_dict: dict | None = None) -> Path:
    """state_dict: the full weights gathered from FSDP's shards (None: the model's own)."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_name  # the Hub id, not this machine's cache path
        config_path.write_text(json.dumps(config, indent=2))

    return save_atomically(write, name, paths.adapters, card, paths, reporter)


def save_atomically(write, name: str, parent: Path, card: dict, paths: DataDir, reporter=None,
                    own_only: bool = False) -> Path:
    """write(tmp) into a dot folder (the registry ignores those), add the card with the size on disk, then
    rename: never a half-written result. own_only: refuse to replace a folder this trainer did not write
    (a full fine-tune must not put the converted default model in the trash). What was saved under the
    name before goes to the trash first; where it went is printed and, for a job, reported as a metrics
    record {"old_copy": path}, so the Training tab can say so."""
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / name
    if own_only and final.exists() and not (final / CARD_FILE).is_file():
        raise ArenaError(f"{final} is a model this trainer did not write: give the job another name")
    for stale in parent.glob(f".saving-{name}-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".saving-{name}-", dir=parent))
    try:
        write(tmp)
        card["saved_bytes"] = folder_bytes(tmp)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
        if final.exists():  # retrained under the same name: keep the old one in the trash
            old_copy = paths.move_to_trash(final)
            print(f"the '{name}' that was there before is now in {old_copy}", flush=True)
            if reporter is not None:
                reporter.metric({"replaced": name, "old_copy": str(old_copy)})
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == 28:
            raise ArenaError(f"the disk is full: could not write '{name}' to {parent}") from None
        raise ArenaError(f"could not write '{name}': {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
