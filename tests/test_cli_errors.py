"""Bad input to the three commands and the app ends in one line on stderr and an exit code, never a traceback.

What only a process shows runs as one, as a user types it (bytes in argv that are not UTF-8, an app
refusing its stores at start); the rest call the same `main` in this process, which goes through the
same code without 15 s of imports per case.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import inference
from evaluation import __main__ as evaluation_cli
from tests.conftest import free_port
from tests.helpers import in_process, one_line_error
from training import __main__ as training_cli

REPO = Path(__file__).resolve().parent.parent
AHOY = REPO / "training" / "examples" / "ahoy_demo.json"


def run(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def base_args(tmp_path, tiny_model_path) -> list[str]:
    return ["--base", str(tiny_model_path), "--data-dir", str(tmp_path / "data")]


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# ----- inference.py ------------------------------------------------------------------------------

def test_system_that_is_not_text_names_the_line(tmp_path, base_args, capsys):
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "Hi"}\n{"prompt": "Hi", "system": 123}\n')
    proc = in_process(inference.main, ["--input", prompts, "--output", tmp_path / "o.jsonl", *base_args], capsys)
    assert one_line_error(proc, 2) == f"error: {prompts} line 2: the system prompt must be text, not int"


def test_prompt_that_is_not_utf8(tmp_path, base_args):
    proc = subprocess.run([sys.executable, "inference.py", b"caf\xe9", *base_args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert one_line_error(proc, 2) == "error: message 1 (user) is not valid UTF-8 text (at character 3)"


def test_input_file_that_is_not_utf8(tmp_path, base_args, capsys):
    prompts = write(tmp_path / "p.jsonl", b'{"prompt": "caf\xe9"}\n')
    proc = in_process(inference.main, ["--input", prompts, "--output", tmp_path / "o.jsonl", *base_args], capsys)
    assert one_line_error(proc, 2) == f"error: {prompts}: not UTF-8 text (byte 15); save it as UTF-8"


def test_seed_that_is_not_a_whole_number(base_args, capsys):
    proc = in_process(inference.main, ["Hi", "--seed", "1e25", *base_args], capsys)
    assert one_line_error(proc, 2) == \
        "error: argument --seed: invalid int value: '1e25' (see inference.py --help)"


def test_output_that_is_a_folder(tmp_path, base_args, capsys):
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "Hi"}\n')
    proc = in_process(inference.main, ["--input", prompts, "--output", tmp_path, *base_args], capsys)
    assert one_line_error(proc, 2) == f"error: --output {tmp_path} is a folder: give a file name"


@pytest.mark.parametrize("argv, message", [
    (["Hi", "--seed", str(10**25)], "seed must be a whole number from 0 to 4294967295"),
    (["Hi", "--device", "foo"], "unknown device 'foo': use cpu or cuda"),
    (["Hi", "--variants", ","], "--variants names no variant: give base and/or adapter names"),
    (["--top-k", "3"], "give a prompt, --input FILE or --list (see inference.py --help)"),
    (["--input", "{tmp}/p.jsonl", "--output", "{tmp}/not-ours.jsonl"],
     "{tmp}/not-ours.jsonl line 1 is not a record this program wrote: choose another output file"),
    (["--input", "{tmp}/surrogate.jsonl", "--output", "{tmp}/o.jsonl"],
     "{tmp}/surrogate.jsonl line 1: message 1 (user) is not valid UTF-8 text (at character 2)"),
], ids=["huge-seed", "unknown-device", "no-variants", "no-prompt", "output-not-ours", "escaped-surrogate"])
def test_more_bad_inference_input(tmp_path, base_args, capsys, argv, message):
    write(tmp_path / "p.jsonl", '{"prompt": "Hi"}\n')
    not_ours = write(tmp_path / "not-ours.jsonl", "[1, 2]\n")
    write(tmp_path / "surrogate.jsonl", '{"prompt": "ok\\ud800"}\n')
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = in_process(inference.main, argv + base_args + ["--max-new-tokens", "2"], capsys)
    assert one_line_error(proc, 2) == f"error: {message.replace('{tmp}', str(tmp_path))}"
    assert not_ours.read_text() == "[1, 2]\n"  # someone else's file is refused, never rewritten


# ----- arena.py ----------------------------------------------------------------------------------

def corrupt(path: Path) -> None:
    path.write_bytes(b"this is not a database, and it stays as it is\n" * 20)


def newer(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()


SPOILED_STORES = [  # (file, how it is spoiled, the error after the file's path)
    ("votes.sqlite", corrupt, "not a usable vote store (file is not a database)"),
    ("jobs.sqlite", newer, "job store has schema version 99, this program reads up to 1; upgrade LoRA Arena"),
    ("eval.sqlite", corrupt, "not a usable answer store (file is not a database)"),
]


def test_a_store_the_app_cannot_read_stops_it_in_one_line(tmp_path, tiny_model_path):
    """Three apps start at once, each on a data folder with one spoiled store. An app that does not
    refuse its store would serve forever: the timeout turns that into a failure, not a hang."""
    started = []
    for name, spoil, message in SPOILED_STORES:
        data = tmp_path / name.split(".")[0]
        data.mkdir()
        spoil(data / name)
        command = [sys.executable, "arena.py", "--base", str(tiny_model_path), "--data-dir", str(data),
                   "--port", str(free_port())]
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append((proc, data / name, (data / name).read_bytes(), message))
    for proc, path, before, message in started:
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
        assert one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 2) == \
            f"error: {path}: {message}"
        assert path.read_bytes() == before  # refused, not repaired or replaced


# ----- python -m training ------------------------------------------------------------------------

def test_unknown_target_module_is_refused_before_a_job_exists(tmp_path, tiny_model_path):
    data = tmp_path / "data"
    proc = run("-m", "training", "--dataset", AHOY, "--name", "typo", "--base", tiny_model_path,
               "--data-dir", data, "--target-modules", "nonexistent_proj", "--max-steps", "1")
    assert one_line_error(proc, 2) == \
        "error: training config: target modules nonexistent_proj do not exist in this base"
    assert not (data / "jobs.sqlite").exists() and not (data / "jobs").exists()  # no failed job left behind


@pytest.mark.parametrize("argv, message", [
    (["--target-modules", "layers"], "training config: target module 'layers' is a ModuleList: LoRA wraps "
                                     "linear, embedding and convolution layers"),
    (["--seed", str(2**40)], "training config: seed must be a whole number from 0 to 4294967295"),
    (["--warmup-ratio", "nan"], "training config: warmup_ratio must be in [0, 1)"),
    (["--config", "{tmp}/rank.yaml"], "training config: rank must be a whole number, not str"),
    (["--config", "{tmp}/latin1.yaml"], "{tmp}/latin1.yaml: not UTF-8 text (byte 9); save it as UTF-8"),
], ids=["not-a-layer", "huge-seed", "nan-warmup", "rank-as-text", "config-not-utf8"])
def test_more_bad_training_input(tmp_path, tiny_model_path, capsys, argv, message):
    write(tmp_path / "rank.yaml", f"name: x\ndataset: {AHOY}\nrank: '16'\n")
    write(tmp_path / "latin1.yaml", b"name: caf\xe9\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    data = tmp_path / "data"
    proc = in_process(training_cli.main, ["--dataset", AHOY, "--name", "bad", "--base", tiny_model_path,
                                          "--data-dir", data, "--max-steps", "1", *argv], capsys)
    assert one_line_error(proc, 2) == f"error: {message.replace('{tmp}', str(tmp_path))}"
    assert not (data / "jobs.sqlite").exists()


# ----- python -m evaluation ----------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--report", "{tmp}"], "--report {tmp} is a folder: give a file name"),
    (["--limit", "0"], "limit must be at least 1 (or none for every case), not 0"),
    (["--variants", ","], "no variant to evaluate: give base and/or adapter names"),
], ids=["report-folder", "limit-0", "no-variants"])
def test_bad_evaluation_input_fails_before_any_case_runs(tmp_path, base_args, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = in_process(evaluation_cli.main, ["run", "--suite", REPO / "evaluation/suites/starter.jsonl",
                                            "--max-new-tokens", "2", *argv, *base_args], capsys)
    assert one_line_error(proc, 2) == f"error: {message.replace('{tmp}', str(tmp_path))}"
    assert not (tmp_path / "data" / "evaluations").exists()  # refused before a run folder was made
