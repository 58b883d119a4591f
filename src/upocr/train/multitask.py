"""1:1:1 multi-task batches (reference 3.4), sharded across ranks and resumable mid-epoch.

Every step draws one batch of `batch_per_task` images from every task (in prompt-index order:
removal, tampering, segmentation) and concatenates them. Each task has its own shuffled
``DistributedSampler`` (rank's shard, seeded); an exhausted task starts its next epoch with
``set_epoch(epoch + 1)``, independently of the others. The position (epoch, batches taken) of every
task is part of the training checkpoint, so a resumed run continues with exactly the next batches
without loading the skipped ones.

Augmentations are made reproducible per sample: each item is produced with the global ``random``,
NumPy and torch generators seeded from (seed, task, epoch, sample index) and restored afterwards.
The same sample therefore gets the same augmentation whatever the number of ranks, the number of
loader workers, or whether the run was interrupted and resumed.

A sample that cannot be read raises :class:`SampleError` with one line naming the file, also when it
was read in a loader worker process (whose traceback the DataLoader would otherwise pass on).
"""

from __future__ import annotations

import random
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from upocr.data.layouts import LayoutError
from upocr.tasks import Task

if TYPE_CHECKING:
    from upocr.train.config import TrainConfig


def item_seed(seed: int, task: Task, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation (a fixed hash, the same in every process)."""
    state = np.random.SeedSequence([seed, int(task), epoch, index]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


class SampleError(ValueError):
    """A training sample could not be read; the message (one line) names the file and the problem."""


# What a broken file raises in the readers: LayoutError (a ValueError), OSError, PIL's bomb check.
DATA_ERRORS = (ValueError, OSError, Image.DecompressionBombError)


def describe_data_error(dataset: Dataset, index: int, error: BaseException) -> str:
    """One line for a sample that failed to load: a LayoutError already names the file; anything else
    gets the sample's image path (layout datasets) or its index in front."""
    if isinstance(error, LayoutError):
        return str(error)
    samples = getattr(dataset, "samples", None)
    image = getattr(samples[index], "image", None) if samples is not None else None
    where = str(image) if image is not None else f"sample {index} of {type(dataset).__name__}"
    return f"{where}: {type(error).__name__}: {error}"


def _one_line(error: SampleError) -> str:
    """The SampleError's own message, without the worker traceback DataLoader wraps around it."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    prefix = f"{SampleError.__module__}.{SampleError.__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl+C reaches the whole process group; the training process handles it (checkpoint, then stop)
    # and needs its loader workers alive until then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SeededItems(Dataset):
    """Wraps a dataset: ``self[(index, seed)]`` returns ``dataset[index]`` produced under `seed`.

    The global generators are restored afterwards, so with in-process loading (num_workers=0) the
    training loop's own random stream (drop path) is not disturbed by data loading.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Mapping:
        index, seed = key
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed(seed % (1 << 32))
            torch.manual_seed(seed)
            return self.dataset[index]
        except SampleError:
            raise
        except DATA_ERRORS as error:
            raise SampleError(describe_data_error(self.dataset, index, error)) from error
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


@dataclass
class TaskPosition:
    epoch: int = 0
    batch: int = 0  # batches already taken from this epoch


class TaskBatches:
    """One task's batch sampler: the rank's shard of a seeded shuffle, from a resumable position."""

    def __init__(
        self, task: Task, size: int, batch_size: int, *, seed: int, rank: int, world_size: int, position: TaskPosition
    ) -> None:
        self.task, self.batch_size, self.seed = task, batch_size, seed
        self.sampler = DistributedSampler(
            range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed + 1000 * int(task), drop_last=False
        )
        self.batches_per_epoch = self.sampler.num_samples // batch_size  # drop_last batches, like the original
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{task.title}: {size} training samples give each of {world_size} rank(s) {self.sampler.num_samples}, "
                f"fewer than one batch of {batch_size}; lower batch_per_task or add data"
            )
        self.position = position

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        """Batches of (sample index, item seed) from the current position to the end of the epoch."""
        epoch = self.position.epoch
        self.sampler.set_epoch(epoch)
        indices = list(self.sampler)
        for b in range(self.position.batch, self.batches_per_epoch):
            chunk = indices[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(i, item_seed(self.seed, self.task, epoch, i)) for i in chunk]


