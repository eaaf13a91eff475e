"""Typed settings shared by the engine, the web app and the command line.

One dataclass per concern: where data lives, which base to load and how, and how to sample.
The UI, `inference.py` and saved job files all build these same objects.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data_dir import DataDir, resolve_data_dir
from .errors import ArenaError

MAX_SEED = 2**32 - 1  # numpy's limit, which transformers' set_seed also seeds


def valid_seed(seed: object) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED


@dataclass
class SamplingParams:
    """How to decode. temperature 0 means greedy (deterministic)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the answer ends before the first of these strings

    def __post_init__(self) -> None:
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        checks = [
            (1 <= self.max_new_tokens <= 32768, "max_new_tokens must be between 1 and 32768"),
            (0.0 <= self.temperature <= 5.0, "temperature must be between 0 and 5"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be 0 (off) or positive"),
            (0.5 <= self.repetition_penalty <= 2.0, "repetition_penalty must be between 0.5 and 2"),
            (self.seed is None or valid_seed(self.seed), f"seed must be a whole number from 0 to {MAX_SEED}"),
            (len(self.stop) <= 8, "at most 8 stop strings"),
            (all(isinstance(s, str) and 0 < len(s) <= 200 for s in self.stop),
             "each stop string must be 1 to 200 characters"),
        ]
        for ok, message in checks:
            if not ok:
                raise ArenaError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        """Without `stop` when there is none: stored answers' fingerprints from before it existed stay valid."""
        data = asdict(self)
        if not self.stop:
            del data["stop"]
        else:
            data["stop"] = list(self.stop)
        return data


BACKENDS = ("batched", "hf")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class EngineConfig:
    """What to load: a base model (alias, local folder or Hub id) and where adapters live."""

    base: str = "default"
    data_dir: Path = field(default_factory=resolve_data_dir)
    adapter_dirs: list[Path] = field(default_factory=list)
    quantization: str | None = None  # None, "4bit" or "8bit" (bitsandbytes, on CUDA or the CPU)
    device: str | None = None  # None picks CUDA when present, else CPU
    load_adapters: bool = True  # load every compatible adapter at start
    backend: str = "batched"  # batched: one shared decode loop; hf: transformers generate + PEFT (reference)
    dtype: str = "auto"  # auto: bf16 on CUDA; on a CPU bf16 if it has bf16 instructions (batched), else fp32
    kv_budget_mb: int | None = None  # KV cache of the batched backend (None: 1 GB on CPU, sized to fit on CUDA)
    max_batch: int | None = None  # rows decoded together (None: 16 on CPU, 32 on CUDA)
    max_loras: int = 8  # CUDA: adapter slots of the batched backend, fixed so captured graphs stay valid
    max_lora_rank: int = 32  # CUDA: the largest rank those slots hold; larger adapters use the reference path
    cuda_graphs: bool = True  # CUDA: capture the decode step at a few batch sizes
    max_loaded_checkpoints: int = 4  # training checkpoints (run@N) held at once; the least recently used makes room
    # Remote OpenAI-compatible servers (vLLM, another arena's /v1) instead of a local model; base is then unused.
    backend_urls: list[str] = field(default_factory=list)
    backend_key: str | None = field(default=None, repr=False)
    backend_tokenizer: str | None = None  # a local folder or Hub id with the remote base's tokenizer

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.adapter_dirs = [Path(d) for d in self.adapter_dirs]
        if self.quantization not in (None, "4bit", "8bit"):
            raise ArenaError(f"unknown quantization '{self.quantization}': use 4bit or 8bit")
        if self.backend not in BACKENDS:
            raise ArenaError(f"unknown backend '{self.backend}': use {' or '.join(BACKENDS)}")
        if self.dtype not in DTYPE_CHOICES:
            raise ArenaError(f"unknown dtype '{self.dtype}': use {', '.join(DTYPE_CHOICES)}")
        for name in ("kv_budget_mb", "max_batch", "max_loaded_checkpoints"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ArenaError(f"{name} must be a positive whole number, got {value!r}")
        if not 1 <= self.max_loras <= 256 or not 1 <= self.max_lora_rank <= 1024:
            raise ArenaError("max_loras must be 1-256 and max_lora_rank 1-1024")

    @property
    def paths(self) -> DataDir:
        """Every path under data_dir: adapters, models, trash, the databases, ..."""
        return DataDir(self.data_dir)
