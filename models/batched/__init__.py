"""The batched backend: one decode loop shared by every caller, each row with its own LoRA adapter and sampling."""
