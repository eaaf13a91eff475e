"""Chat messages in, prompt token ids out, through the tokenizer's own chat template."""
from __future__ import annotations

from kernel.errors import ArenaError

ROLES = {"system", "user", "assistant", "tool"}


def normalize_messages(messages, system: str | None = None) -> list[dict]:
    """Check a conversation and put the system prompt first; errors name the bad message."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise ArenaError("messages must be a non-empty list of {role, content} objects")
    clean = []
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise ArenaError(f"message {n} is not an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ArenaError(f"message {n} has role {role!r}; use one of {', '.join(sorted(ROLES))}")
        if not isinstance(content, str):
            raise ArenaError(f"message {n} ({role}) has no text content")
        check_text(content, f"message {n} ({role})")
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] not in ("user", "tool") or not clean[-1]["content"].strip():
        raise ArenaError("the last message must be a non-empty user message")
    if system is not None and not isinstance(system, str):
        raise ArenaError(f"the system prompt must be text, not {type(system).__name__}")
    if system is not None:
        check_text(system, "the system prompt")
    if system is not None and system.strip():
        clean = [{"role": "system", "content": system}] + [m for m in clean if m["role"] != "system"]
    return clean


def check_text(text: str, what: str) -> None:
    """Refuse text a tokenizer cannot take: lone surrogates, from bytes that were not UTF-8 (a shell
    argument, a file name) or from a JSON escape such as "\\ud800"."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ArenaError(f"{what} is not valid UTF-8 text (at character {exc.start})") from None


def max_token_chars(tokenizer) -> int:
    """The most characters one token stands for, at most: byte-level tokens are as long as their bytes.

    A text longer than this times a token limit cannot fit that many tokens, so it can be cut or
    refused before it is tokenised (which costs ~100 bytes of memory per character)."""
    return max(map(len, tokenizer.get_vocab()), default=1)


def text_chars(messages: list[dict]) -> int:
    return sum(len(m["content"]) for m in messages)


def build_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # a base model without a template: a plain transcript
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
    return tokenizer(text, add_special_tokens=False)["input_ids"]
