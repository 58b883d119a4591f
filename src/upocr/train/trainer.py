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
import sys
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
from upocr.train.multitask import MultiTaskLoader
from upocr.train.schedule import LRSchedule
from upocr.train.vgg import VGG16Features, load_vgg16
from upocr.utils import atomic_output

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
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16
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
    return {t: build_dataset(t, root, split, size=config.image_size, augment=use_augment) for t in tasks}


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

    def __init__(self, path: Path, columns: tuple[str, ...], *, resume_step: int | None) -> None:
        self.path, self.columns = path, columns
        if resume_step is None or not path.is_file():
            with atomic_output(path) as tmp:
                tmp.write_text(",".join(columns) + "\n")
        else:
            with open(path, newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if row.get("step", "").isdigit() and int(row["step"]) <= resume_step]
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


def _say(context: DistContext, message: str) -> None:
    if context.is_main:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


@torch.no_grad()
def _evaluate(model: UPOCR, loader_factory: Callable[[], MultiTaskLoader], batches: int, device: torch.device,
              autocast: Callable[[], contextlib.AbstractContextManager], vgg: VGG16Features | None) -> dict[str, float]:
    """Mean loss terms over the first `batches` 1:1:1 batches of the test split (no augmentation)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {name: 0.0 for name in LOSS_TERMS}
    loader = loader_factory()
    for _ in range(batches):
        batch = _to_device(next(loader), device)
        with autocast():
            terms = task_loss(model(batch["image"], batch["task"]), batch, vgg=vgg)
        for name in LOSS_TERMS:
            sums[name] += float(terms[name])
    model.train(was_training)
    return {name: value / batches for name, value in sums.items()}


def train(
    config: TrainConfig,
    *,
    datasets: Mapping[Task, Dataset] | None = None,
    eval_datasets: Mapping[Task, Dataset] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train as `config` says (see the module docstring); `datasets` replaces reading config.data_root."""
    context = setup_distributed(config.device)
    try:
        return _train(config, context, datasets, eval_datasets, progress)
    finally:
        if context.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    context: DistContext,
    datasets: Mapping[Task, Dataset] | None,
    eval_datasets: Mapping[Task, Dataset] | None,
    progress: bool,
) -> TrainResult:
    started = time.monotonic()
    device = context.device
    run_dir = Path(config.output_dir)
    amp_dtype = resolve_precision(config.precision, device)

    # ---- what to resume from --------------------------------------------------------------
    resume_path: Path | None = None
    if config.resume:
        resume_path = ckpt.latest_checkpoint(run_dir) if config.resume == "auto" else Path(config.resume)
        if config.resume == "auto" and resume_path is None:
            _say(context, f"no checkpoint in {ckpt.checkpoint_dir(run_dir)}; starting a new run")
    state = ckpt.load_checkpoint(resume_path) if resume_path is not None else None

    # ---- model: identical initial weights on every rank (seed before building) ---------------
    seed_everything(config.seed)
    if state is not None:
        model = build_model(UPOCRConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
    elif config.init and config.model is None:
        model = load_model(config.init)
    elif config.init:
        model = build_model(model_config_from(config.model))
        added = load_into_extended_model(model, config.init)
        if added:
            _say(context, f"{config.init}: loaded into {config.model}; new zero-initialised modules: {', '.join(added)}")
    else:
        model = build_model(model_config_from(config.model or "small"))
    if model.config.input_size != config.image_size:
        # The exported weights remember the resolution they were trained at (the Predictor's default size).
        model.config = dataclasses.replace(model.config, input_size=config.image_size)
    model = model.to(device).train()  # train mode: drop path on

    vgg: VGG16Features | None = load_vgg16(config.vgg_weights, device) if config.vgg_weights else None

    # ---- data ----------------------------------------------------------------------------
    built_from_root = datasets is None
    if datasets is None:
        datasets = build_datasets(config, "train")
    loader = MultiTaskLoader(
        datasets, batch_per_task=config.batch_per_task, seed=config.seed, rank=context.rank,
        world_size=context.world_size, num_workers=config.num_workers, pin_memory=device.type == "cuda",
    )  # fmt: skip
    tasks = loader.tasks
    if Task.TEXT_REMOVAL in tasks and vgg is None:
        _say(context, "note: no --vgg-weights given, so the perceptual and style terms of the text-removal loss are off")

    # ---- optimisation --------------------------------------------------------------------
    optimizer = build_optimizer(model, config)
    schedule = build_schedule(config)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(state["data"])
        step = int(state["step"])
    # Per-rank randomness (drop path) from seed + rank, as the original; resumed runs restore it.
    seed_everything(config.seed + context.rank)
    if state is not None:
        rng_states = state["rng"]
        if context.rank < len(rng_states):
            ckpt.restore_rng(rng_states[context.rank], device)
        else:
            seed_everything(config.seed + context.rank + 7919 * step)
            _say(context, f"resuming with {context.world_size} ranks from a {len(rng_states)}-rank checkpoint: new ranks get fresh seeds")
        _say(context, f"resumed from {resume_path} at step {step}")
    del state

    net: torch.nn.Module = model
    if context.distributed:
        # The model's buffers are constant position tables: synced once at construction, not every forward.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
        )

    def autocast() -> contextlib.AbstractContextManager:
        if amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    # ---- run directory and logs (rank 0) -------------------------------------------------
    train_log = eval_log = None
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(run_dir / "config.yaml", config)
        resumed_at = step if resume_path is not None else None
        train_log = CSVLog(run_dir / "train.csv", LOG_COLUMNS, resume_step=resumed_at)
        if config.eval_every:
            eval_log = CSVLog(run_dir / "eval.csv", ("step", *LOSS_TERMS), resume_step=resumed_at)
    eval_factory = None
    if config.eval_every:
        if eval_datasets is None and config.data_root is not None:
            with contextlib.suppress(ValueError, FileNotFoundError):
                eval_datasets = build_datasets(dataclasses.replace(config, tasks=[t.short for t in tasks]), "test", augment=False)
        if eval_datasets:
            eval_sets = eval_datasets
            eval_factory = lambda: MultiTaskLoader(eval_sets, batch_per_task=config.batch_per_task, seed=config.seed)  # noqa: E731
        else:
            _say(context, "note: --eval-every given but no test split found; evaluation is off")

    # ---- checkpointing -------------------------------------------------------------------
    last_checkpoint = ckpt.latest_checkpoint(run_dir) if context.is_main else None

    def save(at_step: int) -> None:
        nonlocal last_checkpoint
        rng = _all_gather(ckpt.capture_rng(device), context)  # every rank takes part
        if context.is_main:
            path = ckpt.save_checkpoint(
                ckpt.checkpoint_path(run_dir, at_step),
                {
                    "step": at_step,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "model_config": model.config.to_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "rng": rng,
                    "data": loader.state_dict(),
                    "config": config.to_dict(),
                    "world_size": context.world_size,
                },
            )
            # for upocr.load_model / --weights, with a record of how the weights were made
            record = {"trained": True, "steps": at_step, "config": describe_model_spec(config.model or ("init's" if config.init else "small")),
                      "init": config.init,
                      "input_size": config.image_size, "images": at_step * images_per_step,
                      "data": str(config.data_root) if config.data_root else "in-memory", "seed": config.seed}  # fmt: skip
            model.save_pretrained(str(run_dir / "model"), training=record)
            ckpt.prune_checkpoints(run_dir, config.keep_checkpoints)
            last_checkpoint = path
        context.barrier()

    # ---- loop ----------------------------------------------------------------------------
    from tqdm import tqdm

    images_per_step = config.batch_per_task * len(tasks) * context.world_size
    bar = tqdm(total=config.iterations, initial=step, disable=not (progress and context.is_main), unit="step",
               dynamic_ncols=True, file=sys.stderr)  # fmt: skip
    losses: list[float] = []
    window: dict[str, float] = {}
    window_steps, window_time = 0, 0.0
    finished = step >= config.iterations
    deadline = started + config.max_minutes * 60 if config.max_minutes is not None else None
    while step < config.iterations:
        tick = time.perf_counter()
        batch = _to_device(next(loader), device)
        factor = schedule.apply(optimizer, step)
        with autocast():
            outputs = net(batch["image"], batch["task"])
            terms = task_loss(outputs, batch, vgg=vgg)
        # One all-reduce per step: every rank sees the same mean terms and the same stop decision.
        out_of_time = float(deadline is not None and time.monotonic() > deadline)
        summary = torch.stack([terms[name].detach().float() for name in LOSS_TERMS] + [torch.tensor(out_of_time, device=device)])
        if context.distributed:
            dist.all_reduce(summary)
            summary[:-1] /= context.world_size
        values = dict(zip(LOSS_TERMS, summary[:-1].tolist()))
        if not all(math.isfinite(v) for v in values.values()):
            names = ", ".join(batch["name"][:6]) if "name" in batch else "?"
            shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"step {step + 1}: non-finite loss ({shown}); stopped without an optimizer step or checkpoint "
                f"(last good checkpoint: {last_checkpoint or 'none'}; batch starts with {names}). "
                "Try a lower --lr, --precision fp32, or check the data."
            )
        loss = terms["loss"]
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if config.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
        grad_norm_value = float(grad_norm)
        if scaler is not None:
            scaler.step(optimizer)  # skips the update on inf/NaN gradients (loss scaling)
            scaler.update()
        elif not math.isfinite(grad_norm_value):
            raise NonFiniteLossError(
                f"step {step + 1}: non-finite gradient norm with finite loss {values['loss']:.4g}; stopped before the "
                f"optimizer step (last good checkpoint: {last_checkpoint or 'none'}). Try --precision fp32 or a lower --lr."
            )
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(values["loss"])

        elapsed = time.perf_counter() - tick
        window_steps += 1
        window_time += elapsed
        for name, value in values.items():
            window[name] = window.get(name, 0.0) + value
        images_per_s = images_per_step / max(elapsed, 1e-9)
        bar.update(1)
        if bar.n % max(1, min(config.log_every, 10)) == 0 or step == config.iterations:
            shown = {"loss": f"{values['loss']:.4f}"}
            shown.update({t.short[:4]: f"{values[t.short]:.3f}" for t in tasks})
            shown["img/s"] = f"{images_per_s:.1f}"
            bar.set_postfix(shown, refresh=False)
        stop_for_time = bool(summary[-1] > 0)
        stop_at_step = config.max_steps is not None and step >= config.max_steps
        if train_log is not None and (step % config.log_every == 0 or step == config.iterations or stop_for_time or stop_at_step):
            train_log.write(
                {
                    "step": step,
                    "lr": config.lr * factor,
                    **{name: total / window_steps for name, total in window.items()},
                    "grad_norm": grad_norm_value,
                    "images_per_s": images_per_step * window_steps / max(window_time, 1e-9),
                    "elapsed_s": time.monotonic() - started,
                }
            )
            window, window_steps, window_time = {}, 0, 0.0
        if eval_factory is not None and step % config.eval_every == 0:
            if context.is_main:
                result = _evaluate(model, eval_factory, config.eval_batches, device, autocast, vgg)
                if eval_log is not None:
                    eval_log.write({"step": step, **result})
                _say(context, f"eval @ {step}: loss {result['loss']:.4f}")
            context.barrier()
        if step == config.iterations:
            finished = True
        if finished or stop_for_time or stop_at_step or (config.checkpoint_every and step % config.checkpoint_every == 0):
            save(step)
        if stop_for_time and not finished:
            _say(context, f"time limit of {config.max_minutes} min reached at step {step}; checkpoint written, resume with --resume")
            break
        if stop_at_step and not finished:
            _say(context, f"stopped at step {step} (max_steps); checkpoint written, resume with --resume")
            break
    bar.close()

    # ---- end: pictures and a summary ------------------------------------------------------
    hashes = _all_gather(weights_sha256(model), context)
    if context.is_main:
        # Pictures from un-augmented samples: the test split, else the training data read without augmentation.
        sample_sets = eval_datasets
        if not sample_sets:
            sample_sets = datasets if built_from_root is False else build_datasets(
                dataclasses.replace(config, tasks=[t.short for t in tasks]), "train", augment=False
            )
        try:
            sample_predictions_png(model, sample_sets, run_dir / "samples.png", device)
        except Exception as error:  # a picture must never fail a finished run
            _say(context, f"warning: could not write samples.png ({type(error).__name__}: {error})")
        summary_doc = {
            "step": step,
            "finished": finished,
            "world_size": context.world_size,
            "last_checkpoint": str(last_checkpoint) if last_checkpoint else None,
            "weights_sha256": hashes,
            "ranks_agree": len(set(hashes)) == 1,
            "final_loss": losses[-1] if losses else None,
        }
        with atomic_output(run_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary_doc, indent=2) + "\n")
        if len(set(hashes)) != 1:
            _say(context, "warning: the ranks' final weights differ (see summary.json)")
    context.barrier()
    return TrainResult(run_dir, step, finished, last_checkpoint, losses, hashes[0])
