"""Uploads: a zip or the loose files become a serving adapter; a bad upload is refused and leaves no trace."""
from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from models import ArenaError, Engine, EngineConfig, SamplingParams
from models.upload import install_adapter

GREEDY = SamplingParams(max_new_tokens=6)
OTHER_BASE = "meta-llama/Llama-3.2-1B-Instruct"


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_model_path) -> Engine:
    """A fresh engine on the tiny model with an empty adapters folder, shared by this file's tests."""
    data = tmp_path_factory.mktemp("upload_data")
    return Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=data))


@pytest.fixture(scope="module")
def a1_answer(tiny_engine) -> str:
    return tiny_engine.generate("a1", "Hi", params=GREEDY).text


@pytest.fixture
def a1(tiny_adapters) -> Path:
    return tiny_adapters / "a1"


def listing(folder: Path) -> list[str]:
    """Everything in a folder, dot folders included: a failed upload must leave none behind."""
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def make_zip(path: Path, entries: dict[str, bytes | Path]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def adapter_entries(folder: Path, inside: str = "") -> dict[str, Path]:
    return {inside + p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def edited_config(folder: Path, **changes) -> bytes:
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    return json.dumps(config).encode()


# ----- uploads that work -----------------------------------------------------------------------

def test_zip_with_files_at_top_serves_at_once(engine, a1, a1_answer, tmp_path):
    upload = make_zip(tmp_path / "a1.zip", {**adapter_entries(a1), "training_args.bin": b"\x80pickle"})
    info = install_adapter(engine, "zip-top", [upload])
    assert info.status == "loaded" and info.name == "zip-top"
    assert info.skipped == ["training_args.bin"]
    assert "zip-top" in engine.variants()
    assert engine.generate("zip-top", "Hi", params=GREEDY).text == a1_answer
    assert sorted(os.listdir(info.path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_zip_of_a_folder_serves_at_once(engine, a1, a1_answer, tmp_path):
    entries = {"my-run/": b"", **adapter_entries(a1, "my-run/"), "my-run/checkpoint-5/optimizer.pt": b"x",
               "__MACOSX/my-run/._adapter_config.json": b"x"}
    upload = make_zip(tmp_path / "my-run.zip", entries)
    info = install_adapter(engine, "zip-folder", [upload])
    assert info.status == "loaded"
    assert info.skipped == ["__MACOSX/my-run/._adapter_config.json", "my-run/checkpoint-5/optimizer.pt"]
    assert engine.generate("zip-folder", "Hi", params=GREEDY).text == a1_answer


def test_loose_files_with_a_card_serve_at_once(engine, a1, a1_answer, tmp_path):
    card = tmp_path / "arena_card.json"
    card.write_text(json.dumps({"dataset": {"name": "pirates"}, "created": "2025-01-01"}))
    files = [a1 / "adapter_config.json", a1 / "adapter_model.safetensors", card]
    info = install_adapter(engine, "loose", files)
    assert info.status == "loaded" and info.dataset == "pirates" and info.skipped == []
    assert engine.generate("loose", "Hi", params=GREEDY).text == a1_answer


def test_same_name_is_refused_unless_replace(engine, a1, tmp_path):
    files = [a1 / "adapter_config.json", a1 / "adapter_model.safetensors"]
    install_adapter(engine, "dup", files)
    before = listing(engine.config.paths.adapters)
    with pytest.raises(ArenaError, match=r"^adapter 'dup' already exists: delete it first or pick another name$"):
        install_adapter(engine, "dup", files)
    assert listing(engine.config.paths.adapters) == before
    info = install_adapter(engine, "dup", files, replace=True)
    assert info.status == "loaded" and listing(engine.config.paths.adapters) == before
    assert any(p.name.startswith("dup-") for p in engine.config.paths.trash.iterdir()), "old copy goes to the trash"


def test_refused_replacement_keeps_the_old_adapter(engine, a1, tmp_path):
    files = [a1 / "adapter_config.json", a1 / "adapter_model.safetensors"]
    install_adapter(engine, "keep", files)
    bad = make_zip(tmp_path / "bad.zip", {"adapter_config.json": edited_config(a1, peft_type="IA3"),
                                          "adapter_model.safetensors": a1 / "adapter_model.safetensors"})
    with pytest.raises(ArenaError, match="only LORA adapters"):
        install_adapter(engine, "keep", [bad], replace=True)
    assert "keep" in engine.variants()


def test_an_upload_named_for_another_base_whose_weights_fit_is_served_with_a_warning(engine, a1, tmp_path):
    """The weights decide, not the name (an adapter trained on a renamed or quantised copy must load)."""
    upload = make_zip(tmp_path / "other.zip", {"adapter_config.json": edited_config(a1, base_model_name_or_path=OTHER_BASE),
                                               "adapter_model.safetensors": a1 / "adapter_model.safetensors"})
    info = install_adapter(engine, "other-named", [upload])
    assert info.status == "loaded" and "other-named" in engine.variants()
    assert OTHER_BASE in info.fit_warning + info.fit_note


# ----- uploads that are refused ----------------------------------------------------------------

def _symlink_zip(path: Path, a1: Path) -> Path:
    make_zip(path, adapter_entries(a1))
    link = zipfile.ZipInfo("evil-link")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(link, "/etc/passwd")
    return path


def _bomb_zip(path: Path, a1: Path) -> Path:
    # 20 MB of zeros deflates to about 20 KB: small to upload, big once unpacked.
    return make_zip(path, {**adapter_entries(a1), "zeros.bin": bytes(20 * 2**20)})


def _truncated_zip(path: Path, a1: Path) -> Path:
    weights = (a1 / "adapter_model.safetensors").read_bytes()
    return make_zip(path, {"adapter_config.json": a1 / "adapter_config.json", "adapter_model.safetensors": weights[:-100]})


REFUSED_ZIPS = {
    "dot-dot": (lambda p, a1: make_zip(p, {**adapter_entries(a1), "../evil": b"x"}),
                r"entry '\.\./evil' has an unsafe path"),
    "absolute": (lambda p, a1: make_zip(p, {**adapter_entries(a1), "/etc/evil": b"x"}),
                 r"entry '/etc/evil' has an unsafe path"),
    "drive": (lambda p, a1: make_zip(p, {**adapter_entries(a1), "C:/evil": b"x"}), r"entry 'C:/evil' has an unsafe path"),
    "backslash": (lambda p, a1: make_zip(p, adapter_entries(a1, "run\\")), r"entry 'run\\README.md' has an unsafe path"),
    "symlink": (_symlink_zip, r"entry 'evil-link' is a symbolic link"),
    "bomb": (_bomb_zip, r"would unpack to 20\.0 MB, more than the limit of 1\.0 MB"),
    "truncated": (_truncated_zip, r"^adapter refused: adapter_model\.safetensors is truncated"),
    "not-lora": (lambda p, a1: make_zip(p, {"adapter_config.json": edited_config(a1, peft_type="IA3"),
                                            "adapter_model.safetensors": a1 / "adapter_model.safetensors"}),
                 r"only LORA adapters"),
    "not-a-zip": (lambda p, a1: (p.write_text("hello, not a zip"), p)[1], r"^upload\.zip is not a zip file$"),
    "no-weights": (lambda p, a1: make_zip(p, {"adapter_config.json": a1 / "adapter_config.json"}),
                   r"^upload\.zip is missing adapter_model\.safetensors$"),
    "no-config": (lambda p, a1: make_zip(p, {"x/adapter_model.safetensors": a1 / "adapter_model.safetensors"}),
                  r"^upload\.zip is missing adapter_config\.json"),
    "pickle": (lambda p, a1: make_zip(p, {"adapter_config.json": a1 / "adapter_config.json", "adapter_model.bin": b"x"}),
               r"adapter_model\.bin is a pickle and is not accepted"),
    "two-adapters": (lambda p, a1: make_zip(p, {**adapter_entries(a1, "one/"), **adapter_entries(a1, "two/")}),
                     r"holds several adapters \(one/, two/\)"),
    "too-deep": (lambda p, a1: make_zip(p, adapter_entries(a1, "out/checkpoint-5/")), r"is too deep"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_ZIPS))
def test_bad_zip_is_refused_and_leaves_nothing(engine, a1, tmp_path, case):
    build, message = REFUSED_ZIPS[case]
    upload = build(tmp_path / "upload.zip", a1)
    before = listing(engine.config.paths.adapters)
    with pytest.raises(ArenaError, match=message) as caught:
        install_adapter(engine, f"bad-{case}", [upload], max_bytes=2**20)
    assert "\n" not in str(caught.value)
    assert listing(engine.config.paths.adapters) == before
    assert f"bad-{case}" not in {a.name for a in engine.adapters()}


@pytest.mark.parametrize("name, message", [
    ("../evil", r"may not contain"), ("base", r"reserved for the base model"), ("sp ace", r"must be 1-64 letters"),
])
def test_bad_name_is_refused(engine, a1, name, message):
    before = listing(engine.config.paths.adapters)
    with pytest.raises(ArenaError, match=message):
        install_adapter(engine, name, [a1 / "adapter_config.json", a1 / "adapter_model.safetensors"])
    assert listing(engine.config.paths.adapters) == before


def test_loose_upload_over_the_limit_is_refused(engine, a1):
    before = listing(engine.config.paths.adapters)
    with pytest.raises(ArenaError, match=r"^the upload is \d+\.?\d* MB, more than the limit of 0\.0095 MB$"):
        install_adapter(engine, "big", [a1 / "adapter_config.json", a1 / "adapter_model.safetensors"], max_bytes=10_000)
    assert listing(engine.config.paths.adapters) == before


@pytest.mark.parametrize("pick, message", [
    (lambda a1, z: [a1 / "adapter_config.json"], r"^the upload is missing adapter_model\.safetensors$"),
    (lambda a1, z: [z, a1 / "adapter_config.json"], r"^upload either one \.zip or the adapter files, not both$"),
    (lambda a1, z: [], r"^nothing was uploaded"),
    (lambda a1, z: [a1 / "README.md"], r"^the upload is missing adapter_config\.json and adapter_model\.safetensors: "),
], ids=["no-weights", "zip-and-files", "nothing", "readme-only"])
def test_wrong_file_sets_are_refused(engine, a1, tmp_path, pick, message):
    upload = make_zip(tmp_path / "a1.zip", adapter_entries(a1))
    before = listing(engine.config.paths.adapters)
    with pytest.raises(ArenaError, match=message):
        install_adapter(engine, "wrong-set", pick(a1, upload))
    assert listing(engine.config.paths.adapters) == before


def test_adapter_that_peft_refuses_is_taken_back_out(tiny_model_path, a1, tmp_path):
    """Our checks pass (layers, shapes and rank fit) but PEFT itself refuses an option of the config. Only the
    reference backend asks PEFT; the batched one reads the weights itself, so the engine here is the reference."""
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path / "data", backend="hf"))
    folder = tmp_path / "init-lie"
    shutil.copytree(a1, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["init_lora_weights"] = "bogus"  # PEFT knows true, false and named methods such as "gaussian"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    before = listing(engine.config.paths.adapters)
    with pytest.raises(ArenaError, match=r"^adapter 'peft-fails' could not be loaded: PEFT could not load it: "):
        install_adapter(engine, "peft-fails", [folder / "adapter_config.json", folder / "adapter_model.safetensors"])
    assert listing(engine.config.paths.adapters) == before
    assert "peft-fails" not in {a.name for a in engine.adapters()}
    assert engine.generate("base", "Hi", params=SamplingParams(max_new_tokens=3)).stats.new_tokens == 3


def test_two_files_keep_their_upload_copies(a1, engine, tmp_path):
    """The browser's temp files are copied, not moved: the caller still owns them."""
    copies = [shutil.copy(a1 / n, tmp_path / n) for n in ("adapter_config.json", "adapter_model.safetensors")]
    install_adapter(engine, "copied", [Path(c) for c in copies])
    assert all(Path(c).is_file() for c in copies)
