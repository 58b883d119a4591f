"""The training loop: one model, all tasks at once, on one process or under torchrun (DDP).

``train(config)`` runs the original recipe by default (reference section 4): 1:1:1 batches, the task
losses, AdamW with the encoder at a lower lr, warm-up then decay, gradient clipping, mixed precision,
drop path (the model's own, active in train mode). The same call works single-process or as every
rank of ``torchrun --nproc_per_node=N`` (env:// rendezvous; gloo on CPU, nccl on CUDA): each rank
reads its shard of every task and DDP averages the gradients, so a step sees
``batch_per_task x world_size`` images of every task.

Run directory (``config.output_dir``): ``config.yaml`` (resolved), ``train.csv`` (step, lr, loss terms,
grad norm, images/s), ``eval.csv`` (with eval_every), ``checkpoints/step-*.pt`` (atomic; see
:mod:`upocr.train.checkpoint`), ``model/`` (``save_pretrained`` export, refreshed with every checkpoint),
``samples.png`` (input | output | target per task) and ``summary.json`` (final step, per-rank weight
hashes).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from upocr.model import UPOCR, UPOCRConfig, build_model
from upocr.model.checkpoint import load_into_extended_model, load_model
from upocr.tasks import Task
from upocr.train import checkpoint as ckpt
from upocr.train.config import TrainConfig, write_yaml
from upocr.train.losses import LOSS_TERMS, task_loss
from upocr.train.multitask import DATA_ERRORS, MultiTaskLoader, describe_data_error
from upocr.train.schedule import LRSchedule
from upocr.train.vgg import VGG16Features, load_vgg16
from upocr.utils import atomic_output, cpu_has_native_bf16
from upocr.weights import InferenceDefaults, split_legacy_fields

LOG_COLUMNS = ("step", "lr", *LOSS_TERMS, "grad_norm", "images_per_s", "elapsed_s")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the run stopped before touching weights or checkpoints."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    finished: bool  # reached config.iterations (False: stopped by max_minutes)
    last_checkpoint: Path | None
    losses: list[float]  # the total loss of every step this call ran (averaged over ranks)
    weights_sha256: str


# --------------------------------------------------------------------------------------------
# Process setup
# --------------------------------------------------------------------------------------------


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this call initialised the process group (and destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (env://); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available here; use --device cpu")
        target = torch.device("cuda", local_rank if target.index is None else target.index)
        torch.cuda.set_device(target)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo", init_method="env://")
        owns = True
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=target, owns_group=owns)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of `precision` ("auto": bf16 on GPUs and CPUs that have it natively, fp16 on GPUs
    without bf16, fp32 on CPUs that would only emulate bf16)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs CUDA (loss scaling); use --precision bf16 or fp32 on CPU")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def _model_from_checkpoint(state: Mapping[str, Any]) -> UPOCR:
    """The model of a training checkpoint, with its inference defaults (checkpoints written before
    those had their own entry keep them among the model config's fields)."""
    architecture, legacy = split_legacy_fields(state["model_config"])
    model = build_model(UPOCRConfig.from_dict(architecture))
    model.load_state_dict(state["model"])
    model.inference = InferenceDefaults.from_dict(state.get("inference") or legacy)
    return model


def model_config_from(spec: str | Mapping[str, Any]) -> UPOCRConfig:
    """A preset name, or a mapping {"preset": name (default "small"), <UPOCRConfig field>: value, ...}."""
    if isinstance(spec, str):
        return UPOCRConfig.preset(spec)
    fields = dict(spec)
    base = UPOCRConfig.preset(str(fields.pop("preset", "small")))
    return UPOCRConfig.from_dict({**base.to_dict(), **fields})


def describe_model_spec(spec: str | Mapping[str, Any]) -> str:
    """The model option in one line for training records: 'small', 'small + image_skip=True, ...'."""
    if isinstance(spec, str):
        return spec
    fields = dict(spec)
    base = str(fields.pop("preset", "small"))
    return " + ".join([base, ", ".join(f"{k}={v}" for k, v in fields.items())]) if fields else base


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over all parameters (weight decay on all, as the original); encoder at lr x encoder_lr_ratio."""
    encoder, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (encoder if name.startswith("encoder.") else rest).append(parameter)
    groups = [
        {"params": rest, "lr": config.lr, "name": "model"},
        {"params": encoder, "lr": config.lr * config.encoder_lr_ratio, "name": "encoder"},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def build_schedule(config: TrainConfig) -> LRSchedule:
    return LRSchedule(
        total_steps=config.iterations,
        warmup_fraction=config.warmup_fraction,
        warmup_start_factor=config.warmup_start_factor,
        min_factor=config.min_lr_factor,
        epoch_steps=config.lr_epoch_steps,
        decay=config.lr_decay,
    )


def build_datasets(config: TrainConfig, split: str = "train", *, augment: bool | None = None) -> dict[Task, Dataset]:
    """{task: dataset} from config.data_root in the original layouts (all available tasks by default)."""
    from upocr.data.datasets import build_dataset
    from upocr.data.layouts import available_tasks

    if config.data_root is None:
        raise ValueError("no data root: pass --data-root (or data_root in the config)")
    root = Path(config.data_root)
    if not root.is_dir():
        raise ValueError(f"{root}: data root not found")
    tasks = [Task.parse(t) for t in config.tasks] if config.tasks else available_tasks(root)
    if not tasks:
        raise ValueError(f"{root}: no task layout found (expected TextRemoval/, TextSegmentation/ or TamperedTextDetection/)")
    use_augment = config.augment if augment is None else augment
    return {t: build_dataset(t, root, split, size=config.image_size, augment=use_augment,
                             native=t == Task.TAMPERED_TEXT_DETECTION and config.tampering_scale == "native")
            for t in tasks}


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of every tensor of the state dict (names, dtypes, shapes, bytes) in key order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _all_gather(value: Any, context: DistContext) -> list[Any]:
    if not context.distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


# --------------------------------------------------------------------------------------------
# Logs and pictures
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


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def sample_predictions_png(model: UPOCR, datasets: Mapping[Task, Dataset], path: Path, device: torch.device, per_task: int = 2) -> Path:
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


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C stopped the run after a complete step; `checkpoint` holds that step (continue with --resume)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}; resume with --resume")
        self.step, self.checkpoint = step, checkpoint


class DataCheckError(ValueError):
    """The check before training found unreadable or inconsistent samples (each listed on its own line)."""


def _say(context: DistContext, message: str) -> None:
    if context.is_main:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


class _InterruptFlag:
    """While active, Ctrl+C only sets `raised`: the step in progress completes and the loop then writes a
    checkpoint and stops (a checkpoint in mid-step could not resume exactly). A second Ctrl+C stops at once.
    Signal handlers can only be set from the main thread; elsewhere Ctrl+C keeps its default behaviour."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> "_InterruptFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True
        sys.stderr.write("\ninterrupt: finishing this step and writing a checkpoint (Ctrl+C again to stop at once)\n")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@torch.no_grad()
def _evaluate(model: UPOCR, loader_factory: Callable[[], MultiTaskLoader], batches: int, device: torch.device,
              autocast: Callable[[], contextlib.AbstractContextManager], vgg: VGG16Features | None,
              tampering_text_weight: float = 0.0) -> dict[str, float]:
    """Mean loss terms over the first `batches` 1:1:1 batches of the test split (no augmentation)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {name: 0.0 for name in LOSS_TERMS}
    loader = loader_factory()
    for _ in range(batches):
        batch = _to_device(next(loader), device)
        with autocast():
            terms = task_loss(model(batch["image"], batch["task"]), batch, vgg=vgg,
                              tampering_text_weight=tampering_text_weight)
        for name in LOSS_TERMS:
            sums[name] += float(terms[name])
    model.train(was_training)
    return {name: value / batches for name, value in sums.items()}


def check_datasets(datasets: Mapping[Task, Dataset], *, full: bool, progress: bool) -> tuple[list[str], int]:
    """(one line per unusable sample, samples checked) over the datasets that can check their samples
    (the layout datasets of upocr.data.datasets; in-memory datasets are skipped)."""
    from tqdm import tqdm

    checkable = [dataset for dataset in datasets.values() if hasattr(dataset, "check_sample")]
    total = sum(len(dataset) for dataset in checkable)  # type: ignore[arg-type]
    problems: list[str] = []
    with tqdm(total=total, desc="checking data", unit="sample", disable=not progress or not total,
              dynamic_ncols=True, file=sys.stderr) as bar:  # fmt: skip
        for dataset in checkable:
            for index in range(len(dataset)):  # type: ignore[arg-type]
                try:
                    dataset.check_sample(index, full=full)  # type: ignore[attr-defined]
                except DATA_ERRORS as error:
                    problems.append(describe_data_error(dataset, index, error))
                bar.update(1)
    return problems, total


@dataclass
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


@dataclass
class StepOutcome:
    values: dict[str, float]  # the loss terms, averaged over ranks
    grad_norm: float
    lr_factor: float
    seconds: float
    out_of_time: bool  # agreed by all ranks
    interrupted: bool  # Ctrl+C on any rank


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


class Trainer:
    """One training run in named phases: :meth:`restore` (run folder, resume state, model, optimizer, data),
    :meth:`train_step` (one optimizer step on a batch), :meth:`after_step` (log, evaluate, checkpoint, decide
    to stop) and :meth:`finish` (pictures, summary). :meth:`run` chains them; benchmarks/bench_train.py
    times :meth:`train_step` alone."""

    def __init__(self, config: TrainConfig, context: DistContext, *, datasets: Mapping[Task, Dataset] | None = None,
                 eval_datasets: Mapping[Task, Dataset] | None = None, progress: bool = True) -> None:  # fmt: skip
        self.config, self.context, self.progress = config, context, progress
        self.device = context.device
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.datasets, self.eval_datasets = datasets, eval_datasets
        self.built_from_root = datasets is None
        self.started = time.monotonic()
        self.elapsed_before = 0.0  # seconds of earlier sessions of a resumed run (train.csv elapsed_s)
        self.step = 0
        self.losses: list[float] = []
        self.window = LogWindow()
        self.resume_path: Path | None = None
        self._preloaded: tuple[Path, dict[str, Any]] | None = None
        self.last_checkpoint: Path | None = None
        self.train_log: CSVLog | None = None
        self.eval_log: CSVLog | None = None
        self.eval_factory: Callable[[], MultiTaskLoader] | None = None
        self.interrupt = _InterruptFlag()
        deadline = config.max_minutes
        self.deadline = self.started + deadline * 60 if deadline is not None else None

    # ---- helpers -----------------------------------------------------------------------------

    def say(self, message: str) -> None:
        _say(self.context, message)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _main_decides(self, decide: Callable[[], Any]) -> Any:
        """Run `decide` on rank 0 only and give its result to every rank; a ValueError there is raised on
        every rank (so that the others do not wait forever in the next collective)."""
        result, problem = None, None
        if self.context.is_main:
            try:
                result = decide()
            except ValueError as error:
                problem = error
        shared = _all_gather((result, str(problem) if problem else None), self.context)[0]
        if problem is not None:
            raise problem
        if shared[1] is not None:
            raise ValueError(shared[1])
        return shared[0]

    # ---- phase 1: restore ----------------------------------------------------------------------

    def restore(self) -> None:
        """Choose the run folder and the checkpoint to resume (refusing to mix runs), then build the model,
        optimizer, schedule and data loader and put them in the checkpoint's state."""
        config = self.config
        self.run_dir = Path(self._main_decides(self._choose_run_dir))
        resume = self._main_decides(self._prepare_run_dir)
        self.resume_path = Path(resume) if resume else None
        state = None
        if self.resume_path is not None:
            preloaded, self._preloaded = self._preloaded, None
            state = preloaded[1] if preloaded and preloaded[0] == self.resume_path else ckpt.load_checkpoint(self.resume_path)
        if state is not None:
            self._adopt_checkpoint_model(state)
        config = self.config

        # Model: identical initial weights on every rank (seed before building).
        seed_everything(config.seed)
        if state is not None:
            model = _model_from_checkpoint(state)
        elif config.init and config.model is None:
            model = load_model(config.init)
        elif config.init:
            model = build_model(model_config_from(config.model))
            added = load_into_extended_model(model, config.init)
            if added:
                self.say(f"{config.init}: loaded into {config.model}; new zero-initialised modules: {', '.join(added)}")
        else:
            model = build_model(model_config_from(config.model or "small"))
        if model.inference.input_size != config.image_size:
            # The exported weights remember the resolution they were trained at (the Predictor's default size).
            model.inference = dataclasses.replace(model.inference, input_size=config.image_size)
        self.model = model.to(self.device).train()  # train mode: drop path on
        self.vgg: VGG16Features | None = load_vgg16(config.vgg_weights, self.device) if config.vgg_weights else None

        # Data.
        if self.datasets is None:
            self.datasets = build_datasets(config, "train")
        self._check_data()
        self.loader = MultiTaskLoader(
            self.datasets, batch_per_task=config.batch_per_task, seed=config.seed, rank=self.context.rank,
            world_size=self.context.world_size, num_workers=config.num_workers, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        self.tasks = self.loader.tasks
        self.images_per_step = config.batch_per_task * len(self.tasks) * self.context.world_size
        if self.amp_dtype == torch.bfloat16 and self.device.type == "cpu" and not cpu_has_native_bf16():
            self.say("note: this CPU has no native bf16 (AVX512-BF16/AMX): torch emulates it, several times slower "
                     "than --precision fp32")
        if Task.TEXT_REMOVAL in self.tasks and self.vgg is None:
            self.say("note: no --vgg-weights given, so the perceptual and style terms of the text-removal loss are off")

        # Optimisation.
        self.optimizer = build_optimizer(self.model, config)
        self.schedule = build_schedule(config)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.loader.load_state_dict(state["data"])
            self.step = int(state["step"])
            self.window = LogWindow.from_state(state.get("log_window"))
            self.elapsed_before = float(state.get("elapsed_s", 0.0))
            self.last_checkpoint = self.resume_path
        # Per-rank randomness (drop path) from seed + rank, as the original; resumed runs restore it.
        seed_everything(config.seed + self.context.rank)
        if state is not None:
            rng_states = state["rng"]
            if self.context.rank < len(rng_states):
                ckpt.restore_rng(rng_states[self.context.rank], self.device)
            else:
                seed_everything(config.seed + self.context.rank + 7919 * self.step)
                self.say(f"resuming with {self.context.world_size} ranks from a {len(rng_states)}-rank checkpoint: new ranks get fresh seeds")
            self.say(f"resumed from {self.resume_path} at step {self.step}")
        del state

        self.net: torch.nn.Module = self.model
        if self.context.distributed:
            # The model's buffers are constant position tables: synced once at construction, not every forward.
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False,
            )  # fmt: skip

    def _choose_run_dir(self) -> str:
        config = self.config
        if config.output_dir is not None:
            return config.output_dir
        if config.resume and config.resume != "auto":
            checkpoint = Path(config.resume)
            if checkpoint.parent.name == ckpt.checkpoint_dir("").name:
                return str(checkpoint.parent.parent)  # runs/x/checkpoints/step-N.pt continues runs/x
        if config.resume:
            raise ValueError("--resume needs the run directory: give --output runs/NAME (or --resume runs/NAME/checkpoints/step-N.pt)")
        return str(default_output_dir(config))

    def _prepare_run_dir(self) -> str | None:
        """(rank 0) The checkpoint to resume, or None for a new run; refuses a new run in another run's
        folder, clears it with --overwrite, and removes temp files that a killed write left behind."""
        config, run_dir = self.config, self.run_dir
        resume: Path | None = None
        if config.resume == "auto":
            found = ckpt.load_newest_intact(run_dir)
            if found is None:
                self.say(f"no checkpoint in {ckpt.checkpoint_dir(run_dir)}; starting a new run")
            else:
                resume, state, warnings = found
                self._preloaded = (resume, state)  # rank 0 does not read it twice
                for warning in warnings:
                    self.say(warning)
        elif config.resume:
            resume = Path(config.resume)
        resuming_this_run = resume is not None and resume.parent.resolve() == ckpt.checkpoint_dir(run_dir).resolve()
        held = ckpt.existing_run(run_dir)
        if held is not None and not resuming_this_run:
            if not config.overwrite:
                raise ValueError(f"{run_dir} already holds a training run ({held}); use --resume to continue it, "
                                 "--overwrite to replace it, or another --output")  # fmt: skip
            ckpt.clear_run(run_dir)
            self.say(f"--overwrite: removed the previous run's checkpoints and model from {run_dir}")
        removed = ckpt.remove_stale_temp_files(run_dir)
        if removed:
            self.say(f"removed {len(removed)} temp file(s) left by an interrupted write in {run_dir}")
        return str(resume) if resume is not None else None

    def _adopt_checkpoint_model(self, state: Mapping[str, Any]) -> None:
        """A resumed run trains the checkpoint's model: a different --model is refused, and config.yaml
        records the checkpoint's model and init."""
        saved = state.get("config") or {}
        saved_spec = saved.get("model")
        if self.config.model is not None:
            wanted = model_config_from(self.config.model).to_dict()
            held = UPOCRConfig.from_dict(split_legacy_fields(state["model_config"])[0]).to_dict()
            if wanted != held:
                theirs = describe_model_spec(saved_spec) if saved_spec is not None else "another architecture"
                raise ValueError(f"model {describe_model_spec(self.config.model)} (from --model or --config) differs from "
                                 f"{self.resume_path}, which holds model {theirs}; leave --model out to continue it, "
                                 "or start a new run with another --output")  # fmt: skip
        self.config = dataclasses.replace(self.config, model=saved_spec, init=saved.get("init"))

    def _check_data(self) -> None:
        config = self.config
        if config.check_data == "off" or not self.built_from_root:
            return

        def check() -> list[str]:
            problems, total = check_datasets(self.datasets or {}, full=config.check_data == "full", progress=self.progress)
            for problem in problems:
                self.say(f"bad sample: {problem}")
            if problems:
                which = f": {problems[0]}" if len(problems) == 1 else f" (listed above; first: {problems[0]})"
                raise DataCheckError(f"{len(problems)} of {total} training samples unusable{which}; "
                                     "fix or remove them, or use --check-data off")  # fmt: skip
            return problems

        try:
            self._main_decides(check)
        except ValueError as error:
            raise DataCheckError(str(error)) from None

    def open_run_dir(self) -> None:
        """(rank 0) config.yaml and the CSV logs (a resumed run keeps the rows up to its step)."""
        config, context = self.config, self.context
        self.config = config = dataclasses.replace(config, output_dir=str(self.run_dir))
        if context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_yaml(self.run_dir / "config.yaml", config)
            resumed_at = self.step if self.resume_path is not None else None
            # A row written when a run stopped between two log_every steps is dropped: the window restored
            # from the checkpoint still holds those steps, so the next row is the one an uninterrupted run writes.
            self.train_log = CSVLog(self.run_dir / "train.csv", LOG_COLUMNS, resume_step=resumed_at,
                                    keep_last=self.window.steps == 0)  # fmt: skip
            if config.eval_every:
                self.eval_log = CSVLog(self.run_dir / "eval.csv", ("step", *LOSS_TERMS), resume_step=resumed_at)
        if config.eval_every:
            if self.eval_datasets is None and config.data_root is not None:
                with contextlib.suppress(ValueError, FileNotFoundError):
                    self.eval_datasets = build_datasets(dataclasses.replace(config, tasks=[t.short for t in self.tasks]),
                                                        "test", augment=False)  # fmt: skip
            if self.eval_datasets:
                eval_sets = self.eval_datasets
                self.eval_factory = lambda: MultiTaskLoader(eval_sets, batch_per_task=config.batch_per_task, seed=config.seed)
            else:
                self.say("note: --eval-every given but no test split found; evaluation is off")

    # ---- phase 2: one step -------------------------------------------------------------------------

    def train_step(self, batch: Mapping[str, Any]) -> StepOutcome:
        """Forward, loss, backward, clipping and the optimizer update on `batch` (already on the device)."""
        tick = time.perf_counter()
        device, optimizer, step = self.device, self.optimizer, self.step
        factor = self.schedule.apply(optimizer, step)
        with self.autocast():
            outputs = self.net(batch["image"], batch["task"])
            terms = task_loss(outputs, batch, vgg=self.vgg, tampering_text_weight=self.config.tampering_text_weight)
        # One all-reduce per step: every rank sees the same mean terms and the same stop decisions.
        out_of_time = float(self.deadline is not None and time.monotonic() > self.deadline)
        flags = [torch.tensor(out_of_time, device=device), torch.tensor(float(self.interrupt.raised), device=device)]
        summary = torch.stack([terms[name].detach().float() for name in LOSS_TERMS] + flags)
        if self.context.distributed:
            dist.all_reduce(summary)
            summary[: len(LOSS_TERMS)] /= self.context.world_size
        values = dict(zip(LOSS_TERMS, summary[: len(LOSS_TERMS)].tolist()))
        if not all(math.isfinite(v) for v in values.values()):
            names = ", ".join(batch["name"][:6]) if "name" in batch else "?"
            shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"step {step + 1}: non-finite loss ({shown}); stopped without an optimizer step or checkpoint "
                f"(last good checkpoint: {self.last_checkpoint or 'none'}; batch starts with {names}). "
                "Try a lower --lr, --precision fp32, or check the data."
            )
        grad_norm = self._backward_and_update(terms["loss"], values["loss"])
        self.step += 1
        self.losses.append(values["loss"])
        return StepOutcome(values, grad_norm, factor, time.perf_counter() - tick,
                           out_of_time=bool(summary[-2] > 0), interrupted=bool(summary[-1] > 0))  # fmt: skip

    def _backward_and_update(self, loss: torch.Tensor, loss_value: float) -> float:
        optimizer, scaler, model = self.optimizer, self.scaler, self.model
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.config.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
        grad_norm_value = float(grad_norm)
        if scaler is not None:
            scaler.step(optimizer)  # skips the update on inf/NaN gradients (loss scaling)
            scaler.update()
        elif not math.isfinite(grad_norm_value):
            raise NonFiniteLossError(
                f"step {self.step + 1}: non-finite gradient norm with finite loss {loss_value:.4g}; stopped before the "
                f"optimizer step (last good checkpoint: {self.last_checkpoint or 'none'}). Try --precision fp32 or a lower --lr."
            )
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm_value

    # ---- phase 3: after a step ---------------------------------------------------------------------

    def after_step(self, outcome: StepOutcome) -> bool:
        """Log, evaluate and checkpoint as configured; True when the run stops here."""
        config, step = self.config, self.step
        finished = step >= config.iterations
        stop_at_step = config.max_steps is not None and step >= config.max_steps
        stopping = finished or outcome.out_of_time or stop_at_step or outcome.interrupted
        self.window.add(outcome.values, outcome.seconds)
        regular_row = step % config.log_every == 0 or finished
        if self.train_log is not None and (regular_row or stopping):
            self.train_log.write(
                {
                    "step": step,
                    "lr": config.lr * outcome.lr_factor,
                    **self.window.means(),
                    "grad_norm": outcome.grad_norm,
                    "images_per_s": self.images_per_step * self.window.steps / max(self.window.seconds, 1e-9),
                    "elapsed_s": self.elapsed_s(),
                }
            )
        if regular_row:
            self.window = LogWindow()
        if self.eval_factory is not None and step % config.eval_every == 0:
            if self.context.is_main:
                result = _evaluate(self.model, self.eval_factory, config.eval_batches, self.device, self.autocast, self.vgg,
                                   config.tampering_text_weight)
                if self.eval_log is not None:
                    self.eval_log.write({"step": step, **result})
                self.say(f"eval @ {step}: loss {result['loss']:.4f}")
            self.context.barrier()
        if stopping or (config.checkpoint_every and step % config.checkpoint_every == 0):
            self.save()
        if finished:
            return True
        if outcome.interrupted:
            raise TrainingInterrupted(step, self.last_checkpoint)
        if outcome.out_of_time:
            self.say(f"time limit of {config.max_minutes} min reached at step {step}; checkpoint written, resume with --resume")
        elif stop_at_step:
            self.say(f"stopped at step {step} (max_steps); checkpoint written, resume with --resume")
        return stopping

    def elapsed_s(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def save(self) -> None:
        """Checkpoint and model export of the current step (rank 0; every rank takes part in the gathers).
        A failed write is raised on every rank as CheckpointWriteError; earlier checkpoints stay intact."""
        context = self.context
        rng = _all_gather(ckpt.capture_rng(self.device), context)
        failure: ckpt.CheckpointWriteError | None = None
        if context.is_main:
            try:
                self._write_checkpoint(rng)
            except ckpt.CheckpointWriteError as error:
                failure = error
        message = _all_gather(str(failure) if failure else None, context)[0]
        if failure is not None:
            raise failure
        if message is not None:
            raise ckpt.CheckpointWriteError(message)

    def _write_checkpoint(self, rng: list[Any]) -> None:
        config, step, model = self.config, self.step, self.model
        path = ckpt.save_checkpoint(
            ckpt.checkpoint_path(self.run_dir, step),
            {
                "step": step,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "model_config": model.config.to_dict(),
                "inference": model.inference.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "rng": rng,
                "data": self.loader.state_dict(),
                "config": config.to_dict(),
                "world_size": self.context.world_size,
                "log_window": self.window.state_dict(),
                "elapsed_s": self.elapsed_s(),
            },
        )
        # for upocr.load_model / --weights, with a record of how the weights were made
        record = {"trained": True, "steps": step, "config": describe_model_spec(config.model or ("init's" if config.init else "small")),
                  "init": config.init,
                  "input_size": config.image_size, "images": step * self.images_per_step,
                  "data": str(config.data_root) if config.data_root else "in-memory", "seed": config.seed}  # fmt: skip
        export = self.run_dir / ckpt.MODEL_DIR
        ckpt.write_or_explain(export, "model", lambda: model.save_pretrained(str(export), training=record))
        ckpt.prune_checkpoints(self.run_dir, config.keep_checkpoints)
        self.last_checkpoint = path

    # ---- phase 4: finish ----------------------------------------------------------------------------

    def finish(self) -> TrainResult:
        """samples.png (un-augmented samples) and summary.json with every rank's weight hash."""
        config, context = self.config, self.context
        finished = self.step >= config.iterations
        hashes = _all_gather(weights_sha256(self.model), context)
        if context.is_main:
            sample_sets = self.eval_datasets
            if not sample_sets:
                sample_sets = self.datasets if not self.built_from_root else build_datasets(
                    dataclasses.replace(config, tasks=[t.short for t in self.tasks]), "train", augment=False
                )
            try:
                sample_predictions_png(self.model, sample_sets or {}, self.run_dir / "samples.png", self.device)
            except Exception as error:  # a picture must never fail a finished run
                self.say(f"warning: could not write samples.png ({type(error).__name__}: {error})")
            summary_doc = {
                "step": self.step,
                "finished": finished,
                "world_size": context.world_size,
                "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                "weights_sha256": hashes,
                "ranks_agree": len(set(hashes)) == 1,
                "final_loss": self.losses[-1] if self.losses else None,
            }
            with atomic_output(self.run_dir / "summary.json") as tmp:
                tmp.write_text(json.dumps(summary_doc, indent=2) + "\n")
            if len(set(hashes)) != 1:
                self.say("warning: the ranks' final weights differ (see summary.json)")
        context.barrier()
        return TrainResult(self.run_dir, self.step, finished, self.last_checkpoint, self.losses, hashes[0])

    # ---- all phases ---------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        from tqdm import tqdm

        self.restore()
        self.open_run_dir()
        bar = tqdm(total=self.config.iterations, initial=self.step, disable=not (self.progress and self.context.is_main),
                   unit="step", dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        try:
            with self.interrupt:
                while self.step < self.config.iterations:
                    outcome = self.train_step(_to_device(next(self.loader), self.device))
                    bar.update(1)
                    self._show(bar, outcome)
                    if self.after_step(outcome):
                        break
        finally:
            bar.close()
        return self.finish()

    def _show(self, bar: Any, outcome: StepOutcome) -> None:
        if bar.n % max(1, min(self.config.log_every, 10)) == 0 or self.step == self.config.iterations:
            shown = {"loss": f"{outcome.values['loss']:.4f}"}
            shown.update({t.short[:4]: f"{outcome.values[t.short]:.3f}" for t in self.tasks})
            shown["img/s"] = f"{self.images_per_step / max(outcome.seconds, 1e-9):.1f}"
            bar.set_postfix(shown, refresh=False)


def train(
    config: TrainConfig,
    *,
    datasets: Mapping[Task, Dataset] | None = None,
    eval_datasets: Mapping[Task, Dataset] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train as `config` says (see the module docstring); `datasets` replaces reading config.data_root.

    Ctrl+C finishes the step in progress, writes a checkpoint and raises :class:`TrainingInterrupted`."""
    context = setup_distributed(config.device)
    try:
        return Trainer(config, context, datasets=datasets, eval_datasets=eval_datasets, progress=progress).run()
    finally:
        if context.owns_group and dist.is_initialized():
            dist.destroy_process_group()
