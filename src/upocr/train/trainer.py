"""The training loop: one model, all tasks at once, on one process or under torchrun (DDP).

``train(config)`` runs the original recipe by default (reference section 4): 1:1:1 batches, the task
losses, AdamW with the encoder at a lower lr, warm-up then decay, gradient clipping, mixed precision,
drop path (the model's own, active in train mode). The same call works single-process or as every
rank of ``torchrun --nproc_per_node=N`` (:mod:`upocr.train.distributed`): each rank reads its shard of
every task and DDP averages the gradients, so a step sees ``batch_per_task x world_size`` images of
every task. What the run writes, and where: :mod:`upocr.train.run_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from upocr.model import UPOCR, UPOCRConfig, build_model
from upocr.model.checkpoint import load_into_extended_model, load_model
from upocr.tasks import Task
from upocr.train import checkpoint as ckpt
from upocr.train import run_dir as folder
from upocr.train.config import TrainConfig
from upocr.train.distributed import DistContext, InterruptFlag, resolve_precision, seed_everything, setup_distributed
from upocr.train.distributed import weights_sha256
from upocr.train.losses import LOSS_TERMS, build_task_losses, mean_losses, task_loss
from upocr.train.multitask import DataCheckError, MultiTaskLoader, build_datasets, check_training_data  # noqa: F401
from upocr.train.schedule import build_optimizer, build_schedule
from upocr.train.vgg import VGG16Features, load_vgg16
from upocr.utils import cpu_has_native_bf16
from upocr.weights import TrainingRecord


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the run stopped before touching weights or checkpoints."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C stopped the run after a complete step; `checkpoint` holds that step (continue with --resume)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}; resume with --resume")
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    finished: bool  # reached config.iterations (False: stopped by max_minutes)
    last_checkpoint: Path | None
    losses: list[float]  # the total loss of every step this call ran (averaged over ranks)
    weights_sha256: str


@dataclass
class StepOutcome:
    values: dict[str, float]  # the loss terms, averaged over ranks
    grad_norm: float
    lr_factor: float
    seconds: float
    out_of_time: bool  # agreed by all ranks
    interrupted: bool  # Ctrl+C on any rank


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Trainer:
    """One training run in named phases: :meth:`restore` (run folder, resume state, model, optimizer, data),
    :meth:`train_step` (one optimizer step on a batch), :meth:`after_step` (log, evaluate, checkpoint, decide
    to stop) and :meth:`finish` (pictures, summary). :meth:`run` chains them; benchmarks/bench_train.py
    times :meth:`train_step` alone."""

    def __init__(self, config: TrainConfig, context: DistContext, *, datasets: Mapping[Task, Dataset] | None = None,
                 eval_datasets: Mapping[Task, Dataset] | None = None, progress: bool = True,
                 config_file: str | Path | None = None) -> None:  # fmt: skip
        self.config, self.context, self.progress, self.config_file = config, context, progress, config_file
        self.device = context.device
        self.amp_dtype = resolve_precision(config.precision, self.device)
        self.datasets, self.eval_datasets = datasets, eval_datasets
        self.built_from_root = datasets is None
        self.task_losses = build_task_losses(config)
        self.started = time.monotonic()
        self.elapsed_before = 0.0  # seconds of earlier sessions of a resumed run (train.csv elapsed_s)
        self.step = 0
        self.losses: list[float] = []
        self.window = folder.LogWindow()
        self.resume_path: Path | None = None
        self.last_checkpoint: Path | None = None
        self.lock: folder.RunLock | None = None
        self.train_log: folder.CSVLog | None = None
        self.eval_log: folder.CSVLog | None = None
        self.eval_factory: Callable[[], MultiTaskLoader] | None = None
        self.interrupt = InterruptFlag()
        self.deadline = self.started + config.max_minutes * 60 if config.max_minutes is not None else None
        self.say = context.say

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ---- phase 1: restore ----------------------------------------------------------------------

    def restore(self) -> None:
        """Choose and lock the run folder and the checkpoint to resume (refusing to mix runs), then build the
        model, optimizer, schedule and data loader and put them in the checkpoint's state."""
        self.run_dir = Path(self.context.main_decides(lambda: str(folder.choose_run_dir(self.config))))
        loaded: dict[str, Any] = {}

        def lock_and_prepare() -> str | None:  # (rank 0) the lock is held until close()
            self.lock = folder.RunLock(self.run_dir).acquire()
            path, state = folder.prepare_run_dir(self.config, self.run_dir, self.say, config_file=self.config_file)
            loaded["state"] = state  # rank 0 does not read the checkpoint twice
            return str(path) if path is not None else None

        resume = self.context.main_decides(lock_and_prepare)
        self.resume_path = Path(resume) if resume else None
        state = None
        if self.resume_path is not None:
            state = loaded["state"] if loaded.get("state") is not None else ckpt.load_checkpoint(self.resume_path)
            self.config = ckpt.adopt_checkpoint_model(self.config, state, self.resume_path)
        config = self.config

        seed_everything(config.seed)  # identical initial weights on every rank
        self.model = self._build_model(state).to(self.device).train()  # train mode: drop path on
        self.vgg: VGG16Features | None = load_vgg16(config.vgg_weights, self.device) if config.vgg_weights else None

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

        self.optimizer = build_optimizer(self.model, config)
        self.schedule = build_schedule(config)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        # Per-rank randomness (drop path) from seed + rank, as the original; resumed runs restore it.
        seed_everything(config.seed + self.context.rank)
        if state is not None:
            self._load_training_state(state)
        del state

        self.net: torch.nn.Module = self.model
        if self.context.distributed:
            # The model's buffers are constant position tables: synced once at construction, not every forward.
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False,
            )  # fmt: skip

    def _build_model(self, state: Mapping[str, Any] | None) -> UPOCR:
        """The model from its origin: a resumed checkpoint, --init weights in their own architecture, --init
        weights in the --model architecture (which may add zero-initialised modules), or a fresh --model."""
        config = self.config
        if state is not None:
            model = ckpt.model_from_checkpoint(state)
        elif config.init and config.model is None:
            model = load_model(config.init)
        elif config.init:
            model = build_model(UPOCRConfig.from_spec(config.model))
            added = load_into_extended_model(model, config.init)
            if added:
                self.say(f"{config.init}: loaded into {config.model}; new zero-initialised modules: {', '.join(added)}")
        else:
            model = build_model(UPOCRConfig.from_spec(config.model or "small"))
        if model.inference.input_size != config.image_size:
            # The exported weights remember the resolution they were trained at (the Predictor's default size).
            model.inference = dataclasses.replace(model.inference, input_size=config.image_size)
        return model

    def _load_training_state(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["data"])
        self.step = int(state["step"])
        self.window = folder.LogWindow.from_state(state.get("log_window"))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.last_checkpoint = self.resume_path
        rank, rng_states = self.context.rank, state["rng"]
        if rank < len(rng_states):
            ckpt.restore_rng(rng_states[rank], self.device)
        else:
            seed_everything(self.config.seed + rank + 7919 * self.step)
            self.say(f"resuming with {self.context.world_size} ranks from a {len(rng_states)}-rank checkpoint: new ranks get fresh seeds")
        self.say(f"resumed from {self.resume_path} at step {self.step}")

    def _check_data(self) -> None:
        if self.config.check_data != "off" and self.built_from_root:  # DataCheckError on every rank
            self.context.main_decides(lambda: check_training_data(self.datasets or {}, self.config.check_data,
                                                                  progress=self.progress, say=self.say))  # fmt: skip

    def open_run_dir(self) -> None:
        """(rank 0) config.yaml and the CSV logs (a resumed run keeps the rows up to its step)."""
        config, context = self.config, self.context
        self.config = config = dataclasses.replace(config, output_dir=str(self.run_dir))
        if context.is_main:
            folder.write_run_config(self.run_dir, config, self.config_file)
            resumed_at = self.step if self.resume_path is not None else None
            # A row written when a run stopped between two log_every steps is dropped: the window restored
            # from the checkpoint still holds those steps, so the next row is the one an uninterrupted run writes.
            self.train_log = folder.CSVLog(self.run_dir / "train.csv", folder.LOG_COLUMNS, resume_step=resumed_at,
                                           keep_last=self.window.steps == 0)  # fmt: skip
            if config.eval_every:
                self.eval_log = folder.CSVLog(self.run_dir / "eval.csv", ("step", *LOSS_TERMS), resume_step=resumed_at)
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
            terms = task_loss(outputs, batch, vgg=self.vgg, losses=self.task_losses)
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
            self.train_log.write({
                "step": step, "lr": config.lr * outcome.lr_factor, **self.window.means(), "grad_norm": outcome.grad_norm,
                "images_per_s": self.images_per_step * self.window.steps / max(self.window.seconds, 1e-9),
                "elapsed_s": self.elapsed_s(),
            })  # fmt: skip
        if regular_row:
            self.window = folder.LogWindow()
        if self.eval_factory is not None and step % config.eval_every == 0:
            if self.context.is_main:
                batches = (_to_device(batch, self.device) for _, batch in zip(range(config.eval_batches), self.eval_factory()))
                result = mean_losses(self.model, batches, vgg=self.vgg, losses=self.task_losses, autocast=self.autocast)
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
        rng = self.context.all_gather(ckpt.capture_rng(self.device))
        self.context.main_decides(lambda: self._write_checkpoint(rng), errors=(ckpt.CheckpointWriteError,))

    def _write_checkpoint(self, rng: list[Any]) -> None:
        config, step, model = self.config, self.step, self.model
        path = ckpt.save_checkpoint(ckpt.checkpoint_path(self.run_dir, step), {
            "step": step, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "model_config": model.config.to_dict(), "inference": model.inference.to_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {}, "rng": rng,
            "data": self.loader.state_dict(), "config": config.to_dict(), "world_size": self.context.world_size,
            "log_window": self.window.state_dict(), "elapsed_s": self.elapsed_s(),
        })  # fmt: skip
        export = self.run_dir / ckpt.MODEL_DIR
        record = self.training_record().to_dict()  # for upocr.load_model / --weights: how the weights were made
        ckpt.write_or_explain(export, "model", lambda: model.save_pretrained(str(export), training=record))
        ckpt.prune_checkpoints(self.run_dir, config.keep_checkpoints)
        self.last_checkpoint = path

    def training_record(self) -> TrainingRecord:
        config = self.config
        return TrainingRecord(
            trained=True, steps=self.step, config=UPOCRConfig.describe_spec(config.model or ("init's" if config.init else "small")),
            init=config.init, input_size=config.image_size, images=self.step * self.images_per_step,
            data=str(config.data_root) if config.data_root else "in-memory", seed=config.seed,
        )  # fmt: skip

    # ---- phase 4: finish ----------------------------------------------------------------------------

    def finish(self) -> TrainResult:
        """samples.png (un-augmented samples) and summary.json with every rank's weight hash."""
        config, context = self.config, self.context
        finished = self.step >= config.iterations
        hashes = context.all_gather(weights_sha256(self.model))
        if context.is_main:
            sample_sets = self.eval_datasets
            if not sample_sets:
                sample_sets = self.datasets if not self.built_from_root else build_datasets(
                    dataclasses.replace(config, tasks=[t.short for t in self.tasks]), "train", augment=False
                )
            try:
                folder.sample_predictions_png(self.model, sample_sets or {}, self.run_dir / "samples.png", self.device)
            except Exception as error:  # a picture must never fail a finished run
                self.say(f"warning: could not write samples.png ({type(error).__name__}: {error})")
            folder.write_summary(self.run_dir, {
                "step": self.step, "finished": finished, "world_size": context.world_size,
                "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                "weights_sha256": hashes, "ranks_agree": len(set(hashes)) == 1,
                "final_loss": self.losses[-1] if self.losses else None,
            })  # fmt: skip
            if len(set(hashes)) != 1:
                self.say("warning: the ranks' final weights differ (see summary.json)")
        context.barrier()
        return TrainResult(self.run_dir, self.step, finished, self.last_checkpoint, self.losses, hashes[0])

    # ---- all phases ---------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        from tqdm import tqdm

        try:
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
        finally:
            self.close()

    def close(self) -> None:
        """Release the run folder's lock (the next trainer may use the folder)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _show(self, bar: Any, outcome: StepOutcome) -> None:
        if bar.n % max(1, min(self.config.log_every, 10)) == 0 or self.step == self.config.iterations:
            shown = {"loss": f"{outcome.values['loss']:.4f}"}
            shown.update({t.short[:4]: f"{outcome.values[t.short]:.3f}" for t in self.tasks})
            shown["img/s"] = f"{self.images_per_step / max(outcome.seconds, 1e-9):.1f}"
            bar.set_postfix(shown, refresh=False)


def train(config: TrainConfig, *, datasets: Mapping[Task, Dataset] | None = None,
          eval_datasets: Mapping[Task, Dataset] | None = None, progress: bool = True,
          config_file: str | Path | None = None) -> TrainResult:  # fmt: skip
    """Train as `config` says (see the module docstring); `datasets` replaces reading config.data_root;
    `config_file`: the YAML file the options came from (never overwritten by the run's config.yaml).

    Ctrl+C finishes the step in progress, writes a checkpoint and raises :class:`TrainingInterrupted`."""
    context = setup_distributed(config.device)
    try:
        trainer = Trainer(config, context, datasets=datasets, eval_datasets=eval_datasets, progress=progress,
                          config_file=config_file)  # fmt: skip
        return trainer.run()
    finally:
        context.close()
