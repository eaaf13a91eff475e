"""Dataset check before a job starts: validation report, token lengths and a preview as training sees it."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from kernel.data_dir import DataDir
from kernel.errors import ArenaError, first_line
from models.compatibility import targets_reason
from models.base import hub_offline, resolve_base

from .config import TrainConfig
from .data import load_dataset, split_examples
from .encoding import encode_all, preview


@dataclass
class CheckResult:
    summary: str  # one paragraph of plain text
    markdown: str  # the report for the UI
    preview_html: str
    train_rows: int
    validation_rows: int


def load_tokenizer(base: str, models_dir: Path):
    _, source = resolve_base(base, models_dir)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=hub_offline())
    except (OSError, ValueError) as exc:
        raise ArenaError(f"cannot load the tokenizer of '{base}': {first_line(exc)}") from None


def base_modules(base: str, models_dir: Path) -> dict[str, torch.nn.Module]:
    """The base's layers by name, built on the meta device from its config: no weight is read or held."""
    _, source = resolve_base(base, models_dir)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=hub_offline())
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as exc:
        raise ArenaError(f"cannot read the config of base '{base}': {first_line(exc)}") from None
    return dict(model.named_modules())


def check_targets(cfg: TrainConfig, models_dir: Path) -> None:
    """Every target module must name layers of the base LoRA can wrap: a typo is refused here, before
    a job is registered and a process started, not by PEFT minutes later."""
    targets = cfg.target_list()
    if cfg.init_adapter or isinstance(targets, str):  # a later stage keeps its adapter's targets; presets
        return
    reason = targets_reason(targets, base_modules(cfg.base, models_dir))
    if reason:
        raise ArenaError(f"training config: {reason}")


def check_dataset(cfg: TrainConfig, data_dir: Path, tokenizer=None) -> CheckResult:
    """Everything a job would refuse is raised here as ArenaError, before any process starts."""
    models_dir = DataDir(data_dir).models
    check_targets(cfg, models_dir)
    tokenizer = tokenizer or load_tokenizer(cfg.base, models_dir)
    if cfg.preference:
        return check_preference(cfg, tokenizer)
    examples, report = load_dataset(cfg.dataset, cfg.format)
    if cfg.validation_file:
        validation, _ = load_dataset(cfg.validation_file, cfg.format)
        train = examples
    else:
        train, validation = split_examples(examples, cfg.validation_split, cfg.seed)
    encoded, report = encode_all(examples, tokenizer, max_length=cfg.max_length, loss_on=cfg.loss_on,
                                 overlong=cfg.overlong, report=report)
    if not encoded:
        raise ArenaError(f"{cfg.dataset}: no row can train (max_length {cfg.max_length}); "
                         f"first problems: {first_problems(report)}")
    html_preview = preview(examples, tokenizer, n=3, max_length=cfg.max_length, loss_on=cfg.loss_on,
                           overlong=cfg.overlong)
    return CheckResult(report.summary(), report_markdown(cfg, report, len(train), len(validation)), html_preview,
                       len(train), len(validation))


def check_preference(cfg: TrainConfig, tokenizer) -> CheckResult:
    """The same check for DPO, ORPO and KTO data: rows kept, why the others were dropped, a marked preview."""
    from .preference_data import load_split, preview as preference_preview

    data = load_split(cfg, tokenizer)
    if not data.train:
        raise ArenaError(f"{cfg.dataset}: no row can train (max_length {cfg.max_length}); "
                         f"first problems: {first_problems(data.report)}")
    markdown = report_markdown(cfg, data.report, len(data.train), len(data.validation))
    shown = sorted(data.train + data.validation, key=lambda e: e.row)
    return CheckResult(data.report.summary(), markdown, preference_preview(shown, tokenizer), len(data.train),
                       len(data.validation))


def first_problems(report) -> str:
    return "; ".join(f"row {r}: {why}" for r, why in report.bad_rows[:3])


def report_markdown(cfg: TrainConfig, report, train_rows: int, validation_rows: int) -> str:
    bad = "".join(f"\n| {row} | {html.escape(why)} |" for row, why in report.bad_rows[:20])
    t = report.tokens
    unit = "answers" if cfg.objective == "kto" else "rows"
    return (
        f"**{Path(cfg.dataset).name}**: format `{report.format}`, {report.rows_kept} of {report.rows_total} rows kept, "
        f"{train_rows} {unit} for training and {validation_rows} for validation ({cfg.objective}).\n\n"
        f"Tokens per row: min {t.min}, median {t.median}, p95 {t.p95}, max {t.max}; "
        f"{t.over_max_length} rows over max_length {cfg.max_length} ({cfg.overlong}d)."
        + (f"\n\n| row | why it was dropped |\n|---|---|{bad}" if bad else "")
    )


def print_check(cfg: TrainConfig, data_dir: Path) -> None:
    result = check_dataset(cfg, data_dir)
    print(result.summary)
    print(f"train rows {result.train_rows}, validation rows {result.validation_rows}")
