"""Training checkpoints: atomic, complete, and readable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, dicts, lists, strings, numbers and None (no pickled classes):

    format "upocr-train", version 1, step, model (state dict), model_config (dict), inference (dict: the
    inference defaults, absent in older checkpoints), optimizer,
    scheduler (dict), scaler (dict), rng (list, one entry per rank), data (loader position),
    config (the resolved training config)

Files are ``<run>/checkpoints/step-<step>.pt`` written through :func:`upocr.utils.atomic_output`
(temp file, fsync, rename), so killing a run at any moment leaves every ``step-*.pt`` complete; the
hidden temp file a kill leaves behind is removed when the run starts or resumes
(:func:`upocr.train.run_dir.prepare_run_dir`). A failed write (disk full) raises :class:`CheckpointWriteError`
with one line naming the file, the reason and the free space.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch

from upocr.model import UPOCR, UPOCRConfig, build_model
from upocr.utils import atomic_output
from upocr.weights import CheckpointError, InferenceDefaults, split_legacy_fields, torch_load_safely

if TYPE_CHECKING:
    from upocr.train.config import TrainConfig

FORMAT = "upocr-train"
VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")
MODEL_DIR = "model"


class CheckpointWriteError(OSError):
    """A checkpoint or the exported model could not be written (disk full, permissions...)."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files of an interrupted write are skipped)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB"


def describe_write_failure(path: Path, error: BaseException) -> str:
    """'cannot write <what> <path>: <reason> (<free> free)' in one line.

    torch.save reports a full disk as a RuntimeError from its zip writer ("[enforce fail at
    inline_container.cc] . unexpected pos ..."): that says nothing to a user, so it becomes a
    plain "write failed" next to the free space, which shows the cause.
    """
    if isinstance(error, OSError) and error.errno is not None:
        reason = os.strerror(error.errno)
    elif isinstance(error, OSError):
        reason = str(error) or type(error).__name__
    else:
        reason = "write failed"
    try:
        free = f"{_human_bytes(shutil.disk_usage(path.parent).free)} free"
    except OSError:
        free = "free space unknown"
    return f"{path}: {reason} ({free})"


def write_or_explain(path: Path, what: str, write: Callable[[], Any]) -> None:
    """Run `write`; an OSError or torch's RuntimeError for a failed write becomes a CheckpointWriteError."""
    try:
        write()
    except (OSError, RuntimeError) as error:
        raise CheckpointWriteError(f"cannot write {what} {describe_write_failure(path, error)}") from error


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write `state` (plus format/version) atomically to `path` (CheckpointWriteError if that fails)."""
    path = Path(path)

    def write() -> None:
        with atomic_output(path) as tmp:
            torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)

    write_or_explain(path, "checkpoint", write)
    return path


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)


def load_newest_intact(run_dir: str | Path) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The newest checkpoint of `run_dir` that loads, its state, and a warning per newer unreadable one
    (each renamed to '<name>.unreadable' so that the resumed run's listing and pruning skip it).
    None when the run has no checkpoint; ValueError naming the newest when none loads."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return None
    failures: list[tuple[Path, ValueError]] = []
    for path in reversed(checkpoints):
        try:
            state = load_checkpoint(path)
        except ValueError as error:
            failures.append((path, error))
            continue
        warnings = []
        for bad, error in failures:
            kept = bad.with_name(bad.name + ".unreadable")
            bad.replace(kept)
            warnings.append(f"warning: {error}; kept as {kept.name}; resuming from the intact {path.name} instead")
        return path, state, warnings
    newest, error = failures[0]
    raise ValueError(f"{error} (and no older checkpoint in {checkpoint_dir(run_dir)} loads either)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely; ValueError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        state = torch_load_safely(path)  # the package's one safe torch.load (weights_only, allow-list)
    except CheckpointError as error:
        reason = str(error).removeprefix(f"{path}: ")
        raise ValueError(f"{path}: unreadable training checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an upocr training checkpoint (use --init for model weights)")
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: training checkpoint version {state.get('version')} is not supported (expected {VERSION})")
    return state


def model_from_checkpoint(state: Mapping[str, Any]) -> UPOCR:
    """The model of a training checkpoint, with its inference defaults (checkpoints written before
    those had their own entry keep them among the model config's fields)."""
    model = build_model(checkpoint_model_config(state))
    model.load_state_dict(state["model"])
    model.inference = InferenceDefaults.from_dict(state.get("inference") or split_legacy_fields(state["model_config"])[1])
    return model


def checkpoint_model_config(state: Mapping[str, Any]) -> UPOCRConfig:
    """The architecture of a training checkpoint."""
    return UPOCRConfig.from_dict(split_legacy_fields(state["model_config"])[0])


def adopt_checkpoint_model(config: "TrainConfig", state: Mapping[str, Any], path: Path) -> "TrainConfig":
    """`config` for continuing checkpoint `path`: a resumed run trains the checkpoint's model, so a different
    model option is refused, and the run's config records the checkpoint's model and init."""
    saved = state.get("config") or {}
    saved_spec = saved.get("model")
    if config.model is not None and UPOCRConfig.from_spec(config.model) != checkpoint_model_config(state):
        theirs = UPOCRConfig.describe_spec(saved_spec) if saved_spec is not None else "another architecture"
        raise ValueError(f"model {UPOCRConfig.describe_spec(config.model)} (from --model or --config) differs from {path}, "
                         f"which holds model {theirs}; leave --model out to continue it, or start a new run with "
                         "another --output")  # fmt: skip
    return dataclasses.replace(config, model=saved_spec, init=saved.get("init"))


# --------------------------------------------------------------------------------------------
# RNG states as plain tensors / ints (weights_only-loadable)
# --------------------------------------------------------------------------------------------


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """This process's python, NumPy, torch (and CUDA) generator states as tensors and ints."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
