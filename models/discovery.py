"""Finding adapters where training scripts leave them: nested folders and runs of `checkpoint-N` folders.

An adapter is named by its path relative to the adapters folder (`finetuned-model/lora_weights`), and
a folder of `checkpoint-N` subfolders is one run whose checkpoints are the variants `run@N`, ordered by
step, with the step, epoch and losses that `trainer_state.json` recorded. The app's own training jobs
keep their checkpoints in DATA/jobs/<id>/checkpoints: they are served as `<job name>@N` the same way.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import yaml

from kernel.errors import ArenaError

from .adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterInfo, inspect_folder, printable

log = logging.getLogger(__name__)

MAX_DEPTH = 3  # finetuned-model/lora_weights, outputs/run-1/checkpoint-500: deep enough, never a disk walk
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")  # transformers' and Unsloth's checkpoint folder names
STATE_FILE = "trainer_state.json"


def scan(dirs: list[Path], jobs_dir: Path | None = None) -> list[AdapterInfo]:
    """Every adapter under the given folders (nested, checkpoints included), and the app's jobs' checkpoints."""
    found: dict[str, AdapterInfo] = {}
    for root in dirs:
        for info in scan_root(Path(root)):
            _add(found, info)
    if jobs_dir is not None:
        for info in scan_jobs(Path(jobs_dir)):
            _add(found, info)
    return list(found.values())


def _add(found: dict[str, AdapterInfo], info: AdapterInfo) -> None:
    if info.name in found:
        info.fail(f"name already used by {found[info.name].path}")
        info.name = f"{info.name} [{printable(str(info.path.parent))}]"
    found[info.name] = info


def scan_root(root: Path) -> list[AdapterInfo]:
    """A folder with nothing servable anywhere inside still gets its one-line reason (under its own name)."""
    try:
        tops = _subfolders(root) if root.is_dir() else []
    except OSError as exc:  # an unreadable folder of adapters costs its adapters, not the server
        log.warning("cannot read adapters folder %s: %s", root, exc.strerror or exc)
        return []
    infos = []
    for top in tops:
        inside = list(_walk(root, top, 1))
        infos += inside or [inspect_folder(top)]
    return infos


def _subfolders(folder: Path) -> list[Path]:
    """Child folders, dot folders (temp folders of writes in progress) left out."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _walk(root: Path, folder: Path, depth: int):
    if not _inside(root, folder):
        return  # a link out of the adapters folder is never followed
    name = folder.relative_to(root).as_posix()
    try:
        children = _subfolders(folder)
    except OSError:
        children = []
    checkpoints = _checkpoints(children)
    if (folder / CONFIG_FILE).is_file() or (folder / WEIGHTS_FILE).is_file():
        yield inspect_folder(folder, name=name)
    yield from (checkpoint_info(path, name, step) for step, path in checkpoints)
    if checkpoints or (folder / CONFIG_FILE).is_file() or depth >= MAX_DEPTH:
        return
    for child in children:
        yield from _walk(root, child, depth + 1)


def _inside(root: Path, folder: Path) -> bool:
    try:
        return folder.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _checkpoints(children: list[Path]) -> list[tuple[int, Path]]:
    steps = [(int(m[1]), c) for c in children if (m := CHECKPOINT_RE.match(c.name))]
    return sorted(steps)


def checkpoint_info(path: Path, run: str, step: int) -> AdapterInfo:
    """One checkpoint as a variant `run@step`, with what the trainer recorded at that step."""
    info = inspect_folder(path, name=f"{run}@{step}")
    info.run, info.step = printable(run), step
    try:
        fill_training_state(info, path / STATE_FILE)
    except ArenaError as exc:  # the stats are a help; a checkpoint without them still serves
        info.card.setdefault("warning", str(exc))
    return info


def fill_training_state(info: AdapterInfo, path: Path) -> None:
    """Epoch and the last training and validation loss logged at or before the checkpoint's step."""
    if not path.is_file():
        return
    from .adapters import _read_json

    state = _read_json(path)
    if not isinstance(state, dict):
        raise ArenaError(f"{STATE_FILE} is not a JSON object")
    history = [h for h in state.get("log_history") or [] if isinstance(h, dict)]
    upto = [h for h in history if isinstance(h.get("step"), int) and h["step"] <= info.step]
    epoch = state.get("epoch")
    info.epoch = round(float(epoch), 2) if isinstance(epoch, (int, float)) else None
    info.train_loss = _last(upto, "loss")
    info.eval_loss = _last(upto, "eval_loss")


def _last(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if isinstance(h.get(key), (int, float))]
    return round(float(values[-1]), 4) if values else None


def scan_jobs(jobs_dir: Path) -> list[AdapterInfo]:
    """The app's jobs' kept checkpoints as `<adapter name>@N`; an older job of the same name as `<name>-<id>@N`."""
    try:
        jobs = sorted((p for p in jobs_dir.iterdir() if (p / "checkpoints").is_dir()), reverse=True) \
            if jobs_dir.is_dir() else []
    except OSError:
        return []
    infos, named = [], set()
    for job in jobs:  # job ids start with their time: newest first
        try:
            steps = _checkpoints(_subfolders(job / "checkpoints"))
        except OSError:
            continue
        if not steps:
            continue
        name = job_adapter_name(job) or f"job-{job.name}"
        run = name if name not in named else f"{name}-{job.name}"
        named.add(name)
        infos += [checkpoint_info(path, run, step) for step, path in steps]
    return infos


def job_adapter_name(job: Path) -> str:
    """The adapter name in a job's job.yaml ('' when it cannot be read)."""
    try:
        config = yaml.safe_load((job / "job.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return ""
    name = config.get("name") if isinstance(config, dict) else None
    return name if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) else ""


def run_checkpoints(adapters: list[AdapterInfo], run: str) -> list[AdapterInfo]:
    """One run's checkpoints, by step."""
    return sorted((a for a in adapters if a.run == run and a.step is not None), key=lambda a: a.step)


def checkpoints_in(adapters: list[AdapterInfo], folder: Path, most: int) -> list[str]:
    """Up to `most` of the checkpoints kept in `folder`, spread evenly from the first to the last step."""
    found = sorted((a for a in adapters if a.step is not None and Path(a.path).parent == Path(folder)),
                   key=lambda a: a.step)
    if len(found) <= most:
        return [a.name for a in found]
    picks = sorted({round(i * (len(found) - 1) / (most - 1)) for i in range(most)})
    return [found[i].name for i in picks]


def describe(info: AdapterInfo) -> str:
    """A short label: 'ahoy@50 · step 50 · epoch 1.0 · train 1.23 · val 1.40'."""
    parts = [info.name]
    if info.step is not None:
        parts.append(f"step {info.step}")
    for label, value in (("epoch", info.epoch), ("train", info.train_loss), ("val", info.eval_loss)):
        if value is not None:
            parts.append(f"{label} {value:g}")
    return " · ".join(parts)

