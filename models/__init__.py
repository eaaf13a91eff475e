"""Engine and model/adapter registry: one base model, many LoRA adapters, one device."""
from .adapters import AdapterInfo, validate_name
from .base import DEFAULT_BASE_ID, LoadedBase, ensure_default_model, load_base
from kernel.config import ArenaError, EngineConfig, SamplingParams
from kernel.data_dir import resolve_data_dir
from .backend import Backend
from .device_queue import Cancelled
from .engine import BASE, Answer, ChatRequest, Continuation, Engine, ScoreRequest, TokenLogprob
from .streaming import GenerationStats, StreamEvent

__all__ = [
    "AdapterInfo", "Answer", "Backend", "Continuation", "ArenaError", "BASE", "Cancelled", "ChatRequest",
    "DEFAULT_BASE_ID", "Engine", "EngineConfig", "GenerationStats", "LoadedBase", "SamplingParams", "ScoreRequest",
    "StreamEvent", "TokenLogprob",
    "ensure_default_model", "load_base", "resolve_data_dir", "validate_name",
]
