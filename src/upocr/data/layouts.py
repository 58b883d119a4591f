"""The three benchmarks' folder layouts, as the original code reads them (reference section 3.1).

Under one data root:

  TextRemoval/SCUT-ENS/{train,test}/{image,label,mask}/<stem>.jpg
      image: input; label: text-free ground truth; mask: white background, black text regions.
  TextSegmentation/TextSeg/image/<name>.jpg, semantic_label/<name>_maskfg.png, split.json
      label values 100 text, 200 word effect (stroke, shadow...), 255 ignore, 0 background;
      split.json {"train": [names], "val": [...], "test": [...]}.
  TamperedTextDetection/Tampered-IC13/{train,test}_img/<name>.<ext>, {train,test}_gt/<stem>.txt
      one "x1,y1,x2,y2,label" line per word box, label 1 real, 2 tampered;
      optionally {train,test}_edits/<stem>.json: what was done to each box (written by `upocr synth`).

The same readers serve the real benchmarks and `upocr synth` output, which the writers beside them
(`SAMPLE_WRITERS`) write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from PIL import Image

from upocr.io import write_image
from upocr.tasks import Task
from upocr.utils import atomic_output

REMOVAL_DIR = Path("TextRemoval") / "SCUT-ENS"
SEGMENTATION_DIR = Path("TextSegmentation") / "TextSeg"
TAMPERING_DIR = Path("TamperedTextDetection") / "Tampered-IC13"
TASK_DIRS = {Task.TEXT_REMOVAL: REMOVAL_DIR, Task.TEXT_SEGMENTATION: SEGMENTATION_DIR,
             Task.TAMPERED_TEXT_DETECTION: TAMPERING_DIR}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TEXTSEG_LABEL_SUFFIX = "_maskfg"  # TextSeg's label of <name>.jpg is semantic_label/<name>_maskfg.png
SEGMENTATION_SPLITS = ("train", "val", "test")
SPLITS = ("train", "test")

# TextSeg label values (the one place they are written down: the synthetic writer, the readers and the
# evaluation's label check use these) and what the readers turn them into.
TEXTSEG_BACKGROUND, TEXTSEG_TEXT, TEXTSEG_EFFECT, TEXTSEG_IGNORE = 0, 100, 200, 255
TEXTSEG_VALUES = frozenset((TEXTSEG_BACKGROUND, TEXTSEG_TEXT, TEXTSEG_EFFECT, TEXTSEG_IGNORE))
# Class map values used by readers (the `upocr.tasks.encode_*` inputs).
IGNORE_CLASS = 255
REAL_TEXT, TAMPERED_TEXT = 1, 2


class LayoutError(ValueError):
    """A data folder is missing or inconsistent; the message names the file or folder."""


@dataclass(frozen=True)
class RemovalSample:
    name: str
    image: Path
    label: Path
    mask: Path


@dataclass(frozen=True)
class SegmentationSample:
    name: str
    image: Path
    label: Path


@dataclass(frozen=True)
class TamperingSample:
    name: str
    image: Path
    gt: Path
    edits: Path | None = None  # the synthetic forgery's record (`read_tampering_edits`), where one was written


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise LayoutError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise LayoutError(f"unknown split {split!r}; expected one of {', '.join(allowed)}")


def _stem(name: str) -> str:
    # The original takes everything before the first dot (`name.split('.')[0]`).
    return name.split(".")[0]


def removal_samples(data_root: str | Path, split: str) -> list[RemovalSample]:
    """SCUT-EnsText pairs of <root>/TextRemoval/SCUT-ENS/<split>, sorted by image file name."""
    _check_split(split, SPLITS)
    base = Path(data_root) / REMOVAL_DIR / split
    samples = []
    for image in _images_in(base / "image"):
        stem = _stem(image.name)
        label, mask = base / "label" / f"{stem}.jpg", base / "mask" / f"{stem}.jpg"
        for needed in (label, mask):
            if not needed.is_file():
                raise LayoutError(f"{needed}: missing (needed for {image})")
        samples.append(RemovalSample(stem, image, label, mask))
    return samples


def _read_split_json(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise LayoutError(f"{path}: split file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LayoutError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise LayoutError(f"{path}: expected an object of name lists, e.g. {{\"train\": [...], \"test\": [...]}}")
    return data


def segmentation_samples(data_root: str | Path, split: str) -> list[SegmentationSample]:
    """TextSeg samples of `split` ("train", "val", "test") listed in split.json, sorted by name."""
    _check_split(split, SEGMENTATION_SPLITS)
    base = Path(data_root) / SEGMENTATION_DIR
    names = _read_split_json(base / "split.json").get(split, [])
    samples = []
    for name in sorted(str(n) for n in names):
        stem = _stem(name)
        image, label = base / "image" / f"{stem}.jpg", base / "semantic_label" / f"{stem}{TEXTSEG_LABEL_SUFFIX}.png"
        for needed in (image, label):
            if not needed.is_file():
                raise LayoutError(f"{needed}: missing (listed in {base / 'split.json'} under {split!r})")
        samples.append(SegmentationSample(stem, image, label))
    return samples


def tampering_samples(data_root: str | Path, split: str) -> list[TamperingSample]:
    """Tampered-IC13 samples of <root>/TamperedTextDetection/Tampered-IC13/<split>_{img,gt}."""
    _check_split(split, SPLITS)
    base = Path(data_root) / TAMPERING_DIR
    samples = []
    for image in _images_in(base / f"{split}_img"):
        stem = _stem(image.name)
        gt = base / f"{split}_gt" / f"{stem}.txt"
        if not gt.is_file():
            raise LayoutError(f"{gt}: missing (needed for {image})")
        edits = base / f"{split}_edits" / f"{stem}.json"
        samples.append(TamperingSample(stem, image, gt, edits if edits.is_file() else None))
    return samples


# Each task's sample reader: (data root, split) -> samples.
SAMPLE_READERS = {Task.TEXT_REMOVAL: removal_samples, Task.TEXT_SEGMENTATION: segmentation_samples,
                  Task.TAMPERED_TEXT_DETECTION: tampering_samples}


def task_samples(task: Task, data_root: str | Path, split: str) -> list:
    """The samples of `task`'s layout and `split` under `data_root` (`removal_samples`, ...)."""
    return SAMPLE_READERS[Task.parse(task)](data_root, split)


