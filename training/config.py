"""TrainConfig: every option of a training job, shared by the Training tab, `python -m training` and job files.

A job's config is saved as YAML next to its logs; `python -m training --config job.yaml` reruns it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from models.adapters import validate_name
from kernel.config import MAX_SEED, valid_seed
from kernel.errors import ArenaError, first_line
from kernel.files import atomic_write_text, read_text

FORMATS = ("auto", "text", "alpaca", "sharegpt", "messages", "prompt_completion")
METHODS = ("lora", "rslora", "dora", "qlora", "full")  # full: every weight, written as a new base model
# What the adapter learns from: answers to imitate (sft), or preferences between answers (TRL's DPO, ORPO, KTO).
OBJECTIVES = ("sft", "dpo", "orpo", "kto")
PREFERENCE_FORMATS = ("auto", "pairs", "sharegpt", "kto")  # see training.preference_data
REFERENCES = ("auto", "init", "base")
TARGET_PRESETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],  # the TinyLlama seed run's choice
    "all-linear": "all-linear",
}
MAX_CONFIG_BYTES = 2**20  # a job file is a page of options
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
# The Training tab's "Quick CPU demo" preset, here so bench/cost_table.py trains with the same values.
QUICK_CPU_DEMO = dict(method="lora", rank=16, alpha=32, dropout=0.05, target_modules="attention",
                      learning_rate=1e-3, lr_scheduler="cosine", epochs=5.0, max_steps=-1, batch_size=4,
                      grad_accum=1, max_length=256, eval_every=9, early_stopping_patience=0)
# What each annotation accepts, and how to say it (an int is a float too; a bool is not an int here).
FIELD_TYPES = {"str": ((str,), "text"), "int": ((int,), "a whole number"), "float": ((int, float), "a number"),
               "bool": ((bool,), "true or false"), "dict": ((dict,), "a mapping"),
               "str | None": ((str, type(None)), "text or empty"), "str | list[str]": ((str, list), "text or a list")}


@dataclass
class TrainConfig:
    # what
    name: str  # the adapter's name, also its folder under DATA/adapters
    dataset: str  # JSON, JSONL or CSV file
    base: str = "default"
    format: str = "auto"
    validation_file: str | None = None
    # Continue training this adapter (a name in DATA/adapters, or a folder) instead of a fresh LoRA: the next
    # stage of a sequential fine-tune. Its own rank, alpha and target modules then apply.
    init_adapter: str | None = None
    validation_split: float = 0.1  # share of rows held out when no validation file is given
    max_length: int = 512
    overlong: str = "truncate"  # truncate or drop rows longer than max_length
    loss_on: str = "assistant"  # assistant (only answers carry loss) or all
    packing: bool = False  # else length-grouped batches with dynamic padding
    # objective: sft, or dpo / orpo / kto on preference data (`--method dpo` is read as a LoRA trained with DPO)
    objective: str = "sft"
    beta: float = 0.1  # DPO/KTO: how far from the reference the policy may move; ORPO: the odds-ratio weight
    # DPO/KTO's frozen reference: init = the --init-adapter as it was (a second PEFT adapter), base = the base with
    # the adapter switched off; auto = init when there is an init adapter, else base. ORPO needs none.
    reference: str = "auto"
    # adapter (method full: no adapter, every weight of the base is trained)
    method: str = "lora"
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "attention"  # a preset name or a list of module names
    # optimisation (transformers' optimiser and schedulers)
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    eval_every: int = 10  # steps between validation losses
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 = off
    keep_checkpoints: int = 2  # checkpoints kept (one every eval_every steps); 0 keeps all, to compare them as name@step
    seed: int = 42
    logging_steps: int = 1
    extra: dict = field(default_factory=dict)  # room for options a later version adds

    def __post_init__(self) -> None:
        if self.method in OBJECTIVES[1:]:  # `--method dpo`: the spelling of "a LoRA trained with DPO"
            self.objective, self.method = self.method, "lora"
        self.validate()

    @property
    def preference(self) -> bool:
        return self.objective != "sft"

    def validate(self) -> None:
        self.check_types()
        validate_name(self.name)
        formats = PREFERENCE_FORMATS if self.objective in OBJECTIVES[1:] else FORMATS
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}"),
            (self.format in formats, f"format for {self.objective} must be one of {', '.join(formats)}"),
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (self.overlong in ("truncate", "drop"), "overlong must be truncate or drop"),
            (self.loss_on in ("assistant", "all"), "loss_on must be assistant or all"),
            (self.lr_scheduler in SCHEDULERS, f"lr_scheduler must be one of {', '.join(SCHEDULERS)}"),
            (0.0 <= self.validation_split < 0.9, "validation_split must be in [0, 0.9)"),
            (16 <= self.max_length <= 131072, "max_length must be between 16 and 131072"),
            (1 <= self.rank <= 1024, "rank must be between 1 and 1024"),
            (self.alpha > 0, "alpha must be positive"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (0 < self.learning_rate < 1, "learning_rate must be in (0, 1)"),
            (self.epochs > 0 or self.max_steps > 0, "give epochs > 0 or max_steps > 0"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be at least 1"),
            (self.eval_every >= 1, "eval_every must be at least 1"),
            (self.early_stopping_patience >= 0, "early_stopping_patience must be 0 (off) or more"),
            (not (self.method == "full" and self.init_adapter),
             "init_adapter continues a LoRA adapter; method full trains the base's own weights: drop one of them"),
            (self.keep_checkpoints >= 0, "keep_checkpoints must be 0 (all) or more"),
            (0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)"),
            (self.logging_steps >= 1, "logging_steps must be at least 1"),
            (valid_seed(self.seed), f"seed must be a whole number from 0 to {MAX_SEED}"),
            *self._preference_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise ArenaError(f"training config: {message}")
        self.target_list()

    def check_types(self) -> None:
        """A job file is typed by hand: `rank: "16"` gets a line naming the field, not a TypeError later."""
        for f in fields(self):
            value, (kinds, wanted) = getattr(self, f.name), FIELD_TYPES.get(str(f.type), ((object,), ""))
            if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
                continue
            raise ArenaError(f"training config: {f.name} must be {wanted}, not {type(value).__name__}")
    def _preference_checks(self) -> list[tuple[bool, str]]:
        if self.objective == "sft":
            return []
        return [
            (self.beta > 0, "beta must be positive"),
            (self.reference in REFERENCES, f"reference must be one of {', '.join(REFERENCES)}"),
            (self.reference != "init" or bool(self.init_adapter), "reference init needs an --init-adapter"),
            (not self.packing, "packing is for SFT; preference pairs are never packed"),
            (self.method != "full", f"{self.objective} trains a LoRA or QLoRA adapter here, not method full"),
            # KTO's KL term compares each answer with another row's prompt: one row per batch leaves none.
            (self.objective != "kto" or self.batch_size >= 2, "kto needs batch_size 2 or more"),
        ]

    def target_list(self) -> str | list[str]:
        """Module names for PEFT: a preset expanded, or the user's list."""
        if isinstance(self.target_modules, str):
            if self.target_modules in TARGET_PRESETS:
                return TARGET_PRESETS[self.target_modules]
            names = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        else:
            names = list(self.target_modules)
        if not all(isinstance(n, str) and n.strip() for n in names):
            raise ArenaError("training config: target_modules must be module names (text)")
        if not names:
            raise ArenaError("training config: target_modules is empty")
        return names

    # ----- files ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ArenaError(f"{where}: unknown option(s) {', '.join(unknown)}")
        missing = [n for n in ("name", "dataset") if not values.get(n)]
        if missing:
            raise ArenaError(f"{where}: missing {', '.join(missing)}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ArenaError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        path = Path(path)
        text = read_text(path, "config file", max_bytes=MAX_CONFIG_BYTES)
        try:
            values = yaml.safe_load(text) or {}
        except (yaml.YAMLError, RecursionError) as exc:
            raise ArenaError(f"{path}: not valid YAML ({first_line(exc)})") from None
        if not isinstance(values, dict):
            raise ArenaError(f"{path}: expected a mapping of option: value")
        return cls.from_dict(values, where=str(path))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
