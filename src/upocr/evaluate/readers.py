"""The original's file readers: images, labels, masks and prediction files read (and listed) as the
original evaluation code reads them, so that every metric here sees the pixels the original's would.
Each unreadable file is an ImageError (one line naming the file)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from upocr.data.layouts import TEXTSEG_EFFECT, TEXTSEG_IGNORE, TEXTSEG_TEXT, TEXTSEG_VALUES
from upocr.io import ImageError, read_image
from upocr.tasks import decode_tampering, segmentation_probability

# File suffixes the original picks up (case-sensitive, exactly its list; '.Jpg' is not an image to it).
ORIGINAL_IMAGE_SUFFIXES = (".png", ".PNG", ".jpg", ".JPG", ".jpeg", ".JPEG", ".bmp", ".BMP")

# Values only a TextSeg label holds (a 0/255 mask holds 0 and 255, as TextSeg's background and ignore).
TEXTSEG_MARKS = (TEXTSEG_TEXT, TEXTSEG_EFFECT)


def read_rgb_as_original(path: str | os.PathLike) -> Image.Image:
    """Open an image as the original does: PIL `.convert('RGB')` (no EXIF rotation, alpha dropped)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image file (or an unsupported format)") from None
    except Exception as error:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, ...
        raise ImageError(path, f"corrupt or unreadable image ({error or type(error).__name__})") from None


def read_plain(path: str | os.PathLike) -> np.ndarray:
    """A label-like image as stored: (H, W) values for single-channel files (L, P indices, 1 -> 0/255,
    I/I;16 raw), (H, W, 3) uint8 RGB otherwise (via upocr.io.read_image)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in ("L", "P", "I", "I;16", "1") and "transparency" not in image.info:
                image.load()
                if mode == "1":
                    return np.asarray(image.convert("L"))
                return np.asarray(image).copy()
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image file (or an unsupported format)") from None
    except OSError as error:
        raise ImageError(path, f"corrupt or unreadable image ({error})") from None
    return read_image(path)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from the image header, as the original's canvas size (no EXIF rotation: cv2/PIL raw)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError) as error:
        raise ImageError(path, f"cannot read the image size ({error})") from None
    return height, width


def original_file_list(folder: str | os.PathLike) -> list[Path]:
    """The original's list: every file under `folder` (recursive) with one of its suffixes, sorted as
    path strings. Hidden files (e.g. half-written temporaries) are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(
            os.path.join(root, name)
            for name in names
            if name.endswith(ORIGINAL_IMAGE_SUFFIXES) and not name.startswith(".")
        )
    return [Path(p) for p in sorted(found)]


def _grey_label(path: Path) -> np.ndarray | None:
    """(H, W) values of a label-like image (grey stored as RGB is fine); None for a colour image."""
    values = read_plain(path)
    if values.ndim == 3:
        if not (np.array_equal(values[..., 0], values[..., 1]) and np.array_equal(values[..., 0], values[..., 2])):
            return None
        values = values[..., 0]
    return values


def check_textseg_label(path: Path) -> None:
    """Refuse a file that is not a TextSeg label (a removal label, a prediction, a 0/255 mask): scoring
    against one gives meaningless numbers. A label holding only background and ignore (255) values is
    a 0/255 mask unless its folder holds TextSeg labels (text 100 or effect 200): then it is a TextSeg
    label whose glyphs are all fringe (tiny text, e.g. `upocr synth --size 64`)."""
    path = Path(path)
    values = _grey_label(path)
    if values is None:  # grey stored as RGB is fine; colour is not a label
        raise ValueError(f"{path}: not a TextSeg label (a colour image; expected grey values 0, 100, 200, 255)")
    found = set(np.unique(values).tolist())
    if not found <= TEXTSEG_VALUES:
        shown = ", ".join(str(v) for v in sorted(found - TEXTSEG_VALUES)[:5])
        raise ValueError(f"{path}: not a TextSeg label (holds {shown}; expected only 0, 100, 200, 255)")
    if TEXTSEG_IGNORE in found and not found & set(TEXTSEG_MARKS) and not folder_holds_textseg_labels(path.parent):
        raise ValueError(f"{path}: a 0/255 mask, not a TextSeg label (no text value 100 in any label of its folder); "
                         "use --gt-format binary")


