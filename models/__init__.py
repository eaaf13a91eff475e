"""Engine and model/adapter registry: one base model, many LoRA adapters, one device.

The names below load on first use: the engine brings torch and transformers (seconds), and a light
module of this package (models.prompts, say) must not wait for them, nor a command line that only
parses its flags.
"""
from kernel.config import ArenaError, EngineConfig, SamplingParams
from kernel.data_dir import resolve_data_dir

_WHERE = {
    "AdapterInfo": ".adapters", "validate_name": ".adapters",
    "DEFAULT_BASE_ID": ".base", "LoadedBase": ".base", "ensure_default_model": ".base", "load_base": ".base",
    "Backend": ".backend", "Cancelled": ".device_queue",
    "BASE": ".engine", "Answer": ".engine", "ChatRequest": ".engine", "Continuation": ".engine", "Engine": ".engine",
    "ScoreRequest": ".engine", "TokenLogprob": ".engine",
    "GenerationStats": ".streaming", "StreamEvent": ".streaming",
}

__all__ = ["ArenaError", "EngineConfig", "SamplingParams", "resolve_data_dir", *_WHERE]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'models' has no attribute '{name}'")
    from importlib import import_module

    return getattr(import_module(_WHERE[name], __name__), name)
