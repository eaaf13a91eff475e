"""Typed settings shared by the engine, the web app and the command line.

One dataclass per concern: where data lives, which base to load and how, and how to sample.
The UI, `inference.py` and saved job files all build these same objects.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data_dir import DataDir, resolve_data_dir
from .errors import ArenaError

@dataclass
class SamplingParams:
    """How to decode. temperature 0 means greedy (deterministic)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.max_new_tokens <= 32768, "max_new_tokens must be between 1 and 32768"),
            (0.0 <= self.temperature <= 5.0, "temperature must be between 0 and 5"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be 0 (off) or positive"),
            (0.5 <= self.repetition_penalty <= 2.0, "repetition_penalty must be between 0.5 and 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ArenaError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EngineConfig:
    """What to load: a base model (alias, local folder or Hub id) and where adapters live."""

    base: str = "default"
    data_dir: Path = field(default_factory=resolve_data_dir)
    adapter_dirs: list[Path] = field(default_factory=list)
    quantization: str | None = None  # None, "4bit" or "8bit" (bitsandbytes, CUDA only)
    device: str | None = None  # None picks CUDA when present, else CPU
    load_adapters: bool = True  # load every compatible adapter at start

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.adapter_dirs = [Path(d) for d in self.adapter_dirs]
        if self.quantization not in (None, "4bit", "8bit"):
            raise ArenaError(f"unknown quantization '{self.quantization}': use 4bit or 8bit")

    @property
    def paths(self) -> DataDir:
        """Every path under data_dir: adapters, models, trash, the databases, ..."""
        return DataDir(self.data_dir)
