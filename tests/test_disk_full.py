"""A full disk, for real: a 1 MB tmpfs filled up, and every writer says the disk is full and where.

SQLite on a full disk says "disk I/O error" (growing the WAL's shared memory file fails) or "database
or disk is full"; a copy that fails halfway leaves its temp file behind. Here each store, the
atomic writes and both upload paths meet a disk with no room, and must answer with one line naming
the file and the mount to clear, leaving no partial file and the old content intact.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from app.widgets import keep_upload
from arena.votes import Vote, VoteStore
from evaluation.store import AnswerStore
from kernel.errors import ArenaError
from kernel.files import JsonlAppender, atomic_write_text
from models import Engine, EngineConfig
from models.upload import install_adapter
from training.config import TrainConfig
from training.job_store import JobStore
from training.jobs import job_command

ANSWER = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello " * 500}]


class Disk:
    """A small tmpfs of its own: `fill()` takes all its free space (a file that grows until ENOSPC)."""

    def __init__(self, mount: Path):
        self.mount = mount

    def fill(self) -> None:
        fd = os.open(self.mount / ".filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass  # ENOSPC: full
        finally:
            os.close(fd)

    def listing(self) -> list[str]:
        return sorted(str(p.relative_to(self.mount)) for p in self.mount.rglob("*") if p.name != ".filler")

    def full_message(self, path: Path) -> str:
        return (f"the disk is full: could not write {path} (free space on the disk mounted at {self.mount}, "
                "or choose another --data-dir)")


@pytest.fixture
def disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield Disk(mount)
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def add_vote(path: Path) -> None:
    VoteStore(path).add(Vote("base", "a1", "a", ANSWER, ANSWER))


def add_answer(path: Path) -> None:
    AnswerStore(path).put("key", "base", "case-1", "Hello " * 500, {"new_tokens": 500})


def add_job(path: Path) -> None:
    JobStore(path.parent).create(TrainConfig(name="x", dataset="d.json"), job_command)


STORES = {"votes.sqlite": add_vote, "eval.sqlite": add_answer, "jobs.sqlite": add_job}


@pytest.mark.parametrize("name", sorted(STORES))
def test_a_store_on_a_full_disk_says_so(disk, name):
    path = disk.mount / name
    STORES[name](path)  # created with room to spare, as on an ordinary day
    disk.fill()
    with pytest.raises(ArenaError) as error:
        for _ in range(20):  # until a write needs a page SQLite does not have yet
            STORES[name](path)
    assert str(error.value) == disk.full_message(path)


def test_a_store_created_on_a_full_disk_says_so(disk):
    disk.fill()
    with pytest.raises(ArenaError) as error:
        VoteStore(disk.mount / "votes.sqlite")
    assert str(error.value) == disk.full_message(disk.mount / "votes.sqlite")


def test_an_atomic_write_keeps_the_old_file_and_leaves_no_temp(disk):
    report = disk.mount / "report.md"
    report.write_text("the old report\n")
    disk.fill()
    with pytest.raises(ArenaError) as error:
        atomic_write_text(report, "x" * 100_000)
    assert str(error.value) == disk.full_message(report)
    assert report.read_text() == "the old report\n" and disk.listing() == ["report.md"]


def test_an_appended_record_that_does_not_fit_says_so(disk):
    answers = disk.mount / "answers.jsonl"
    with JsonlAppender(answers) as out:
        out.write({"line": 1})
        disk.fill()
        with pytest.raises(ArenaError) as error:
            out.write({"line": 2, "text": "x" * 100_000})
    assert str(error.value) == disk.full_message(answers)


def test_a_failed_upload_copy_leaves_no_file(disk, tmp_path):
    upload = tmp_path / "rows.jsonl"
    upload.write_text('{"prompt": "Hi"}\n' * 20_000)
    uploads = disk.mount / "uploads"
    uploads.mkdir()
    disk.fill()
    with pytest.raises(ArenaError) as error:
        keep_upload(str(upload), uploads)
    assert str(error.value) == disk.full_message(uploads / "rows.jsonl")
    assert disk.listing() == ["uploads"]  # no half copy, no 0-byte temp


def test_an_adapter_upload_on_a_full_disk_leaves_nothing(disk, tiny_model_path, tiny_adapters):
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=disk.mount, load_adapters=False))
    engine.config.paths.adapters.mkdir()
    disk.fill()
    files = [tiny_adapters / "a1" / "adapter_config.json", tiny_adapters / "a1" / "adapter_model.safetensors"]
    with pytest.raises(ArenaError) as error:
        install_adapter(engine, "late", files)
    assert str(error.value) == disk.full_message(engine.config.paths.adapters / "late")
    assert disk.listing() == ["adapters"] and engine.variants() == ["base"]
