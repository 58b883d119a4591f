"""The one place that knows the three tasks: one `TaskSpec` per task in `TASK_SPECS`.

Every task is RGB image -> RGB image. A spec says, for its task: its names (title, short name, CLI verb),
how labels are *encoded* into the target image the model is trained to output, how a model output is
*decoded* into a result (a text-free image, a text mask, a class map) and which `Prediction` field holds
it, its class names and overlay colours, and the files one input produces (`{stem}.png`,
`{stem}_mask.png` + `{stem}_mask_overlay.jpg`, ...) with how each is drawn. The CLI, the web page, the
evaluation and training read the table instead of branching on the task; docs/architecture.md says
what else a fourth task needs (its data layout and loss).

Task indices follow the original UPOCR (`args.tasks` built from the README's data-config order), so
original checkpoints keep their meaning: 0 text removal, 1 tampered text detection, 2 text segmentation.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from upocr.io import JPEG_MAX_SIDE
from upocr.visualize import GREEN, RED, Colour, overlay_classes

# Targets mark "don't care" pixels with this grey value; losses skip them (original: 128/255).
IGNORE_VALUE = 128 / 255
# Default text-segmentation threshold on the channel-mean of the clamped output (original: 0.4).
SEGMENTATION_THRESHOLD = 0.4
# Overlays (the result drawn over the input) are JPEG, or PNG for an image with a side JPEG cannot store.
OVERLAY_KIND = "overlay"
OVERLAY_SUFFIX = "_overlay.jpg"


class Task(enum.IntEnum):
    """A pixel-level OCR task. The integer value is the original checkpoint's prompt index."""

    TEXT_REMOVAL = 0
    TAMPERED_TEXT_DETECTION = 1
    TEXT_SEGMENTATION = 2

    @property
    def spec(self) -> "TaskSpec":
        """Everything upocr knows about this task (`TASK_SPECS`)."""
        return TASK_SPECS[self]

    @property
    def title(self) -> str:
        """The original's name for the task (`args.tasks` entry), e.g. 'text removal'."""
        return self.spec.title

    @property
    def short(self) -> str:
        """Short name used in configs, file names and CLI choices: removal, tampering, segmentation."""
        return self.spec.short

    @classmethod
    def parse(cls, value: "Task | str | int") -> "Task":
        """Accept a Task, its index, the original title ('text removal'), short name or CLI name."""
        if isinstance(value, Task):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return cls(int(value))
        if isinstance(value, str):
            key = _alias_key(value)
            if key in _ALIASES:
                return _ALIASES[key]
        choices = ", ".join(sorted({t.short for t in cls}))
        raise ValueError(f"unknown task {value!r}; expected one of: {choices} (or index 0, 1, 2)")

    @classmethod
    def parse_many(cls, values: Iterable["Task | str | int"]) -> list["Task"]:
        return [cls.parse(v) for v in values]


def _alias_key(name: str) -> str:
    return name.strip().lower().replace("_", " ").replace("-", " ")


# --------------------------------------------------------------------------------------------
# Target encoding (labels -> target images the model is trained to output)
# --------------------------------------------------------------------------------------------


def encode_removal_target(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 text-free image -> (3, H, W) float target in [0, 1]."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


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


def task_order() -> list[str]:
    """Each task's short name at its index (the original's prompt order, what an ONNX export's `tasks`
    input means): removal, tampering, segmentation."""
    return [task.short for task in sorted(Task)]


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


# --------------------------------------------------------------------------------------------
# The spec table
# --------------------------------------------------------------------------------------------

# Tampering classes, by value: channel 0 (R) background, 1 (G) real text, 2 (B) tampered text.
TAMPERING_CLASSES = ("background", "real text", "tampered text")
SEGMENTATION_CLASSES = ("background", "text")

Picture = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input image uint8 (H, W, 3), result) -> pixels


@dataclass(frozen=True)
class OutputFile:
    """One file (or web picture) an input produces: `{stem}{suffix}`, drawn by `draw(image, result)`."""

    kind: str  # "result", "mask", "classes", "overlay": the web page's name for it ({short}_{kind}.png)
    suffix: str  # appended to the input's output name (which has no suffix of its own)
    label: str  # what it shows, for people (the web page, `--help`, the demo picture)
    draw: Picture

    @property
    def name_suffix(self) -> str:
        """The suffix without its image extension: "_mask" for "_mask.png", "" for ".png"."""
        return self.suffix.rpartition(".")[0]

    def suffix_for(self, shape: tuple[int, int] | None = None) -> str:
        """The suffix for an image of `shape` (H, W): a JPEG that could not store it becomes a PNG."""
        if shape is not None and max(shape) > JPEG_MAX_SIDE and self.suffix.endswith(".jpg"):
            return self.suffix.removesuffix(".jpg") + ".png"
        return self.suffix

    def path(self, base: Path, shape: tuple[int, int] | None = None) -> Path:
        """`base` (an output path without suffix, e.g. OUT/photo) with this file's suffix."""
        return base.with_name(base.name + self.suffix_for(shape))