def available_tasks(data_root: str | Path) -> list[Task]:
    """Tasks whose benchmark folder exists under `data_root`, in prompt-index order."""
    root = Path(data_root)
    return [task for task in sorted(TASK_DIRS) if (root / TASK_DIRS[task]).is_dir()]


# --------------------------------------------------------------------------------------------
# Sample writers (`upocr synth`): each task's files where and as its reader above reads them
# --------------------------------------------------------------------------------------------

MASK_JPEG_QUALITY = 95  # removal masks: near-lossless, so the reader's threshold sees clean edges


@dataclass(frozen=True)
class RemovalPixels:
    """A text-removal sample to write: (H, W, 3) uint8 input, text-free label and mask (white
    background, black text), input and label saved at JPEG `quality`."""

    image: np.ndarray
    label: np.ndarray
    mask: np.ndarray
    quality: int


@dataclass(frozen=True)
class SegmentationPixels:
    """A text-segmentation sample to write: (H, W, 3) uint8 input saved at JPEG `quality`, and its
    (H, W) uint8 TextSeg label (TEXTSEG_VALUES)."""

    image: np.ndarray
    label: np.ndarray
    quality: int


@dataclass(frozen=True)
class TamperingPixels:
    """A tampered-text sample to write: (H, W, 3) uint8 image saved at JPEG `quality` (None: lossless,
    PNG), and one (x1, y1, x2, y2, label) box per word (corners inclusive; label REAL_TEXT or TAMPERED_TEXT)."""

    image: np.ndarray
    quality: int | None
    boxes: list[tuple[int, int, int, int, int]]
    edits: dict | None = None  # JSON-ready record of the forgery (`read_tampering_edits`), None: none written


