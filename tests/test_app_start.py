"""`python arena.py` as the README starts it: a real process serving the page."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port
from tests.helpers import serve_page

REPO = Path(__file__).resolve().parent.parent


def test_arena_py_serves_the_page(tmp_path, default_model_path):
    # The default model as the first start leaves it (converted once per data folder; the fixture did that).
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / default_model_path.name).symlink_to(default_model_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "arena.py", "--port", str(port), "--data-dir", str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "LoRA Arena" in serve_page(proc, port)
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_auth_option_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "app", "--auth", "nopassword", "--data-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: --auth / ARENA_AUTH must look like USER:PASSWORD"


def test_bad_judge_endpoint_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "app", "--judge-endpoint", "http://host/v1", "--data-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: judge endpoint 'http://host/v1': expected NAME=URL")
