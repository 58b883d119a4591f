"""The run folder of a training run: which folder, what it may already hold, and what the run writes there.

    config.yaml    the resolved options (config.resolved.yaml when config.yaml is the --config file itself)
    train.csv      step, lr, loss terms, grad norm, images/s, elapsed seconds
    eval.csv       with eval_every: the mean loss terms on the test split
    checkpoints/   step-*.pt (see upocr.train.checkpoint)
    model/         the save_pretrained export, refreshed with every checkpoint
    samples.png    input | output | target per task, at the end
    summary.json   final step, per-rank weight hashes
    run.lock       while a trainer runs: its lock (a second trainer on the folder is refused)

Only rank 0 touches the folder. A folder that holds anything else is not a run folder: a new run refuses
it unless --overwrite.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from upocr.tasks import Task
from upocr.train import checkpoint as ckpt
from upocr.train.config import TrainConfig, write_yaml
from upocr.train.losses import LOSS_TERMS
from upocr.utils import TEMP_FILE_PATTERN, atomic_output, remove_stale_temporaries
from upocr.weights import CONFIG_FILE, WEIGHTS_FILE

LOG_COLUMNS = ("step", "lr", *LOSS_TERMS, "grad_norm", "images_per_s", "elapsed_s")
CONFIG_NAME, OWN_CONFIG_NAME = "config.yaml", "config.resolved.yaml"
LOCK_NAME = "run.lock"
# What a run writes at the top of its folder; anything else there is someone else's.
RUN_ENTRIES = frozenset({CONFIG_NAME, OWN_CONFIG_NAME, "train.csv", "eval.csv", "summary.json", "samples.png", LOCK_NAME,
                         ckpt.checkpoint_dir("").name, ckpt.MODEL_DIR})  # fmt: skip


def default_output_dir(config: TrainConfig) -> Path:
    """runs/<model>-<YYYYmmdd-HHMMSS> (a new folder: a run never lands in another run's folder by default)."""
    if isinstance(config.model, str):
        name = config.model
    elif isinstance(config.model, Mapping):
        name = str(config.model.get("preset", "small"))
    else:
        name = "init" if config.init else "small"
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def choose_run_dir(config: TrainConfig) -> Path:
    """--output; else the run of a --resume checkpoint path; else a new folder under runs/."""
    if config.output_dir is not None:
        return Path(config.output_dir)
    if config.resume and config.resume != "auto":
        checkpoint = Path(config.resume)
        if checkpoint.parent.name == ckpt.checkpoint_dir("").name:
            return checkpoint.parent.parent  # runs/x/checkpoints/step-N.pt continues runs/x
    if config.resume:
        raise ValueError("--resume needs the run directory: give --output runs/NAME (or --resume runs/NAME/checkpoints/step-N.pt)")
    return default_output_dir(config)


def existing_run(run_dir: str | Path) -> str | None:
    """What shows that `run_dir` already holds a training run ('checkpoints/step-00000030.pt',
    'model/model.safetensors'), relative to it; None for a new or empty folder."""
    newest = ckpt.latest_checkpoint(run_dir)
    if newest is not None:
        return f"{ckpt.checkpoint_dir(run_dir).name}/{newest.name}"
    if (Path(run_dir) / ckpt.MODEL_DIR / WEIGHTS_FILE).is_file():
        return f"{ckpt.MODEL_DIR}/{WEIGHTS_FILE}"
    return None


def foreign_entries(run_dir: Path, config_file: str | Path | None = None) -> list[str]:
    """Names at the top of `run_dir` that are not a run's (the --config file itself may be there): other
    names, and a run's names that another program wrote (a train.csv without the log's header, a
    config.yaml that is not a full set of resolved options)."""
    if not run_dir.is_dir():
        return []
    config_path = Path(config_file).resolve() if config_file is not None else None
    names = []
    for entry in sorted(run_dir.iterdir()):
        match = TEMP_FILE_PATTERN.match(entry.name)
        name = f"{match['stem']}{match['suffix'] or ''}" if match else entry.name  # a killed write of a run file
        if entry.resolve() == config_path or (name in RUN_ENTRIES and (match or _written_by_a_run(entry))):
            continue
        names.append(entry.name)
    return names


def _written_by_a_run(path: Path) -> bool:
    """Whether a file with one of a run's names holds what a run writes there."""
    try:
        if path.name in ("train.csv", "eval.csv"):
            with open(path, newline="") as handle:
                return next(csv.reader(handle), [""])[0] == "step"
        if path.name in (CONFIG_NAME, OWN_CONFIG_NAME):
            values = yaml.safe_load(path.read_text())
            return isinstance(values, dict) and set(values) == {item.name for item in dataclasses.fields(TrainConfig)}
        if path.name == "summary.json":
            return "weights_sha256" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError, csv.Error, yaml.YAMLError):
        return False
    return True  # checkpoints/, model/ (what they hold is checked by existing_run), samples.png, run.lock


