"""Reading and writing images, the one way the package does it.

`read_image` turns any common image file into an (H, W, 3) uint8 RGB array the way a person expects
to see it (EXIF rotation applied, transparency composited on white, 16-bit scaled to 8-bit) and turns
every kind of bad file into an `ImageError` whose message is one line "<path>: <problem>".
`write_image` writes atomically (no half-written files). `list_images` expands files and folders.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from upocr.utils import atomic_output, printable, special_file_kind

# Refuse images above this many pixels before decoding them (decompression bombs: a few KB of PNG
# can claim 100k x 100k pixels). 100 MP is a 10000 x 10000 photo; raise it with `max_pixels=`.
DEFAULT_MAX_PIXELS = 100_000_000

# Suffixes picked up when a folder is given (case-insensitive). Files named explicitly are always tried.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# JPEG/WebP quality for written pictures (overlays, grids); PNG is lossless anyway.
_LOSSY_QUALITY = 95

# libjpeg cannot store an image with a side longer than this (JPEG_MAX_DIMENSION).
JPEG_MAX_SIDE = 65500


class ImageError(ValueError):
    """A file that cannot be used as an image. The message is one line: "<path>: <problem>"."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{printable(self.path)}: {self.problem}")  # even with a newline in the name


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array, upright (EXIF orientation applied).

    Grayscale is repeated to 3 channels, alpha (RGBA, LA, palette transparency) is composited on white,
    16-bit and float images are scaled to 0..255, multi-frame files (GIF, TIFF) give their first frame.
    Raises ImageError for a missing, empty, truncated, corrupt or non-image file, and for images with
    more than `max_pixels` pixels (checked from the header, before decoding).
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        # PIL's own bomb guard is a process-wide setting that warns (or raises at 2x); we apply
        # our own limit from the header instead, so silence its warning here only. PIL's other
        # warnings are about the file's metadata (e.g. "Corrupt EXIF data"): the image either
        # reads or fails with an ImageError, so they are only noise on the user's terminal.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        path,
                        f"image too large: {width}x{height} = {width * height:,} pixels "
                        f"(limit {max_pixels:,}; possible decompression bomb)",
                    )
                if width == 0 or height == 0:
                    raise ImageError(path, f"image has no pixels ({width}x{height})")
                image.load()
                array = _to_rgb_array(_upright(image))
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        # PIL refuses before we see the size (its hard limit is 2 x Image.MAX_IMAGE_PIXELS).
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "too many pixels"
        raise ImageError(path, f"image too large: {size} (possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image file (or an unsupported format)") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except MemoryError:
        raise ImageError(path, "not enough memory to decode the image") from None
    except Exception as error:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, zlib.error, ...
        message = str(error) or type(error).__name__
        if "truncated" in message.lower() or isinstance(error, EOFError):
            raise ImageError(path, f"truncated image file ({message})") from None
        raise ImageError(path, f"corrupt or unreadable image ({message})") from None
    return array


