"""What the engine benchmark runs on: a random-weight model of a real shape (or the real model), LoRA adapters
made with PEFT, and a prompt of a chosen length. Nothing here is timed."""
from __future__ import annotations

import gc
from pathlib import Path

import torch

from kernel.data_dir import DataDir, resolve_data_dir
from models.prompts import build_prompt_ids

PROMPT = "Write a long story about a dragon."  # invites long answers, so runs reach max_new_tokens
LORA = dict(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
LORA_B_SCALE = 0.3
# Real shapes of the two models, so random-weight runs cost what the real models would.
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                         max_position_embeddings=8192),
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False,
                           max_position_embeddings=2048),
}
DEFAULT_FOLDER_NAME = "SmolLM2-135M-Instruct"  # what the engine converts the default model into, under models/


def adapter_names(count: int) -> list[str]:
    return [f"bench-a{i}" for i in range(1, count + 1)]  # prefixed so they never clash with a user's adapters


def minimal_tokenizer():
    """A byte-level tokenizer with a ChatML template, built offline: the GPU machine has no SmolLM2 files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


def build_random_model(shape: str, folder: Path) -> tuple[Path, str]:
    """Save a random-weight llama of a real shape (config only, no download); returns (folder, tokenizer kind)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    default = DataDir(resolve_data_dir()).models / DEFAULT_FOLDER_NAME
    if (default / "tokenizer.json").is_file():
        tokenizer, kind = AutoTokenizer.from_pretrained(default), "SmolLM2"
    else:
        tokenizer, kind = minimal_tokenizer(), "minimal byte-level"
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = max(dims["vocab_size"], len(tokenizer))  # every token id must have an embedding row
    config = LlamaConfig(**dims, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # bf16 on disk: half the bytes to write and read
    target = folder / f"random-{shape}"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    gc.collect()
    return target, kind


def make_adapters(base_path: str, folder: Path, count: int) -> None:
    """Random r=16 LoRA adapters saved with PEFT, on a copy of the base loaded just for this."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
    for seed, name in enumerate(adapter_names(count)):
        torch.manual_seed(seed)
        # init_lora_weights=False draws B at random too, so each adapter really changes the answers.
        peft = get_peft_model(model, LoraConfig(**LORA, init_lora_weights=False))
        with torch.no_grad():  # full-size random B wrecks SmolLM2 (one seed answered EOS at once): 0.3x
            for pname, p in peft.named_parameters():  # still changes every answer but keeps them long
                if "lora_B" in pname:
                    p.mul_(LORA_B_SCALE)
        peft.save_pretrained(folder / name)
        model = peft.unload()
    del model
    gc.collect()


def prompt_of(tokenizer, tokens: int | None) -> str:
    """PROMPT, or a request padded with more of it so the chat-templated prompt has about `tokens` tokens."""
    if not tokens:
        return PROMPT
    text = PROMPT
    while len(build_prompt_ids(tokenizer, [{"role": "user", "content": text}])) < tokens:
        text += " Make it longer."
    return text