class RunLock:
    """An exclusive lock on a run folder (flock on run.lock, holding the PID), kept for the whole run, so
    that two trainers never share a folder: their checkpoints, model and logs would overwrite each other.
    The kernel drops the lock when the process ends, however it ends."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = None
        self._made_folder = False

    def acquire(self) -> "RunLock":
        """Take the lock; ValueError naming the folder and the holder's PID if another process has it."""
        self._made_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # the holder may remove the file between our open and our lock: open it again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ValueError(f"{self.path.parent} is in use by another training run (process {holder}, {LOCK_NAME}); "
                                 "wait for it to end, or choose another --output") from None  # fmt: skip
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    self._fd = fd
                    return self
            os.close(fd)
        raise ValueError(f"{self.path}: could not take the run folder's lock")

    def release(self) -> None:
        """Remove run.lock (while still holding it) and drop the lock; a folder this run made and left empty
        (it failed before writing anything) goes too."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
            if self._made_folder:
                self.path.parent.rmdir()  # only if empty
        os.close(self._fd)
        self._fd = None


def prepare_run_dir(config: TrainConfig, run_dir: Path, say: Callable[[str], None], *,
                    config_file: str | Path | None = None) -> tuple[Path | None, dict[str, Any] | None]:  # fmt: skip
    """(rank 0, lock held) The checkpoint to resume (None for a new run) and its state when already read.

    A new run refuses another run's folder (clears it with --overwrite) and a non-empty folder that is no
    run folder (writes into it with --overwrite); the temp files that a killed checkpoint or model write
    left behind in checkpoints/ and model/ are removed."""
    resume: Path | None = None
    state: dict[str, Any] | None = None
    if config.resume == "auto":
        found = ckpt.load_newest_intact(run_dir)
        if found is None:
            say(f"no checkpoint in {ckpt.checkpoint_dir(run_dir)}; starting a new run")
        else:
            resume, state, warnings = found
            for warning in warnings:
                say(warning)
    elif config.resume:
        resume = Path(config.resume)
    resuming_this_run = resume is not None and resume.parent.resolve() == ckpt.checkpoint_dir(run_dir).resolve()
    held = existing_run(run_dir)
    if held is not None and not resuming_this_run:
        if not config.overwrite:
            raise ValueError(f"{run_dir} already holds a training run ({held}); use --resume to continue it, "
                             "--overwrite to replace it, or another --output")  # fmt: skip
        clear_run(run_dir)
        say(f"--overwrite: removed the previous run's checkpoints and model from {run_dir}")
    others = foreign_entries(run_dir, config_file) if not resuming_this_run else []
    if others and not config.overwrite:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ValueError(f"{run_dir} is not empty and is not a run folder (it holds {shown}); choose a new or empty "
                         "--output, or --overwrite to write the run's files into it")  # fmt: skip
    removed = [path for folder in (ckpt.checkpoint_dir(run_dir), run_dir / ckpt.MODEL_DIR) if folder.is_dir()
               for path in remove_stale_temporaries(folder, older_than=float("inf"))]  # fmt: skip
    if removed:
        say(f"removed {len(removed)} temp file(s) left by an interrupted write in {run_dir}")
    return resume, state


def clear_run(run_dir: str | Path) -> None:
    """Remove an old run's checkpoints and exported model (for --overwrite); logs are rewritten anyway."""
    for path in ckpt.list_checkpoints(run_dir):
        path.unlink()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        (Path(run_dir) / ckpt.MODEL_DIR / name).unlink(missing_ok=True)
    for name in ("summary.json", "samples.png"):
        (Path(run_dir) / name).unlink(missing_ok=True)


def write_run_config(run_dir: Path, config: TrainConfig, config_file: str | Path | None = None) -> Path:
    """The resolved options as config.yaml, or as config.resolved.yaml when config.yaml is the --config
    file (the user's file, comments and all, is never replaced)."""
    path = run_dir / CONFIG_NAME
    if config_file is not None and path.exists() and path.resolve() == Path(config_file).resolve():
        path = run_dir / OWN_CONFIG_NAME
    write_yaml(path, config)
    return path


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    with atomic_output(run_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------


class CSVLog:
    """Append-only CSV with a header; on resume rows after the resumed step are dropped (atomically)."""

    def __init__(self, path: Path, columns: tuple[str, ...], *, resume_step: int | None, keep_last: bool = True) -> None:
        """`keep_last`: keep the row of `resume_step` itself (else only earlier rows)."""
        self.path, self.columns = path, columns
        if resume_step is None or not path.is_file():
            with atomic_output(path) as tmp:
                tmp.write_text(",".join(columns) + "\n")
        else:
            last = resume_step if keep_last else resume_step - 1
            with open(path, newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if row.get("step", "").isdigit() and int(row["step"]) <= last]
            with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

    def write(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


@dataclasses.dataclass
class LogWindow:
    """Sums of the loss terms since the last train.csv row; kept in checkpoints so that the first row after
    a resume is the mean over the same steps as in an uninterrupted run."""

    steps: int = 0
    seconds: float = 0.0
    sums: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, values: Mapping[str, float], seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value

    def means(self) -> dict[str, float]:
        return {name: total / max(self.steps, 1) for name, total in self.sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": self.seconds, "sums": dict(self.sums)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> "LogWindow":
        if not state:
            return cls()
        return cls(int(state["steps"]), float(state["seconds"]), {k: float(v) for k, v in state["sums"].items()})


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def sample_predictions_png(model: torch.nn.Module, datasets: Mapping[Task, Dataset], path: Path, device: torch.device,
                           per_task: int = 2) -> Path:  # fmt: skip
    """A picture with, per task, rows of input | output | target for the first samples of each dataset."""
    from upocr.io import write_image
    from upocr.visualize import image_grid

    was_training = model.training
    model.eval()
    rows = []
    for task in sorted(datasets, key=int):
        items = [datasets[task][i] for i in range(min(per_task, len(datasets[task])))]  # type: ignore[arg-type]
        if not items:
            continue
        images = torch.stack([item["image"] for item in items]).to(device)
        outputs = model(images, task)[-1]
        for item, output in zip(items, outputs):
            rows.append([_to_uint8(item["image"]), _to_uint8(output), _to_uint8(item["target"])])
    model.train(was_training)
    grid = image_grid(rows, ["input", "output", "target"], height=min(256, rows[0][0].shape[0] * 2))
    write_image(path, grid)
    return path
