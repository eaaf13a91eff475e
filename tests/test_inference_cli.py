"""inference.py as a user runs it, on the real default model: as a process where the process matters (the
default alias, one answer), its main() in this process for the rest (the same code, without 15 s of imports
per command)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import in_process

REPO = Path(__file__).resolve().parent.parent


def base_args(data_dir: Path) -> list[str]:
    return ["--data-dir", str(data_dir), "--base", str(REPO / "arena_data/models/SmolLM2-135M-Instruct")]


def run_cli(*args, data_dir: Path, capsys, check: bool = True) -> subprocess.CompletedProcess:
    import inference

    proc = in_process(inference.main, [*base_args(data_dir), *args], capsys)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, default_model_path, trained_adapter):
    import shutil

    data = tmp_path_factory.mktemp("cli_data")
    shutil.copytree(trained_adapter, data / "adapters" / "pirate")
    return data


def test_one_prompt_answers_paris(data_dir):
    proc = subprocess.run([sys.executable, "inference.py", *base_args(data_dir), "What is the capital of France?",
                           "--max-new-tokens", "20"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


def test_default_base_alias_uses_the_embedded_model(data_dir):
    proc = subprocess.run([sys.executable, "inference.py", "--list"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "HuggingFaceTB/SmolLM2-135M-Instruct" in proc.stdout


def test_variants_as_json_lines(data_dir, capsys):
    out = run_cli("What is the capital of France?", "--variants", "base,pirate", "--json",
                  "--max-new-tokens", "20", data_dir=data_dir, capsys=capsys).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["variant"] for r in rows] == ["base", "pirate"]
    assert "Paris" in rows[0]["text"] and "Arr" in rows[1]["text"]
    assert rows[0]["stats"]["new_tokens"] > 0


def test_side_by_side_shows_both_names(data_dir, capsys):
    out = run_cli("Name a color.", "--variants", "base,pirate", "--max-new-tokens", "12", data_dir=data_dir,
                  capsys=capsys).stdout
    assert "=== base" in out and "=== pirate" in out


def test_list_shows_status_and_failure_reason(data_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "extra" / "broken"
    shutil.copytree(data_dir / "adapters" / "pirate", broken)
    (broken / "adapter_model.safetensors").unlink()
    out = run_cli("--list", "--adapters-dir", str(tmp_path / "extra"), data_dir=data_dir, capsys=capsys).stdout
    assert "loaded    pirate" in out
    assert "failed    broken  no adapter_model.safetensors" in out


def test_file_run_resumes_after_interruption(data_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "What is the capital of France?"}) + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "Name a color."}]}) + "\n"
        + json.dumps({"id": "q3", "prompt": "What is 2 + 2?"}) + "\n"
    )
    answers = tmp_path / "answers.jsonl"
    # An earlier run answered line 1, then died while writing line 3.
    answers.write_text(json.dumps({"line": 1, "answers": {"base": "KEPT", "pirate": "KEPT"}}) + "\n" + '{"line": 3, "ans')
    proc = run_cli("--input", str(prompts), "--output", str(answers), "--variants", "base,pirate",
                   "--max-new-tokens", "12", data_dir=data_dir, capsys=capsys)
    assert "resuming: 1 of 3" in proc.stderr
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 3, 4]
    assert records[0]["answers"]["base"] == "KEPT"
    assert records[2]["id"] == "q3" and set(records[2]["answers"]) == {"base", "pirate"}


@pytest.mark.parametrize("args, message", [
    (["Hi", "--variants", "base,ghost"], "unknown variant 'ghost': choose from base, pirate"),
    (["--input", "missing.jsonl", "--output", "o.jsonl"], "missing.jsonl: no such file"),
    (["Hi", "--temperature", "-2"], "temperature must be between 0 and 5"),
])
def test_bad_input_is_one_line_and_nonzero(data_dir, args, message, capsys):
    proc = run_cli(*args, data_dir=data_dir, capsys=capsys, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in proc.stderr


def test_malformed_line_is_named(data_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": broken\n')
    proc = run_cli("--input", str(prompts), "--output", str(tmp_path / "o.jsonl"), data_dir=data_dir, capsys=capsys,
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {prompts} line 2: not valid JSON (Expecting value)"
    missing = tmp_path / "q.jsonl"
    missing.write_text('{"text": "no prompt here"}\n')
    proc = run_cli("--input", str(missing), "--output", str(tmp_path / "o.jsonl"), data_dir=data_dir, capsys=capsys,
                   check=False)
    assert "line 1: needs a non-empty 'prompt' string or a 'messages' list" in proc.stderr