@dataclass(frozen=True, eq=False)
class TaskSpec:
    """Everything the layers above `upocr.tasks` need to know about one task (see the module docstring).

    The output files are built once from the fields, so each is one object (`picture in outputs`)."""

    task: Task
    title: str  # the original's name: "text removal"
    short: str  # configs, file names, CLI choices: "removal"
    verb: str  # the CLI command: "remove-text"
    help: str  # the CLI command's one-line help
    aliases: tuple[str, ...]  # more names `Task.parse` accepts
    encode: Callable[[np.ndarray], torch.Tensor]  # training label (H, W[, 3]) -> (3, H, W) float target
    decode: Callable[[torch.Tensor, float], torch.Tensor]  # (…, 3, H, W) output, threshold -> result
    result_field: str  # the `upocr.predict.Prediction` field holding the decoded result
    result_channels: int | None  # the result's trailing channel count: (H, W, 3) image, or None: (H, W)
    result_dtype: type  # the result's dtype (np.uint8, bool)
    result_kind: str  # the result file (what `upocr evaluate` scores): its kind, suffix and label
    result_suffix: str
    result_label: str
    store: Callable[[np.ndarray], np.ndarray]  # result -> the pixels of its file (bool mask -> 0/255)
    classes: tuple[str, ...] = ()  # class names by value (results that are masks or class maps)
    colours: Mapping[int, Colour] = field(default_factory=dict)  # overlay colours by class value
    overlay_label: str | None = None  # a spec with colours also writes the result drawn over the input

    def empty_result(self, height: int, width: int) -> np.ndarray:
        """An uninitialised result array for an image of height x width (filled band by band)."""
        shape = (height, width) if self.result_channels is None else (height, width, self.result_channels)
        return np.empty(shape, self.result_dtype)

    def decode_array(self, output: np.ndarray, threshold: float) -> np.ndarray:
        """`decode` for a float numpy (…, 3, H, W) output: the result as a numpy array."""
        return self.decode(torch.from_numpy(np.ascontiguousarray(output, dtype=np.float32)), threshold).numpy()

    @cached_property
    def result_file(self) -> OutputFile:
        """The file holding the result itself, drawn from the result alone."""
        store = self.store
        return OutputFile(self.result_kind, self.result_suffix, self.result_label, lambda image, result: store(result))

    @cached_property
    def overlay(self) -> OutputFile | None:
        """The classes tinted in their colours over the input image, or None for a task without classes."""
        if self.overlay_label is None:
            return None
        colours = self.colours

        def draw(image: np.ndarray, result: np.ndarray) -> np.ndarray:
            return overlay_classes(image, np.asarray(result).astype(np.uint8), colours=colours)

        # Named after the result file ("_mask_overlay.jpg"): tasks writing into one folder never collide.
        return OutputFile(OVERLAY_KIND, self.result_file.name_suffix + OVERLAY_SUFFIX, self.overlay_label, draw)

    @cached_property
    def outputs(self) -> tuple[OutputFile, ...]:
        """The files one input produces, in the order they are written: the result file, then the overlay."""
        return (self.result_file,) if self.overlay is None else (self.result_file, self.overlay)

    @cached_property
    def pictures(self) -> tuple[OutputFile, ...]:
        """The same, in the order people see them: the one to look at (overlay, or the result) first."""
        return tuple(sorted(self.outputs, key=lambda output: output.kind != OVERLAY_KIND))

    @cached_property
    def picture(self) -> OutputFile:
        """The one picture to look at (the demo's column, the web page's card)."""
        return self.pictures[0]

    def legend(self) -> list[tuple[str, Colour]]:
        """(class name, colour) of every coloured class, by class value."""
        return [(self.classes[value], colour) for value, colour in sorted(self.colours.items())]


def spec(task: Task | str | int) -> TaskSpec:
    """The spec of a task given in any form `Task.parse` accepts."""
    return Task.parse(task).spec


def _unchanged(result: np.ndarray) -> np.ndarray:
    return result


def _mask_as_grey(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool).astype(np.uint8) * 255


# In the order people see the tasks (CLI help, the web page, the demo picture), not the index order.
TASK_SPECS: Mapping[Task, TaskSpec] = MappingProxyType({
    Task.TEXT_REMOVAL: TaskSpec(
        task=Task.TEXT_REMOVAL,
        title="text removal",
        short="removal",
        verb="remove-text",
        help="erase text from images",
        aliases=(),
        encode=encode_removal_target,
        decode=lambda output, threshold: decode_removal(output),
        result_field="image",
        result_channels=3,
        result_dtype=np.uint8,
        result_kind="result",
        result_suffix=".png",
        result_label="text removed",
        store=_unchanged,
    ),
    Task.TEXT_SEGMENTATION: TaskSpec(
        task=Task.TEXT_SEGMENTATION,
        title="text segmentation",
        short="segmentation",
        verb="segment-text",
        help="find text pixels",
        aliases=("seg",),
        encode=encode_segmentation_target,
        decode=decode_segmentation,
        result_field="mask",
        result_channels=None,
        result_dtype=bool,
        result_kind="mask",
        result_suffix="_mask.png",
        result_label="mask: 0 background, 255 text",
        store=_mask_as_grey,
        classes=SEGMENTATION_CLASSES,
        colours=MappingProxyType({1: RED}),
        overlay_label="text pixels in red",
    ),
    Task.TAMPERED_TEXT_DETECTION: TaskSpec(
        task=Task.TAMPERED_TEXT_DETECTION,
        title="tampered text detection",
        short="tampering",
        verb="detect-tampering",
        help="find tampered text",
        aliases=("tampered",),
        encode=encode_tampering_target,
        decode=lambda output, threshold: decode_tampering(output),
        result_field="classes",
        result_channels=None,
        result_dtype=np.uint8,
        result_kind="classes",
        result_suffix="_classes.png",
        result_label="class map: 0 background, 1 real text, 2 tampered text",
        store=_unchanged,
        classes=TAMPERING_CLASSES,
        colours=MappingProxyType({1: GREEN, 2: RED}),
        overlay_label="real text green, tampered text red",
    ),
})

_ALIASES: dict[str, Task] = {
    _alias_key(name): entry.task
    for entry in TASK_SPECS.values()
    for name in (entry.title, entry.short, entry.verb, entry.task.name, *entry.aliases)
}
