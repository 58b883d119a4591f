"""Shared test fixtures: tiny synthetic data, in memory and on disk in the original layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from upocr.tasks import Task, encode_segmentation_target, encode_tampering_target

TINY_SIZE = 64


class SyntheticTaskDataset(Dataset):
    """In-memory samples for one task with the item format of `upocr.data.datasets.build_dataset`.

    Each image is a smooth coloured background with 1-2 dark "text" rectangles; the targets follow
    from the rectangles (removal: the background, segmentation: the rectangles, tampering: the first
    rectangle real, the second tampered), so a model can learn them in a few steps.
    Augmentation draws from the global torch generator (a random horizontal flip), like the real datasets.
    """

    def __init__(self, task: Task, *, count: int = 8, size: int = TINY_SIZE, seed: int = 0, augment: bool = True) -> None:
        self.task, self.augment = task, augment
        rng = np.random.default_rng([seed, int(task)])
        self.items = []
        for i in range(count):
            colour = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
            ramp = np.linspace(0.8, 1.0, size, dtype=np.float32)
            background = colour[:, None, None] * ramp[None, None, :] * np.ones((3, size, size), np.float32)
            image = background.copy()
            classes = np.zeros((size, size), np.uint8)
            for k in range(1 + i % 2):
                y, x = rng.integers(4, size // 2, size=2)
                h, w = rng.integers(6, size // 3), rng.integers(10, size // 2)
                image[:, y : y + h, x : x + w] = rng.uniform(0.0, 0.2)
                classes[y : y + h, x : x + w] = k + 1
            if i % 4 == 3:
                classes[:3, :3] = 255  # a few ignored pixels
            if task is Task.TEXT_REMOVAL:
                target = torch.from_numpy(background)
                mask = torch.from_numpy((classes == 0).astype(np.float32))[None]
            elif task is Task.TEXT_SEGMENTATION:
                label = np.where(classes == 255, 255, (classes > 0).astype(np.uint8)).astype(np.uint8)
                target, mask = encode_segmentation_target(label), torch.ones(1, size, size)
            else:
                target, mask = encode_tampering_target(classes), torch.ones(1, size, size)
            self.items.append((torch.from_numpy(image), target.float(), mask.float(), f"{task.short}-{i:03d}"))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image, target, mask, name = self.items[index]
        if self.augment and bool(torch.rand(()) < 0.5):
            image, target, mask = image.flip(-1), target.flip(-1), mask.flip(-1)
        return {"image": image, "target": target, "mask": mask, "task": int(self.task), "name": name}


@pytest.fixture
def refuse_listing(monkeypatch):
    """refuse_listing(folder, ...): os.scandir (which os.walk lists folders with) raises PermissionError for
    those folders, as it would for a user without read permission (tests run as root, where it would not)."""

    def refuse(*folders) -> None:
        refused = {os.fspath(folder) for folder in folders}
        real_scandir = os.scandir

        def scandir(path="."):
            if os.fspath(path) in refused:
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)

    return refuse


@pytest.fixture
def synthetic_datasets():
    """Factory: synthetic_datasets(tasks=all, count=8, size=64, seed=0, augment=True) -> {Task: Dataset}."""

    def make(tasks=tuple(Task), *, count: int = 8, size: int = TINY_SIZE, seed: int = 0, augment: bool = True):
        return {Task.parse(t): SyntheticTaskDataset(Task.parse(t), count=count, size=size, seed=seed, augment=augment) for t in tasks}

    return make


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """A data root with 8 training samples per task at 64x64 in the original layouts (session-wide)."""
    from upocr.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("tiny-data")
    generate_dataset(root, count=8, seed=0, size=TINY_SIZE, workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A randomly initialised tiny model saved with `save_pretrained` (for --weights)."""
    from upocr.model import build_model

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("weights") / "tiny"
    build_model("tiny").save_pretrained(directory)
    return directory
