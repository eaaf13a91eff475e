"""What a training job cost, recorded in its card, and the Cost table that puts jobs side by side.

The card of every job (LoRA, rsLoRA, DoRA, QLoRA or a full fine-tune) records trainable parameters
and their share, wall and training time, tokens/s, peak memory (resident set on the CPU, allocated
on CUDA), optimizer-state size and the size on disk of what was saved. The Training tab's Cost
table, the README's table and the evaluation report all read those cards through `cost_rows`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from models.adapters import CARD_FILE

# (column, card key, how to show it); the order is the table's
COLUMNS = [
    ("job", None, str),
    ("method", None, str),
    ("trainable parameters", "trainable_parameters", lambda v: f"{v / 1e6:.2f}M"),
    ("share", "trainable_share", lambda v: f"{v * 100:.2f} %"),
    ("wall time", "wall_seconds", lambda v: f"{v:.0f} s"),
    ("tokens/s", "tokens_per_second", lambda v: f"{v:.0f}"),
    ("peak memory", "peak_memory_mb", lambda v: f"{v:.0f} MB"),
    ("optimizer state", "optimizer_state_bytes", lambda v: f"{v / 2**20:.1f} MB"),
    ("on disk", "saved_bytes", lambda v: f"{v / 2**20:.1f} MB"),
]


def peak_memory() -> tuple[float, str]:
    """(MB, what was measured): CUDA's peak allocation, else the process's peak resident set."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1), "CUDA allocated"
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "RSS"  # Linux reports KiB


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor the optimizer keeps (AdamW: two moments per trainable weight)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    return sum(t.numel() * t.element_size() for state in inner.state.values() for t in state.values()
               if isinstance(t, torch.Tensor))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def method_label(training: dict) -> str:
    """'LoRA r=16', 'rsLoRA r=16', 'DoRA r=16', 'QLoRA r=16', 'full'."""
    method = training.get("method", "lora")
    if method == "full":
        return "full"
    names = {"lora": "LoRA", "rslora": "rsLoRA", "dora": "DoRA", "qlora": "QLoRA"}
    return f"{names.get(method, method)} r={training.get('rank', '?')}"


def read_card(folder: Path) -> dict | None:
    """The card of an adapter folder or a full fine-tune's model folder; None when missing or unreadable."""
    try:
        card = json.loads((Path(folder) / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def cost_rows(cards: dict[str, dict]) -> list[dict]:
    """One row of formatted cost figures per job (name -> card); a figure a card lacks shows as '–'."""
    rows = []
    for name, card in cards.items():
        row = {"job": name, "method": method_label(card.get("training", {}))}
        for column, key, show in COLUMNS[2:]:
            value = card.get(key)
            ok = isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))
            row[column] = show(value) if ok else "–"
        rows.append(row)
    return rows


def cost_markdown(cards: dict[str, dict], extra: dict[str, dict] | None = None) -> str:
    """The Cost table as Markdown; `extra` adds columns per job (the evaluation's scores)."""
    rows = cost_rows(cards)
    extra = extra or {}
    extra_columns = list(dict.fromkeys(column for values in extra.values() for column in values))
    header = [c for c, _, _ in COLUMNS] + extra_columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row[c] for c, _, _ in COLUMNS] + [str(extra.get(row["job"], {}).get(c, "–")) for c in extra_columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_section(cards: dict[str, dict], quality: dict[str, dict] | None = None) -> list[str]:
    """Lines for a report: what each variant cost to train, beside its quality (e.g. {"ahoy": {"style": "+100"}})."""
    if not cards:
        return []
    return ["## What each variant cost to train", "", *cost_markdown(cards, quality).splitlines(), ""]


def job_cards(jobs) -> dict[str, dict]:
    """name -> card for succeeded jobs whose result folder still has its card (a name trained twice gets its id)."""
    cards: dict[str, dict] = {}
    for job in jobs:
        card = read_card(Path(job.adapter_path)) if job.status == "succeeded" and job.adapter_path else None
        if card is not None:
            cards[f"{job.name} ({job.id})" if job.name in cards else job.name] = card
    return cards


def cost_frame(cards: dict[str, dict]):
    """The Cost table as a DataFrame for the Training tab."""
    import pandas as pd

    return pd.DataFrame(cost_rows(cards), columns=[c for c, _, _ in COLUMNS])
