"""One checkpoint format for every model: `config.json` + `model.safetensors`.

`config.json` names the family and model class and holds every hyperparameter
(and the tokenizer), so a folder rebuilds its own model with no other code.
No pickle anywhere: weights are safetensors, everything else is JSON.

Writes are atomic at the folder level: a new folder is written beside the old
one, fsynced, then swapped in with renames, so a crash mid-write leaves the
previous checkpoint intact (and `load` recovers it from `<dir>.old` if the
crash fell between the two renames).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trilemma.registry import shipped_models

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing files, corrupted, or of an unknown kind."""


def model_folder(name_or_dir: str | Path) -> Path:
    """The folder a model argument means: a shipped model by name, else an existing folder; a CheckpointError
    naming the shipped models if it is neither."""
    shipped = shipped_models()
    if str(name_or_dir) in shipped:
        return shipped[str(name_or_dir)]
    if Path(name_or_dir).exists():
        return Path(name_or_dir)
    raise CheckpointError(
        f"unknown model {str(name_or_dir)!r}: neither a shipped model ({', '.join(shipped) or 'none shipped'}) nor a folder"
    )


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks (weights can be larger than memory likes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def atomic_folder(final: Path, fill) -> None:
    """Write a folder atomically: `fill(tmp_dir)` writes the files, then swap in."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(final.name + ".old")
    if old.exists() and not final.exists():  # an earlier crash fell between the renames: put it back first
        os.replace(old, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        fill(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors ready for safetensors, which refuses two names on one storage.

    Tied weights (T5's `shared` and `encoder.embed_tokens`) are one storage
    under two names; the duplicate is written as a copy, and loading the state
    dict copies both into the same tied parameter again.
    """
    seen, out = set(), {}
    for name, value in tensors.items():
        value = value.detach().contiguous().cpu()
        storage = value.untyped_storage().data_ptr()
        out[name] = value.clone() if storage in seen else value
        seen.add(storage)
    return out


def save_checkpoint(directory: str | Path, config: dict, tensors: dict[str, torch.Tensor], extra_files: dict | None = None) -> None:
    """Save `config` (JSON-able) and `tensors` as one checkpoint folder, atomically.

    `extra_files` maps file names to str (written as text) or to dicts of
    tensors (written as safetensors) that travel with the checkpoint.
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def fill(tmp: Path) -> None:
        save_file(_unshared(tensors), tmp / WEIGHTS_NAME)
        for name, content in (extra_files or {}).items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            elif isinstance(content, dict) and all(isinstance(v, torch.Tensor) for v in content.values()):
                save_file(_unshared(content), tmp / name)
            else:
                write_json(tmp / name, content)
        files = {f.name: file_sha256(f) for f in sorted(tmp.iterdir()) if f.name != WEIGHTS_NAME}
        full = dict(config, format_version=FORMAT_VERSION, weights_sha256=file_sha256(tmp / WEIGHTS_NAME), files_sha256=files)
        write_json(tmp / CONFIG_NAME, full)

    atomic_folder(Path(directory), fill)


def replace_extra_file(directory: str | Path, name: str, content: dict) -> None:
    """Rewrite one JSON file that travels with a checkpoint (its measured scores, say), and the sha256 that
    config.json keeps of it, atomically; the weights are untouched."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_NAME).read_text())
    if name not in config.get("files_sha256", {}):
        raise CheckpointError(f"{directory} has no {name} to replace")

    def fill(tmp: Path) -> None:
        for f in directory.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        write_json(tmp / name, content)
        config["files_sha256"][name] = file_sha256(tmp / name)
        write_json(tmp / CONFIG_NAME, config)

    atomic_folder(directory, fill)


def resolve_folder(directory: str | Path) -> Path:
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.exists():  # a crash fell between the two renames
        return old
    return directory


def read_config(directory: str | Path) -> dict:
    directory = resolve_folder(directory)
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint folder {directory} has no {CONFIG_NAME}; it is incomplete")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupted (not valid JSON: {e})") from None
    except RecursionError:
        raise CheckpointError(f"{path} is corrupted (nested too deeply to be a config)") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is corrupted: it holds a {type(config).__name__}, not a JSON object")
    for key in ("family", "model_class"):
        if key not in config:
            raise CheckpointError(f"{path} names no '{key}'; it is not a trilemma checkpoint")
    if not isinstance(config["model_class"], str) or not isinstance(config["family"], str):
        raise CheckpointError(f"{path} is corrupted: its 'family' and 'model_class' must be names")
    if not isinstance(config.get("config", {}), dict):
        raise CheckpointError(f"{path} is corrupted: its 'config' is not a JSON object")
    return config


def load_checkpoint(directory: str | Path, verify: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a checkpoint folder; a clear CheckpointError if broken."""
    directory = resolve_folder(directory)
    config = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"checkpoint folder {directory} has no {WEIGHTS_NAME}; it is incomplete")
    if verify and config.get("weights_sha256") and file_sha256(weights) != config["weights_sha256"]:
        raise CheckpointError(f"{weights} is corrupted: its sha256 does not match the one in {CONFIG_NAME}")
    if verify:
        for name, digest in config.get("files_sha256", {}).items():
            path = directory / name
            if not path.is_file():
                raise CheckpointError(f"checkpoint folder {directory} has no {name}; it is incomplete")
            if file_sha256(path) != digest:
                raise CheckpointError(f"{path} is corrupted: its sha256 does not match the one in {CONFIG_NAME}")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupted ({e})") from None
    return config, tensors
