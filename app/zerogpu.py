"""`@on_gpu`: Hugging Face ZeroGPU's `spaces.GPU` when that package is importable, else a no-op."""
from __future__ import annotations

try:  # only present on Spaces
    import spaces
except ImportError:
    spaces = None


def on_zerogpu() -> bool:
    """A GPU lent per call: no thread may keep the model busy between calls, so the app serves with the
    reference backend there (the batched loop's own thread and captured graphs would run outside a call)."""
    return spaces is not None


def on_gpu(fn=None, *, duration: int = 120):
    """Mark a handler that runs the model, so ZeroGPU attaches a GPU for its duration."""
    def wrap(inner):
        return spaces.GPU(duration=duration)(inner) if spaces is not None else inner
    return wrap(fn) if fn is not None else wrap