def folder_holds_textseg_labels(folder: Path) -> bool:
    """Whether any grey image directly in `folder` holds a TextSeg text (100) or effect (200) value
    (read once per folder state: the answer is cached until a file is added, removed or renamed)."""
    folder = Path(folder)
    return _folder_holds_textseg_labels(str(folder.resolve()), folder.stat().st_mtime_ns)


@lru_cache(maxsize=32)
def _folder_holds_textseg_labels(folder: str, modified_ns: int) -> bool:
    for path in sorted(Path(folder).iterdir()):
        if not path.name.endswith(ORIGINAL_IMAGE_SUFFIXES) or path.name.startswith(".") or not path.is_file():
            continue
        try:
            values = _grey_label(path)
        except ImageError:  # an unreadable file is reported when it is scored, not here
            continue
        if values is not None and np.isin(values, TEXTSEG_MARKS).any():
            return True
    return False


def _resize_nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) integer map -> size (H', W') by nearest neighbour (for masks and class maps)."""
    if values.shape[:2] == size:
        return values
    return np.asarray(Image.fromarray(values.astype(np.uint8)).resize((size[1], size[0]), Image.Resampling.NEAREST))


def _raw_to_tensor(raw: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (H, W[, 3]) output image -> float (3, H', W') in [0, 1], bilinear (align_corners=False)
    to the ground-truth size when it differs, as the original resizes its outputs."""
    if raw.ndim == 2:
        raw = np.repeat(raw[:, :, None], 3, axis=2)
    tensor = torch.from_numpy(np.ascontiguousarray(raw[:, :, :3])).permute(2, 0, 1).float().div(255)
    if tuple(tensor.shape[1:]) != size:
        tensor = F.interpolate(tensor[None], size, mode="bilinear", align_corners=False)[0]
    return tensor


def segmentation_prediction(path: str | os.PathLike, size: tuple[int, int], threshold: float | None) -> np.ndarray:
    """Read a segmentation prediction as an (H, W) {0, 1} map at `size`.

    threshold None: the file is a mask, text = value > 127 (channel mean for RGB), nearest-resized.
    threshold t: the file is the model's raw output image: bilinear resize, channel mean of RGB/255 > t
    (`upocr.tasks.segmentation_probability`, the original's rule).
    """
    values = read_plain(path)
    if threshold is None:
        grey = values if values.ndim == 2 else values.mean(axis=2)
        if grey.max(initial=0) > 255:
            raise ImageError(path, "mask values above 255; expected a 0/255 mask")
        return _resize_nearest((grey > 127).astype(np.uint8), size)
    if values.ndim == 2 and values.dtype != np.uint8:
        raise ImageError(path, f"raw outputs must be 8-bit images, got {values.dtype}")
    probability = segmentation_probability(_raw_to_tensor(values, size))
    return (probability > threshold).numpy().astype(np.uint8)


def tampering_prediction(path: str | os.PathLike, size: tuple[int, int], *, pred_format: str = "auto", channel_order: str = "rgb") -> np.ndarray:
    """Read a tampering prediction as an (H, W) class map {0 background, 1 real, 2 tampered} at `size`.

    pred_format 'classes': a class-map image (single channel, or equal channels) with values 0..2,
    nearest-resized. 'raw': the model's output colours (R background, G real, B tampered; channel_order
    'bgr' for files written in the original's visualisation colours), bilinear resize then argmax.
    'auto': a class map when the values fit 0..2 in one (or equal) channel(s), raw otherwise.
    """
    values = read_plain(path)
    grey = values if values.ndim == 2 else (values[:, :, 0] if (values == values[:, :, :1]).all() else None)
    is_classes = grey is not None and grey.max(initial=0) <= 2
    if pred_format == "classes" or (pred_format == "auto" and is_classes):
        if not is_classes:
            raise ImageError(path, "not a class map: expected one channel with values 0 (background), 1 (real), 2 (tampered)")
        return _resize_nearest(grey.astype(np.uint8), size)
    if pred_format not in ("raw", "auto"):
        raise ValueError(f"unknown prediction format {pred_format!r}; expected auto, classes or raw")
    if values.ndim == 2:
        raise ImageError(path, "a raw tampering output must be an RGB image")
    if channel_order == "bgr":
        values = values[:, :, ::-1]
    return decode_tampering(_raw_to_tensor(values, size)).numpy()
