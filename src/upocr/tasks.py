"""The one place that knows the three tasks.

Every task is RGB image -> RGB image. This module says, for each task, what its target image looks
like (how labels are *encoded* for training) and how a model output is *decoded* into a result
(a text-free image, a text mask, a class map). Adding a task means adding one entry here.

Task indices follow the original UPOCR (`args.tasks` built from the README's data-config order), so
original checkpoints keep their meaning: 0 text removal, 1 tampered text detection, 2 text segmentation.
"""

from __future__ import annotations

import enum
from typing import Iterable, Sequence

import numpy as np
import torch

# Targets mark "don't care" pixels with this grey value; losses skip them (original: 128/255).
IGNORE_VALUE = 128 / 255
# Default text-segmentation threshold on the channel-mean of the clamped output (original: 0.4).
SEGMENTATION_THRESHOLD = 0.4


class Task(enum.IntEnum):
    """A pixel-level OCR task. The integer value is the original checkpoint's prompt index."""

    TEXT_REMOVAL = 0
    TAMPERED_TEXT_DETECTION = 1
    TEXT_SEGMENTATION = 2

    @property
    def title(self) -> str:
        """The original's name for the task (`args.tasks` entry), e.g. 'text removal'."""
        return _TITLES[self]

    @property
    def short(self) -> str:
        """Short name used in configs, file names and CLI choices: removal, tampering, segmentation."""
        return _SHORT[self]

    @classmethod
    def parse(cls, value: "Task | str | int") -> "Task":
        """Accept a Task, its index, the original title ('text removal'), short name or CLI name."""
        if isinstance(value, Task):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return cls(int(value))
        if isinstance(value, str):
            key = value.strip().lower().replace("_", " ").replace("-", " ")
            if key in _ALIASES:
                return _ALIASES[key]
        choices = ", ".join(sorted({t.short for t in cls}))
        raise ValueError(f"unknown task {value!r}; expected one of: {choices} (or index 0, 1, 2)")

    @classmethod
    def parse_many(cls, values: Iterable["Task | str | int"]) -> list["Task"]:
        return [cls.parse(v) for v in values]


_TITLES = {
    Task.TEXT_REMOVAL: "text removal",
    Task.TAMPERED_TEXT_DETECTION: "tampered text detection",
    Task.TEXT_SEGMENTATION: "text segmentation",
}
_SHORT = {
    Task.TEXT_REMOVAL: "removal",
    Task.TAMPERED_TEXT_DETECTION: "tampering",
    Task.TEXT_SEGMENTATION: "segmentation",
}
_ALIASES: dict[str, Task] = {}
for _task in Task:
    for _alias in (_TITLES[_task], _SHORT[_task], _task.name.lower().replace("_", " ")):
        _ALIASES[_alias] = _task
_ALIASES.update(
    {
        "remove text": Task.TEXT_REMOVAL,
        "segment text": Task.TEXT_SEGMENTATION,
        "detect tampering": Task.TAMPERED_TEXT_DETECTION,
        "tampered": Task.TAMPERED_TEXT_DETECTION,
        "seg": Task.TEXT_SEGMENTATION,
    }
)

# Tampering colours: channel 0 (R) background, 1 (G) real text, 2 (B) tampered text.
TAMPERING_CLASSES = ("background", "real text", "tampered text")


# --------------------------------------------------------------------------------------------
# Target encoding (labels -> target images the model is trained to output)
# --------------------------------------------------------------------------------------------


def encode_segmentation_target(label: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W) label with 0 background, 1 text, 255 ignore -> (3, H, W) float target.

    Text is white (1,1,1), background black, ignored pixels IGNORE_VALUE grey, as the original.
    """
    label = torch.as_tensor(np.asarray(label))
    target = (label == 1).float()
    target[label == 255] = IGNORE_VALUE
    return target.unsqueeze(0).expand(3, -1, -1).clone()


def encode_tampering_target(classes: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W) class map with 0 background, 1 real, 2 tampered, 255 ignore -> (3, H, W) one-hot."""
    classes = torch.as_tensor(np.asarray(classes)).long()
    ignore = classes == 255
    onehot = torch.nn.functional.one_hot(classes.clamp(0, 2), 3).permute(2, 0, 1).float()
    onehot[:, ignore] = IGNORE_VALUE
    return onehot


# --------------------------------------------------------------------------------------------
# Output decoding (model output image -> result)
# --------------------------------------------------------------------------------------------


def decode_removal(output: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) output -> uint8 (…, H, W, 3) image: clamp, *255, truncate (as the original)."""
    return (output.clamp(0, 1) * 255).to(torch.uint8).movedim(-3, -1)


def segmentation_probability(output: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) output -> (…, H, W) text score in [0, 1]: the channel mean of the clamped output."""
    return output.clamp(0, 1).mean(dim=-3)


def decode_segmentation(output: torch.Tensor, threshold: float = SEGMENTATION_THRESHOLD) -> torch.Tensor:
    """(…, 3, H, W) output -> bool (…, H, W) text mask (channel mean > threshold)."""
    return segmentation_probability(output) > threshold


def decode_tampering(output: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) output -> uint8 (…, H, W) classes: 0 background, 1 real text, 2 tampered text."""
    return output.clamp(0, 1).argmax(dim=-3).to(torch.uint8)


def task_indices(tasks: Sequence["Task | str | int"] | "Task | str | int", batch: int) -> torch.Tensor:
    """One task (broadcast) or one per image -> LongTensor of prompt indices of length `batch`."""
    if isinstance(tasks, (Task, str, int)):
        tasks = [tasks] * batch
    if isinstance(tasks, torch.Tensor):
        indices = tasks.long().flatten()
    else:
        indices = torch.tensor([int(Task.parse(t)) for t in tasks], dtype=torch.long)
    if indices.numel() != batch:
        raise ValueError(f"got {indices.numel()} tasks for a batch of {batch} images; give one task per image")
    return indices
