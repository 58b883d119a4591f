"""Torch datasets over the three layouts: aligned (image, target, mask) tensors for training and evaluation.

Item dict: `image` (3,S,S) float [0,1]; `target` (3,S,S) float (removal: the text-free RGB image;
segmentation/tampering: `upocr.tasks.encode_*` maps with IGNORE_VALUE for ignored pixels); `mask`
(1,S,S) float (removal: 1 non-text / 0 text; other tasks all ones); `task` int; `name` str.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from upocr.data import layouts, transforms
from upocr.tasks import Task, encode_removal_target


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return encode_removal_target(np.array(image.convert("RGB")))  # (3, H, W) float in [0, 1]


class _LayoutDataset(Dataset):
    task: Task

    def __init__(self, samples: list, *, size: int = 512, augment: bool = False, rng: random.Random | None = None,
                 native: bool = False):
        self.samples = samples
        self.size = int(size)
        self.augment = augment
        # native: size x size windows at the image's own resolution instead of the original's crop + resize.
        self.native = native
        # None -> the `random` module, which DataLoader seeds per worker.
        self.rng = rng if rng is not None else random

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> transforms.Sample:
        raise NotImplementedError

    def check_headers(self, index: int) -> None:
        """LayoutError if a file of sample `index` is not an image or the sizes disagree (headers only)."""
        raise NotImplementedError

    def check_sample(self, index: int, *, full: bool) -> None:
        """Check sample `index` before training: headers only (cheap), or `full`y decoded as training reads it."""
        if full:
            self.load(index)
        else:
            self.check_headers(index)

    def __getitem__(self, index: int) -> dict:
        sample = self.load(index)
        if self.augment:
            sample = transforms.augment(sample, self.task, self.rng, crop=not self.native)
        if self.native:  # already size x size: nothing to resize
            fills = transforms.NEW_PIXEL_FILL[self.task]
            sample = transforms.native_window(sample, self.size, fills, self.rng if self.augment else None)
        else:
            sample = transforms.resize(sample, self.size)
        target = self.task.spec.encode(np.array(sample["label"], dtype=np.uint8))
        if "mask" in sample:  # removal's text mask (1 non-text, 0 text), which its loss weights by
            mask = torch.from_numpy(np.array(sample["mask"], dtype=np.float32))[None]
        else:
            mask = torch.ones(1, self.size, self.size)
        return {"image": _to_tensor(sample["image"]), "target": target, "mask": mask, "task": int(self.task),
                "name": self.samples[index].name}


class RemovalDataset(_LayoutDataset):
    task = Task.TEXT_REMOVAL

    def load(self, index: int) -> transforms.Sample:
        s = self.samples[index]
        image, label = layouts.read_rgb(s.image), layouts.read_rgb(s.label)
        mask_image = Image.fromarray(layouts.read_removal_mask(s.mask))
        # A pixel or two off (some real pairs) is resized onto the input; more is a LayoutError.
        layouts.check_aligned(s.label, label.size, s.image, image.size, slack=True)
        layouts.check_aligned(s.mask, mask_image.size, s.image, image.size, slack=True)
        if label.size != image.size:
            label = label.resize(image.size, Image.Resampling.BICUBIC)
        if mask_image.size != image.size:
            mask_image = mask_image.resize(image.size, Image.Resampling.NEAREST)
        return {"image": image, "label": label, "mask": mask_image}

    def check_headers(self, index: int) -> None:
        s = self.samples[index]
        size = layouts.image_size(s.image)
        for path in (s.label, s.mask):
            layouts.check_aligned(path, layouts.image_size(path), s.image, size, slack=True)


class SegmentationDataset(_LayoutDataset):
    task = Task.TEXT_SEGMENTATION

    def load(self, index: int) -> transforms.Sample:
        s = self.samples[index]
        image = layouts.read_rgb(s.image)
        label = Image.fromarray(layouts.read_segmentation_label(s.label))
        layouts.check_aligned(s.label, label.size, s.image, image.size)
        return {"image": image, "label": label}

    def check_headers(self, index: int) -> None:
        s = self.samples[index]
        layouts.check_aligned(s.label, layouts.image_size(s.label), s.image, layouts.image_size(s.image))


class TamperingDataset(_LayoutDataset):
    task = Task.TAMPERED_TEXT_DETECTION

    def load(self, index: int) -> transforms.Sample:
        s = self.samples[index]
        image = layouts.read_rgb(s.image)
        classes = layouts.read_tampering_label(s.gt, size=(image.height, image.width))
        return {"image": image, "label": Image.fromarray(classes)}

    def check_headers(self, index: int) -> None:
        s = self.samples[index]
        layouts.image_size(s.image)
        layouts.read_tampering_boxes(s.gt)


def build_dataset(task: Task | str | int, data_root: str | Path, split: str, *, size: int = 512,
                  augment: bool, rng: random.Random | None = None, native: bool = False) -> Dataset:
    """The dataset of `task` and `split` under `data_root`. Segmentation's "train" is train + val
    (as the original). `augment=True` applies the original per-task training augmentations; `native=True`
    takes size x size windows at native resolution instead of cropping and resizing."""
    task = Task.parse(task)
    samples = layouts.task_samples(task, data_root, split)
    if task == Task.TEXT_SEGMENTATION and split == "train":  # TextSeg's val split trains too (the original)
        samples = sorted(samples + layouts.task_samples(task, data_root, "val"), key=lambda s: s.name)
    return DATASETS[task](samples, size=size, augment=augment, rng=rng, native=native)


# The dataset class reading each task's layout.
DATASETS: dict[Task, type[_LayoutDataset]] = {
    dataset.task: dataset for dataset in (RemovalDataset, SegmentationDataset, TamperingDataset)
}
