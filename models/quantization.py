"""bitsandbytes quantisation of a base model, shared by serving (models.base) and QLoRA training.

bitsandbytes 0.47 and later ship CPU kernels for LLM.int8 and NF4, so a 4-bit or 8-bit base loads on
the CPU as well as on CUDA. 4-bit is NF4 with double quantisation (QLoRA's recipe), computing in bf16
where the device does bf16 natively and in fp32 elsewhere; 8-bit is LLM.int8.

Quantising on the CPU is slow (bitsandbytes does it in plain PyTorch: ~10 s for the 135M default
model on two idle cores, a minute under load), so a local base is quantised once and the result kept
under DATA/models/.quantized/; later loads read it in about a second.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from kernel.cli import quiet_library_loggers
from kernel.errors import ArenaError

log = logging.getLogger(__name__)
QUANTIZATIONS = ("4bit", "8bit")
DEVICES = ("cpu", "cuda")  # where bitsandbytes has kernels for both kinds
QUANTIZED_DIR = ".quantized"  # under DATA/models: quantised copies of local bases (a dot folder: no base of its own)

# bitsandbytes' warnings about the missing `kernels` package and LLM.int8's fp16 casts are noise, also
# for code that uses the engine without a command line (the app, the tests); before bitsandbytes is imported.
quiet_library_loggers()


def bnb_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_has_bf16() -> bool:
    """AVX512-BF16 (and AMX) CPUs: bitsandbytes' fused CPU 4-bit kernel is bf16-only and needs it."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return False
    return bool(has_avx512bf16())


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device computes it natively, else fp32 (slow bf16 emulation helps nobody)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def why_not(quantization: str, device: torch.device) -> str:
    """'' when this quantisation can load on this device, else the reason it cannot."""
    if quantization not in QUANTIZATIONS:
        return f"unknown quantization '{quantization}': use {' or '.join(QUANTIZATIONS)}"
    if device.type not in DEVICES:
        return f"{quantization} quantization runs on {' or '.join(DEVICES)}, not {device.type}"
    if not bnb_available():
        return f"{quantization} quantization needs bitsandbytes (pip install bitsandbytes==0.50.2)"
    return ""


def bnb_config(quantization: str, device: torch.device, quant_storage: torch.dtype | None = None):
    """The BitsAndBytesConfig for '4bit' (NF4, double quant) or '8bit' (LLM.int8); ArenaError if impossible.
    quant_storage: the dtype packed 4-bit weights are stored in (FSDP needs bf16; default uint8)."""
    reason = why_not(quantization, device)
    if reason:
        raise ArenaError(reason)
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype(device),
                                  **({"bnb_4bit_quant_storage": quant_storage} if quant_storage else {}))
    return BitsAndBytesConfig(load_in_8bit=True)


def device_map(device: torch.device) -> dict:
    """Quantised weights are placed while loading (a quantised model cannot be moved with .to() later)."""
    return {"": "cpu"} if device.type == "cpu" else {"": device.index or 0}


def load_quantized(source: str, quantization: str, device: torch.device, cache_root: Path | None,
                   quant_storage: torch.dtype | None = None, **kwargs):
    """The model at `source` with its linear layers quantised; a local folder is quantised once and kept
    under cache_root (None: no copy kept). kwargs go to from_pretrained (dtype, local_files_only, ...)."""
    from transformers import AutoModelForCausalLM

    config = bnb_config(quantization, device, quant_storage)
    placed = dict(kwargs, device_map=device_map(device))
    cached = cache_folder(cache_root, source, quantization, config) if cache_root and Path(source).is_dir() else None
    if cached is not None and (cached / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(cached, **placed)
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=config, **placed)
    if cached is not None:
        keep_copy(model, cached)
    return model


def cache_folder(cache_root: Path, source: str, quantization: str, config) -> Path:
    """Named after the source's weight files (size and time) and the settings: a changed base is quantised again."""
    import bitsandbytes

    weights = sorted(Path(source).glob("*.safetensors"))
    stamp = [str(Path(source).resolve()), quantization, str(config.bnb_4bit_compute_dtype),
             str(config.bnb_4bit_quant_storage), bitsandbytes.__version__]
    stamp += [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights]
    key = hashlib.sha256("|".join(stamp).encode()).hexdigest()[:12]
    return Path(cache_root) / f"{Path(source).name}-{quantization}-{key}"


def keep_copy(model, target: Path) -> None:
    """Save the freshly quantised model for the next start (atomically; older copies of that base go)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        for old in target.parent.glob(target.name.rsplit("-", 1)[0] + "-*"):
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, target)
    except OSError as exc:  # a read-only or full disk costs the next start time, nothing else
        log.warning("could not keep the quantised copy in %s: %s", target, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def describe(model) -> str:
    """What the Models tab shows, e.g. '4-bit NF4, double quant, bf16 compute'."""
    config = getattr(model.config, "quantization_config", None)
    if config is None:
        return "none"
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if get("load_in_4bit"):
        parts = [f"4-bit {str(get('bnb_4bit_quant_type', 'nf4')).upper()}"]
        if get("bnb_4bit_use_double_quant"):
            parts.append("double quant")
        parts.append(f"{str(get('bnb_4bit_compute_dtype', 'float32')).replace('torch.', '')} compute")
        return ", ".join(parts)
    if get("load_in_8bit"):
        return "8-bit LLM.int8"
    return str(get("quant_method", "quantized"))


def true_numel(param: torch.Tensor) -> int:
    """Weights a parameter stands for: a 4-bit tensor packs two per byte, its quant_state knows the shape."""
    state = getattr(param, "quant_state", None)
    return math.prod(state.shape) if state is not None else param.numel()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights take now: tensors, buffers and the quantisation constants (absmax, scales)."""
    tensors = [*model.parameters(), *model.buffers()]
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        for holder in (state, getattr(state, "state2", None)):
            tensors += [getattr(holder, name, None) for name in ("absmax", "code")]
        tensors.append(getattr(param, "SCB", None))  # LLM.int8's per-row scales
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def unquantized_bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes the same weights would take unquantised in `dtype`: what the Models tab says was saved."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(true_numel(p) for p in model.parameters()) * size + sum(
        b.numel() * b.element_size() for b in model.buffers())


def keep_trainable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel during a QLoRA run.

    On AVX512-BF16 CPUs the first eval-mode forward (the Trainer's validation) repacks every 4-bit
    weight for a fused kernel that has no backward: later training steps then silently lose the
    gradients of every layer below the last (seen with bitsandbytes 0.50.2: LoRA grads of layer 0
    became None). Without the repack the 4-bit layers dequantise and matmul, which autograd follows.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