def concatenate(batches: list[Mapping]) -> dict:
    """Concatenate per-task collated batches into one mixed batch (tensors along dim 0, lists joined)."""
    merged: dict = {}
    for key in batches[0]:
        values = [b[key] for b in batches]
        if isinstance(values[0], torch.Tensor):
            merged[key] = torch.cat(values, dim=0)
        else:
            merged[key] = [item for value in values for item in value]
    return merged


class MultiTaskLoader:
    """Infinite iterator of 1:1:1 batches over `datasets` ({Task: Dataset}); see the module docstring."""

    def __init__(
        self,
        datasets: Mapping[Task, Dataset],
        *,
        batch_per_task: int,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if not datasets:
            raise ValueError("no training tasks: give at least one task with data")
        self.tasks = sorted(datasets, key=int)
        self.datasets = {task: SeededItems(datasets[task]) for task in self.tasks}
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.samplers = {
            task: TaskBatches(
                task, len(self.datasets[task]), batch_per_task,
                seed=seed, rank=rank, world_size=world_size, position=TaskPosition(),
            )
            for task in self.tasks
        }  # fmt: skip
        self._iterators: dict[Task, Iterator] = {}

    def _loader(self, task: Task) -> Iterator:
        return iter(
            DataLoader(
                self.datasets[task],
                batch_sampler=self.samplers[task],
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=False,
                # The loader draws its worker base seed when an iterator starts (each epoch, and on
                # resume): take it from a private generator, not the global one that drop path uses,
                # so a resumed run's random stream matches the uninterrupted run's. Items are seeded
                # by SeededItems anyway.
                generator=torch.Generator().manual_seed(0),
                worker_init_fn=_ignore_sigint if self.num_workers > 0 else None,
            )
        )

    def _next(self, task: Task) -> Mapping:
        sampler = self.samplers[task]
        if sampler.position.batch >= sampler.batches_per_epoch:
            sampler.position = TaskPosition(epoch=sampler.position.epoch + 1, batch=0)
            self._iterators.pop(task, None)
        if task not in self._iterators:
            self._iterators[task] = self._loader(task)
        try:
            batch = next(self._iterators[task])
        except SampleError as error:
            raise SampleError(_one_line(error)) from None
        sampler.position.batch += 1
        return batch

    def __iter__(self) -> "MultiTaskLoader":
        return self

    def __next__(self) -> dict:
        return concatenate([self._next(task) for task in self.tasks])

    def state_dict(self) -> dict:
        """Data position per task: {task short name: {"epoch": e, "batch": b}} (plain ints)."""
        return {task.short: {"epoch": s.position.epoch, "batch": s.position.batch} for task, s in self.samplers.items()}

    def load_state_dict(self, state: Mapping) -> None:
        for task, sampler in self.samplers.items():
            if task.short in state:
                entry = state[task.short]
                sampler.position = TaskPosition(epoch=int(entry["epoch"]), batch=int(entry["batch"]))
        self._iterators.clear()


# --------------------------------------------------------------------------------------------
# The datasets of a training run
# --------------------------------------------------------------------------------------------


def build_datasets(config: "TrainConfig", split: str = "train", *, augment: bool | None = None) -> dict[Task, Dataset]:
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


class DataCheckError(ValueError):
    """The check before training found unreadable or inconsistent samples (each listed on its own line)."""


def check_training_data(datasets: Mapping[Task, Dataset], mode: str, *, progress: bool, say: Callable[[str], None]) -> None:
    """The check before training (`mode` "headers" or "full"): each unusable sample on its own line
    through `say`, then DataCheckError with the count; nothing when every sample is usable."""
    problems, total = check_datasets(datasets, full=mode == "full", progress=progress)
    for problem in problems:
        say(f"bad sample: {problem}")
    if problems:
        which = f": {problems[0]}" if len(problems) == 1 else f" (listed above; first: {problems[0]})"
        raise DataCheckError(f"{len(problems)} of {total} training samples unusable{which}; "
                             "fix or remove them, or use --check-data off")  # fmt: skip