def _check_regular_file(path: Path) -> None:
    """Refuse what cannot be an image file before opening it (opening a FIFO would block)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as error:
        raise ImageError(path, error.strerror or str(error)) from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(path, "is a folder, not an image file")
    kind = special_file_kind(info.st_mode)
    if kind is not None:
        raise ImageError(path, f"not a regular file ({kind})")
    if info.st_size == 0:
        raise ImageError(path, "empty file")


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored rather than failing the image."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF only loses the rotation
        return image


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> contiguous (H, W, 3) uint8 RGB."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")).copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _high_depth_to_uint8(np.asarray(image), mode)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode != "RGB":
        image = image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(image).copy()


def _high_depth_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel 16-bit / 32-bit int / float image to uint8.

    16-bit files use their full 0..65535 range. 'I' (32-bit int) is read as 16-bit data unless every
    value already fits 0..255 (PIL opens some 8-bit-valued files as 'I'). 'F' is read as 0..1 when it
    fits, else clipped to 0..255.
    """
    values = values.astype(np.float64)
    if mode == "F":
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        values = np.nan_to_num(values) * scale
    elif mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values / 257.0  # 65535 -> 255
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def write_image(path: str | os.PathLike, array: np.ndarray, *, quality: int = _LOSSY_QUALITY,
                replace: bool = True) -> Path:
    """Write an (H, W, 3) RGB or (H, W) grey uint8 array (bool -> 0/255); format from the suffix; atomic.

    JPEG/WebP are written at `quality` (default 95). The file appears complete or not at all. With
    `replace=False` an existing file (even one created by another process meanwhile) raises
    `OutputExistsError`.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise TypeError(f"write_image expects uint8 (or bool) pixels, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
        raise ValueError(f"write_image expects (H, W) or (H, W, 3) pixels, got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"{path}: unknown image suffix {path.suffix!r}; use .png, .jpg, .webp, .bmp or .tif")
    if image_format == "JPEG" and max(array.shape[:2]) > JPEG_MAX_SIDE:
        raise ValueError(f"{path}: JPEG cannot store a side over {JPEG_MAX_SIDE} px (image {array.shape[1]}x{array.shape[0]}); use .png")
    options = {"quality": int(quality)} if image_format in ("JPEG", "WEBP") else {}
    with atomic_output(path, replace=replace) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format=image_format, **options)
    return path


def write_text(path: str | os.PathLike, text: str, *, replace: bool = True) -> Path:
    """Write a UTF-8 text file atomically (`upocr.utils.atomic_output`): never half-written; with
    `replace=False` an existing file raises `OutputExistsError`, as `write_image`."""
    path = Path(path)
    with atomic_output(path, replace=replace) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def list_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a list of image paths.

    Folders are searched recursively for files with an image suffix (sorted, hidden files skipped).
    Anything else is returned as given, even a missing path or a non-image, so that reading it reports
    the problem for that one input instead of stopping the whole call. Duplicates are dropped.
    """
    return [path for path, _ in expand_inputs(inputs)]


def expand_inputs(
    inputs: Iterable[str | os.PathLike], *, on_error: Callable[[Path, OSError], None] | None = None,
    skip: str | os.PathLike | None = None,
) -> list[tuple[Path, Path | None]]:
    """Like `list_images`, but each path comes with the folder argument it was found in (None for a
    path given directly), so that outputs can mirror the input folder structure.

    A folder that cannot be listed (e.g. permission denied) is passed to `on_error(folder, error)`
    and skipped; without `on_error` it is skipped silently. The folder `skip` (e.g. the output folder,
    when it lies inside an input folder) is not searched.
    """
    skipped = _resolved(Path(skip)) if skip is not None else None
    found: list[tuple[Path, Path | None]] = []
    for item in inputs:
        item = Path(item)
        if _is_folder(item):
            found.extend((path, item) for path in _images_below(item, on_error, skipped))
        else:
            found.append((item, None))
    unique: dict[Path, tuple[Path, Path | None]] = {}
    for path, root in found:
        unique.setdefault(path.resolve(), (path, root))
    return list(unique.values())


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # e.g. its parent is unreadable: reading it as a file reports the problem
        return False


def _resolved(path: Path) -> Path | None:
    """`path.resolve()`, or None where it cannot be (a symlink loop: RuntimeError or OSError by version)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def _images_below(folder: Path, on_error: Callable[[Path, OSError], None] | None, skip: Path | None = None) -> list[Path]:
    """Image files below `folder`, sorted; hidden files and folders skipped, and the folder `skip` (resolved);
    symlinked folders not followed (no cycles). os.walk, unlike Path.rglob, reports the folders it cannot list."""

    def failed(error: OSError) -> None:
        if on_error is not None:
            on_error(Path(error.filename) if error.filename else folder, error)

    def searched(parent: str, name: str) -> bool:
        # a real folder resolves to its own name (symlinked ones are not entered anyway): resolve only those
        return not name.startswith(".") and (skip is None or name != skip.name or _resolved(Path(parent, name)) != skip)

    images: list[Path] = []
    for parent, folders, files in os.walk(folder, onerror=failed):
        folders[:] = [name for name in folders if searched(parent, name)]
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(parent, name)
            try:
                if path.is_file():  # follows a symlink to a file; not a FIFO, socket or dangling link
                    images.append(path)
            except OSError as error:
                failed(error)
    return sorted(images)
