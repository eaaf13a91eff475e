"""The small kernel every package may use: errors, typed configuration, file and SQLite helpers.

Nothing here imports torch, transformers or gradio, so a module that only needs `ArenaError` or a
JSONL reader loads in milliseconds.
"""