def write_removal_sample(root: str | Path, split: str, name: str, sample: RemovalPixels) -> None:
    _check_split(split, SPLITS)
    base = Path(root) / REMOVAL_DIR / split
    write_image(base / "image" / f"{name}.jpg", sample.image, quality=sample.quality)
    write_image(base / "label" / f"{name}.jpg", sample.label, quality=sample.quality)
    write_image(base / "mask" / f"{name}.jpg", sample.mask, quality=MASK_JPEG_QUALITY)


def write_segmentation_sample(root: str | Path, split: str, name: str, sample: SegmentationPixels) -> None:
    """Image and label; the name joins `split` in split.json through `add_to_textseg_split`."""
    _check_split(split, SEGMENTATION_SPLITS)
    base = Path(root) / SEGMENTATION_DIR
    write_image(base / "image" / f"{name}.jpg", sample.image, quality=sample.quality)
    write_image(base / "semantic_label" / f"{name}{TEXTSEG_LABEL_SUFFIX}.png", sample.label)


def write_tampering_sample(root: str | Path, split: str, name: str, sample: TamperingPixels) -> None:
    _check_split(split, SPLITS)
    base = Path(root) / TAMPERING_DIR
    if sample.quality is None:
        write_image(base / f"{split}_img" / f"{name}.png", sample.image)
    else:
        write_image(base / f"{split}_img" / f"{name}.jpg", sample.image, quality=sample.quality)
    with atomic_output(base / f"{split}_gt" / f"{name}.txt") as tmp:
        tmp.write_text("".join(f"{x1},{y1},{x2},{y2},{label}\n" for x1, y1, x2, y2, label in sample.boxes),
                       encoding="utf-8")
    if sample.edits is not None:
        write_json(base / f"{split}_edits" / f"{name}.json", sample.edits)


# Each task's sample writer: (data root, split, name, pixels) -> the files its reader reads.
SAMPLE_WRITERS: dict[Task, Callable] = {Task.TEXT_REMOVAL: write_removal_sample,
                                        Task.TEXT_SEGMENTATION: write_segmentation_sample,
                                        Task.TAMPERED_TEXT_DETECTION: write_tampering_sample}


def sample_writer(task: Task | str | int) -> Callable:
    """`task`'s writer in SAMPLE_WRITERS; ValueError for a task without one."""
    task = Task.parse(task)
    if task not in SAMPLE_WRITERS:
        raise ValueError(f"no sample writer for {task.title} (add one to data/layouts.py SAMPLE_WRITERS)")
    return SAMPLE_WRITERS[task]


