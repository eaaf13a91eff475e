"""Malformed adapters never stop the server: each is listed with its reason, checked before PEFT allocates.

The adapters are real PEFT adapters of the tiny Llama with one thing broken in their config or in
their safetensors header, as a careless user or a hostile upload would break them. `inference.py
--list` and `arena.py` run as real processes over a folder of them; the fuzz tests throw random
JSON at the same checks and hold them to two promises: no exception escapes, and an adapter the
checks pass is one PEFT can load.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import Engine, EngineConfig, SamplingParams
from models.adapters import inspect_folder
from tests.conftest import free_port
from tests.helpers import serve_page

REPO = Path(__file__).resolve().parent.parent
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
GREEDY = SamplingParams(max_new_tokens=4)


# ----- reading and writing the two files --------------------------------------------------------

def read_weights(folder: Path) -> tuple[dict, bytes]:
    raw = (folder / WEIGHTS).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def write_weights(folder: Path, header, data: bytes) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    (folder / WEIGHTS).write_bytes(struct.pack("<Q", len(text)) + text + data)


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps({**config, **changes}))


def tensors(header: dict) -> dict:
    return {k: v for k, v in header.items() if k != "__metadata__"}


# ----- the malformed adapters (each: how to break a copy of a good one, what its reason says) ----

def peft_type_number(folder):
    edit_config(folder, peft_type=5)


def header_is_a_list(folder):
    _, data = read_weights(folder)
    write_weights(folder, [1, 2, 3], data)


def integer_entries(folder):
    header, data = read_weights(folder)
    write_weights(folder, {**header, **{name: 5 for name in tensors(header)}}, data)


def offsets_past_the_end(folder):
    header, data = read_weights(folder)
    name = sorted(tensors(header))[0]
    header[name]["data_offsets"] = [0, 10**12]
    write_weights(folder, header, data)


def overlapping_offsets(folder):
    header, data = read_weights(folder)
    first, second = sorted(tensors(header), key=lambda n: header[n]["data_offsets"])[:2]
    header[second]["data_offsets"] = header[first]["data_offsets"]
    write_weights(folder, header, data)


def one_dimensional_embedding(folder):
    entry = {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}
    write_weights(folder, {"base_model.model.model.embed_tokens.lora_embedding_A": entry}, bytes(32))


def rank_lie(folder):
    edit_config(folder, r=4096)  # the weights are rank 8: PEFT would build 4096-wide matrices first


def integer_dtype(folder):
    header, data = read_weights(folder)
    for entry in tensors(header).values():
        entry["dtype"] = "I32"
    write_weights(folder, header, data)


def deeply_nested_header(folder):
    write_weights(folder, b"[" * 100_000 + b"]" * 100_000, b"")


def line_break_in_a_name(folder):
    header, data = read_weights(folder)
    name = sorted(tensors(header))[0]
    header[name.replace("q_proj", "q_proj\nsecond line")] = header.pop(name)
    write_weights(folder, header, data)


def targets_a_number(folder):
    edit_config(folder, target_modules=5)


def targets_a_bad_regex(folder):
    edit_config(folder, target_modules="(")


def huge_config(folder):
    edit_config(folder, padding="x" * 2**21)


MALFORMED = {
    "peft-type-5": (peft_type_number, "peft_type is '5', only LORA adapters are served"),
    "header-list": (header_is_a_list, "the header is a JSON list, not an object of tensors"),
    "int-entries": (integer_entries, "is a JSON int, not an object with dtype, shape and data_offsets"),
    "bad-offsets": (offsets_past_the_end, "data_offsets [0, 1000000000000] hold 1000000000000 bytes"),
    "overlap": (overlapping_offsets, "overlaps the tensor before it"),
    "embedding-1d": (one_dimensional_embedding, "shape [8] has 1 dimensions, a lora_embedding_A tensor"),
    "rank-4096": (rank_lie, "rank 8 in the weights, but adapter_config.json gives this layer r=4096"),
    "int-dtype": (integer_dtype, "dtype I32; LoRA weights are F16, BF16, F32, F64"),
    "nested-header": (deeply_nested_header, "has a corrupt header (not JSON)"),
    "newline-name": (line_break_in_a_name, "targets module 'model.layers.0.self_attn.q_proj second line'"),
    "targets-5": (targets_a_number, "'target_modules' must be a name, a regex or a list of names"),
    "targets-regex": (targets_a_bad_regex, "target_modules is not a valid regular expression"),
    "huge-config": (huge_config, "adapter_config.json is larger than 1 MB"),
}
NOT_UTF8_NAME = b"bad\xffname"  # a folder name that is not UTF-8: its reason must still print


@pytest.fixture(scope="module")
def malformed(tmp_path_factory, tiny_adapters) -> Path:
    """A data folder whose adapters folder holds one good adapter and every malformed one."""
    data = tmp_path_factory.mktemp("malformed")
    adapters = data / "adapters"
    shutil.copytree(tiny_adapters / "a1", adapters / "good")
    for name, (breaker, _) in MALFORMED.items():
        shutil.copytree(tiny_adapters / "a2", adapters / name)
        breaker(adapters / name)
    shutil.copytree(tiny_adapters / "a3", adapters / os.fsdecode(NOT_UTF8_NAME))  # the bytes, as Python keeps them
    return data


def test_list_names_every_malformed_adapter_with_its_reason(malformed, tiny_model_path):
    proc = subprocess.run([sys.executable, "inference.py", "--list", "--base", str(tiny_model_path),
                           "--data-dir", str(malformed)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapter_lines = [line for line in proc.stdout.splitlines()[1:] if not line.startswith(" ")]  # not the base's notes
    rows = {line.split()[1]: line for line in adapter_lines}
    assert rows.pop("good").startswith("loaded ")
    for name, (_, reason) in MALFORMED.items():
        row = rows.pop(name)
        assert row.startswith(f"failed    {name}  ") and reason in row, row
    [odd] = rows.values()  # the non-UTF-8 name: listed, escaped, one line
    assert odd.startswith("failed    bad\\udcffname  ") and "must be 1-64 letters" in odd
    assert len(adapter_lines) == 1 + len(MALFORMED) + 1  # good, each broken one, the odd name


def test_arena_starts_and_serves_over_malformed_adapters(malformed, tiny_model_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "arena.py", "--port", str(port), "--base", str(tiny_model_path),
                             "--data-dir", str(malformed)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert "LoRA Arena" in serve_page(proc, port)
    finally:
        proc.terminate()
        proc.wait(10)


# ----- fuzzing the checks ------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=12), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_engine(tmp_path_factory, tiny_model_path) -> Engine:
    """An engine of its own: fuzzed adapters come and go in it."""
    return Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path_factory.mktemp("fuzz")))


@pytest.fixture(scope="module")
def good_adapter(tiny_adapters) -> tuple[dict, bytes, dict]:
    header, data = read_weights(tiny_adapters / "a1")
    return header, data, json.loads((tiny_adapters / "a1" / CONFIG).read_text())


def load_fuzzed(engine: Engine, header, data: bytes, config) -> str:
    """Check and load one adapter from these files as the engine does; its reason ('' when loaded)."""
    with tempfile.TemporaryDirectory(dir=engine.config.data_dir) as scratch:
        folder = Path(scratch) / "fuzzed"
        folder.mkdir()
        write_weights(folder, header, data)
        (folder / CONFIG).write_text(json.dumps(config))
        info = inspect_folder(folder)
        reason = info.reason or engine.check_adapter(info)
        assert isinstance(reason, str) and "\n" not in reason
        if reason:
            return reason
        shutil.copytree(folder, engine.config.paths.adapters / "fuzzed")
    try:
        engine.rescan()
        return {a.name: a for a in engine.adapters()}["fuzzed"].reason
    finally:
        shutil.rmtree(engine.config.paths.adapters / "fuzzed")
        engine.rescan()  # forgets it, and unloads it


@st.composite
def mutated_header(draw, good):
    """The good header with one tensor's dtype, shape or offsets, or a whole entry, replaced."""
    header, data, _ = good
    header = json.loads(json.dumps(header))
    name = draw(st.sampled_from(sorted(tensors(header))))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    sizes = st.lists(st.integers(-2, 80), min_size=0, max_size=3)
    value = draw({"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F64"]) | JSON,
                  "shape": sizes | JSON, "data_offsets": sizes | JSON, None: JSON}[field])
    if field is None:
        header[name] = value
    else:
        header[name][field] = value
    return header, data


@FUZZ
@given(data=st.data())
def test_a_mutated_header_is_refused_or_loads(fuzz_engine, good_adapter, data):
    header, weights = data.draw(mutated_header(good_adapter))
    reason = load_fuzzed(fuzz_engine, header, weights, good_adapter[2])
    assert not reason.startswith("PEFT could not load it"), reason  # the checks saw everything first


@FUZZ
@given(header=JSON)
def test_any_json_header_is_a_reason_not_a_crash(fuzz_engine, good_adapter, header):
    assert load_fuzzed(fuzz_engine, header, b"", good_adapter[2])


CONFIG_FIELDS = ["peft_type", "r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_dora",
                 "base_model_name_or_path", "modules_to_save", "layers_to_transform"]


@FUZZ
@given(field=st.sampled_from(CONFIG_FIELDS), value=JSON | st.integers(1, 64))
def test_a_fuzzed_config_never_stops_the_engine(fuzz_engine, good_adapter, field, value):
    header, weights, config = good_adapter
    load_fuzzed(fuzz_engine, header, weights, {**config, field: value})  # a reason, or loaded
    assert fuzz_engine.generate("base", "Hi", params=GREEDY).stats.new_tokens == 4
