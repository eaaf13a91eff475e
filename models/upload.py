"""Installing an uploaded adapter: one .zip, or the loose files, checked before anyone can see it.

The Models tab hands over whatever the browser sent. Everything is unpacked into a dot folder
inside the adapters folder (the registry skips dot folders), checked there with the same checks
the registry uses, and only then renamed into place in one step. A failed upload leaves nothing
behind, and an adapter that is replaced goes to the trash, never to `rm -rf`.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kernel.errors import ArenaError, write_error
from kernel.files import megabytes as _mb

from .adapters import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, AdapterInfo, inspect_folder, validate_name

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 200 * 2**20
README_FILE = "README.md"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
KEPT_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, README_FILE})
PICKLE_WEIGHTS = "adapter_model.bin"
_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1 << 20


@dataclass
class InstalledAdapter(AdapterInfo):
    """The installed adapter's info as it was right after loading, plus the upload's ignored files."""

    skipped: list[str] = field(default_factory=list)


def install_adapter(engine: Engine, name: str, files: list[Path], max_bytes: int = DEFAULT_MAX_BYTES, *,
                    replace: bool = False) -> InstalledAdapter:
    """Check an upload, move it into the adapters folder as `name`, load it and return its info.

    `files` is one .zip, or adapter_config.json + adapter_model.safetensors (optionally with
    arena_card.json and README.md). Raises ArenaError with one line on any problem, after
    removing everything it wrote.
    """
    validate_name(name)
    files = [Path(f) for f in files]
    _refuse_taken_name(engine, name, replace)
    root = engine.config.paths.adapters
    staging = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".upload-{name}-", dir=root))
        # A folder named like the adapter, because inspect_folder checks the folder's name.
        candidate = staging / name
        candidate.mkdir()
        skipped = _unpack(files, candidate, max_bytes)
        _check(candidate, engine)
        if replace:
            _retire(engine, name)  # only now: a refused upload must not cost the old adapter
        _move_into_place(candidate, root / name)
        info = _load(engine, name, staging)
    except OSError as exc:  # a full disk above all: say so, and where
        raise write_error(exc, root / name) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    if skipped:
        log.info("upload '%s': ignored %s", name, ", ".join(skipped))
    values = {f.name: getattr(info, f.name) for f in fields(AdapterInfo)}
    return InstalledAdapter(**values, skipped=skipped)


# ----- the name ------------------------------------------------------------------------------

def _refuse_taken_name(engine: Engine, name: str, replace: bool) -> None:
    taken = name in {a.name for a in engine.adapters()} or (engine.config.paths.adapters / name).exists()
    if taken and not replace:
        raise ArenaError(f"adapter '{name}' already exists: delete it first or pick another name")


def _retire(engine: Engine, name: str) -> None:
    """Send the adapter being replaced to the trash, registered with the engine or not."""
    if name in {a.name for a in engine.adapters()}:
        trash = engine.delete_adapter(name)
        log.info("replaced adapter '%s': old copy in %s", name, trash)
    stray = engine.config.paths.adapters / name
    if stray.exists() or stray.is_symlink():  # on disk but not (yet) scanned: still never deleted
        engine.config.paths.move_to_trash(stray, name)


# ----- unpacking -----------------------------------------------------------------------------

def _unpack(files: list[Path], target: Path, max_bytes: int) -> list[str]:
    """Put the known files of the upload into target; returns the names that were ignored."""
    if not files:
        raise ArenaError("nothing was uploaded: choose one .zip or the adapter files")
    for path in files:
        if not path.is_file():
            raise ArenaError(f"uploaded file {path.name} cannot be read")
    _check_size("the upload is", sum(p.stat().st_size for p in files), max_bytes)
    zips = [p for p in files if p.suffix.lower() == ".zip"]
    if len(zips) > 1:
        raise ArenaError(f"upload one .zip at a time, not {len(zips)} ({', '.join(p.name for p in zips)})")
    if zips and len(files) > 1:
        raise ArenaError("upload either one .zip or the adapter files, not both")
    if zips:
        return _unpack_zip(zips[0], target, max_bytes)
    return _copy_loose(files, target)


def _check_size(what: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ArenaError(f"{what} {_mb(size)} MB, more than the limit of {_mb(max_bytes)} MB")


def _copy_loose(files: list[Path], target: Path) -> list[str]:
    names = [p.name for p in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ArenaError(f"{', '.join(twice)} was uploaded more than once")
    kept = [p for p in files if p.name in KEPT_FILES]
    _require({p.name for p in kept}, "the upload", names,
             hint=f": upload one .zip, or {CONFIG_FILE} and {WEIGHTS_FILE}")
    for path in kept:
        shutil.copyfile(path, target / path.name)
    return sorted(n for n in names if n not in KEPT_FILES)


def _require(present: set[str], where: str, seen: list[str], hint: str = "") -> None:
    """Name every required file that is missing, and why a pickle file does not count."""
    missing = [n for n in REQUIRED_FILES if n not in present]
    if not missing:
        return
    if WEIGHTS_FILE in missing and any(PurePosixPath(s).name == PICKLE_WEIGHTS for s in seen):
        hint = f" ({PICKLE_WEIGHTS} is a pickle and is not accepted: save the adapter as safetensors)"
    elif len(missing) < len(REQUIRED_FILES):
        hint = ""  # the usage hint is for an upload that holds none of the required files
    raise ArenaError(f"{where} is missing {' and '.join(missing)}{hint}")


def _unpack_zip(path: Path, target: Path, max_bytes: int) -> list[str]:
    if not zipfile.is_zipfile(path):
        raise ArenaError(f"{path.name} is not a zip file")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [e for e in archive.infolist() if not e.is_dir()]
            for entry in archive.infolist():
                _refuse_unsafe(path.name, entry)
            _check_size(f"{path.name} would unpack to", sum(e.file_size for e in entries), max_bytes)
            prefix = _adapter_folder(path.name, [e.filename for e in entries])
            kept = [e for e in entries if e.filename.startswith(prefix) and e.filename[len(prefix):] in KEPT_FILES]
            _require({e.filename[len(prefix):] for e in kept}, path.name, [e.filename for e in entries])
            budget = max_bytes
            for entry in kept:
                budget -= _extract(archive, entry, target / entry.filename[len(prefix):], budget, path.name, max_bytes)
    except zipfile.BadZipFile as exc:
        raise ArenaError(f"{path.name} is not a readable zip file ({exc})") from None
    kept_names = {e.filename for e in kept}
    return sorted(e.filename for e in entries if e.filename not in kept_names)


def _refuse_unsafe(zip_name: str, entry: zipfile.ZipInfo) -> None:
    """Entries that could point outside the folder are refused, even ones that would be ignored."""
    name = entry.filename
    parts = name.split("/")
    if name.startswith("/") or _DRIVE.match(name) or "\\" in name or ".." in parts:
        raise ArenaError(f"{zip_name}: entry '{name}' has an unsafe path (absolute, drive, '\\' or '..')")
    if stat.S_ISLNK(entry.external_attr >> 16):
        raise ArenaError(f"{zip_name}: entry '{name}' is a symbolic link, which is not accepted")
    if entry.flag_bits & 0x1:
        raise ArenaError(f"{zip_name}: entry '{name}' is encrypted; upload a zip without a password")


def _adapter_folder(zip_name: str, names: list[str]) -> str:
    """Where the adapter sits in the zip: '' for the top, 'folder/' for a zipped folder."""
    configs = [n[: -len(CONFIG_FILE)] for n in names if PurePosixPath(n).name == CONFIG_FILE]
    shallow = sorted(p for p in configs if p.count("/") <= 1 and not p.startswith("__MACOSX/"))
    if "" in shallow:
        return ""
    if len(shallow) == 1:
        return shallow[0]
    if len(shallow) > 1:
        raise ArenaError(f"{zip_name} holds several adapters ({', '.join(shallow)}): upload one at a time")
    if configs:
        raise ArenaError(f"{zip_name}: {configs[0]}{CONFIG_FILE} is too deep: put the files at the top of the zip "
                         "or in one folder")
    return ""  # nothing found: _require names what is missing


def _extract(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, target: Path, budget: int,
             zip_name: str, max_bytes: int) -> int:
    """Copy one entry, counting real bytes: a zip's directory may lie about sizes."""
    written = 0
    try:
        with archive.open(entry) as source, open(target, "wb") as sink:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > budget:
                    raise ArenaError(f"{zip_name} unpacks to more than {_mb(max_bytes)} MB, the limit")
                sink.write(chunk)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError) as exc:
        raise ArenaError(f"{zip_name}: cannot unpack '{entry.filename}' ({exc})") from None
    except OSError as exc:
        raise write_error(exc, target) from None
    return written


# ----- checking and going live ---------------------------------------------------------------

def _check(folder: Path, engine: Engine) -> None:
    """The registry's own checks, run while the adapter is still invisible."""
    info = inspect_folder(folder)
    reason = info.reason or engine.check_adapter(info)
    if reason:
        raise ArenaError(f"adapter refused: {reason}")


def _move_into_place(candidate: Path, final: Path) -> None:
    try:
        os.rename(candidate, final)  # one step on the same disk: nobody sees a half-copied folder
    except OSError:
        if final.exists():
            raise ArenaError(f"adapter '{final.name}' already exists: delete it first or pick another name") from None
        raise


def _load(engine: Engine, name: str, staging: Path) -> AdapterInfo:
    """Register and load the new adapter; if PEFT refuses it, take the folder back out."""
    engine.rescan(load=engine.config.load_adapters)
    info = engine.load_adapter(name)
    if info.status == "loaded":
        return info
    engine.unload_adapter(name, forget=True)
    os.rename(engine.config.paths.adapters / name, staging / name)  # staging is removed by the caller
    raise ArenaError(f"adapter '{name}' could not be loaded: {info.reason}")