def write_json(path: str | Path, data: dict) -> None:
    """Indented UTF-8 JSON, written atomically (split.json, synth-manifest.json)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def add_to_textseg_split(root: str | Path, split: str, names: list[str], val_every: int) -> None:
    """List `names` in <root>'s TextSeg split.json: under "test" for the test split; for train, every
    `val_every`-th name under "val" and the rest under "train" (names already listed stay put)."""
    path = Path(root) / SEGMENTATION_DIR / "split.json"
    data = _read_split_json(path) if path.is_file() else {}
    for key in SEGMENTATION_SPLITS:
        data.setdefault(key, [])
    for index, name in enumerate(names):
        key = split if split == "test" else ("val" if index % val_every == val_every - 1 else "train")
        if name not in data[key]:
            data[key].append(name)
    write_json(path, data)


# --------------------------------------------------------------------------------------------
# Label readers
# --------------------------------------------------------------------------------------------


def _open(path: str | Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise LayoutError(f"{path}: file not found") from None
    except OSError as error:
        raise LayoutError(f"{path}: not a readable image ({error})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header only (no decoding): the cheap check before training."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise LayoutError(f"{path}: file not found") from None
    except (OSError, Image.DecompressionBombError) as error:
        raise LayoutError(f"{path}: not a readable image ({error})") from None


# A label or mask may differ from its image by this much per side and still be resized onto it: a few
# real SCUT-EnsText pairs are off by a pixel or two (rounding when the dataset was made). More than
# max(4 px, 2 %) is not rounding but another picture (or a broken file), and training on it would be silent garbage.
SIZE_SLACK_PX, SIZE_SLACK_FRACTION = 4, 0.02


def check_aligned(path: str | Path, size: tuple[int, int], image: str | Path, image_size: tuple[int, int], *,
                  slack: bool = False) -> None:
    """LayoutError naming both files unless `size` equals `image_size` (or, with `slack`, is within
    SIZE_SLACK_PX / SIZE_SLACK_FRACTION of it on each side)."""
    if size == image_size:
        return
    if slack and all(abs(a - b) <= max(SIZE_SLACK_PX, SIZE_SLACK_FRACTION * b) for a, b in zip(size, image_size)):
        return
    raise LayoutError(f"{path}: size {size[0]}x{size[1]} differs from {image} {image_size[0]}x{image_size[1]}")


def read_rgb(path: str | Path) -> Image.Image:
    return _open(path).convert("RGB")


def read_removal_mask(path: str | Path) -> np.ndarray:
    """(H, W) uint8, 1 = non-text, 0 = text. PIL convert('1') (Floyd-Steinberg) like the original."""
    return np.asarray(_open(path).convert("1"), dtype=np.uint8)


def read_segmentation_label(path: str | Path) -> np.ndarray:
    """(H, W) uint8: 1 text (100), 0 background and word effects (0, 200), 255 ignore (255)."""
    raw = np.asarray(_open(path).convert("L"))
    label = np.zeros(raw.shape, np.uint8)
    label[raw == TEXTSEG_TEXT] = 1
    label[raw == TEXTSEG_IGNORE] = IGNORE_CLASS
    return label


def read_tampering_boxes(gt_path: str | Path) -> list[tuple[int, int, int, int, int]]:
    """(x1, y1, x2, y2, label) per non-empty line; label must be 1 (real) or 2 (tampered)."""
    path = Path(gt_path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise LayoutError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise LayoutError(f"{path}: not a text file") from None
    boxes = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            x1, y1, x2, y2, label = (int(round(float(f))) for f in fields[:5])
        except ValueError:
            raise LayoutError(f"{path}:{number}: expected 'x1,y1,x2,y2,label', got {line.strip()!r}") from None
        if len(fields) < 5:
            raise LayoutError(f"{path}:{number}: expected 'x1,y1,x2,y2,label', got {line.strip()!r}")
        if label not in (REAL_TEXT, TAMPERED_TEXT):
            raise LayoutError(f"{path}:{number}: label must be 1 (real) or 2 (tampered), got {label}")
        boxes.append((x1, y1, x2, y2, label))
    return boxes


def read_tampering_edits(path: str | Path, boxes: int) -> dict:
    """A synthetic forgery's record (`upocr.data.synth.tampering`): {"photo", "after_edits", "saved", "words"},
    "words" holding one entry per box of its gt file (None for a real word, else {"kind": ...}); `boxes`: how
    many boxes that file has."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LayoutError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LayoutError(f"{path}: not a JSON record ({error})") from None
    words = record.get("words") if isinstance(record, dict) else None
    if not isinstance(words, list) or len(words) != boxes:
        count = len(words) if isinstance(words, list) else "no"
        raise LayoutError(f"{path}: expected a record with one 'words' entry per box ({boxes}), got {count}")
    return record


def read_tampering_label(gt_path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 class map: 0 background, 1 real, 2 tampered; boxes filled in file order
    (corners inclusive, later boxes on top), like the original's cv2.rectangle segmentation map."""
    return tampering_classes(read_tampering_boxes(gt_path), size)


def tampering_classes(boxes: Sequence[tuple[int, int, int, int, int]], size: tuple[int, int]) -> np.ndarray:
    """`read_tampering_label`'s class map from boxes already read."""
    height, width = size
    classes = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2, label in boxes:
        cv2.rectangle(classes, (x1, y1), (x2, y2), int(label), thickness=-1)
    return classes
