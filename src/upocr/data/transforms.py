"""Paired augmentations of the original's training pipelines (reference sections 3.2-3.3).

A sample is a dict of PIL images: "image" (RGB) plus "label" (removal: RGB text-free image;
segmentation/tampering: 'L' class map with 255 = ignore) and, for removal, "mask" ('L', 1 non-text,
0 text). Geometric transforms apply to every entry; colour jitter to the image only. Randomness
comes from a `random.Random` (DataLoader workers seed the `random` module per worker).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageEnhance

from upocr.tasks import Task

Sample = dict[str, Image.Image]

# What each entry is filled with where rotation or a native window's padding exposes new pixels.
NEW_PIXEL_FILL = {
    Task.TEXT_REMOVAL: {"image": (0, 0, 0), "label": (0, 0, 0), "mask": 1},
    Task.TEXT_SEGMENTATION: {"image": (0, 0, 0), "label": 255},
    Task.TAMPERED_TEXT_DETECTION: {"image": (0, 0, 0), "label": 255},
}


@dataclass(frozen=True)
class Augmentation:
    """The original's per-task training configuration (data_configs/*.yaml)."""

    crop: tuple[float, float, float] | None  # (min ratio, max ratio, probability)
    hflip: float
    jitter: tuple[float, float, float, float, float] | None  # (brightness, contrast, saturation, hue, probability)
    rotate: tuple[float, float] | None  # (max angle, probability)


TRAIN_AUGMENTATION = {
    Task.TEXT_REMOVAL: Augmentation(crop=None, hflip=0.3, jitter=None, rotate=(30, 0.5)),  # crop prob 0.0
    Task.TEXT_SEGMENTATION: Augmentation(crop=(0.7, 1.0, 1.0), hflip=0.3, jitter=(0.5, 0.5, 0.5, 0.5, 0.5),
                                         rotate=(30, 0.5)),
    Task.TAMPERED_TEXT_DETECTION: Augmentation(crop=(0.5, 1.0, 1.0), hflip=0.5, jitter=None, rotate=None),
}


def random_crop(sample: Sample, rng: random.Random, min_ratio: float, max_ratio: float) -> Sample:
    """Independent width/height ratios U(min, max) and a random top-left, same window for all entries."""
    width, height = sample["image"].size
    crop_w = max(1, int(width * rng.uniform(min_ratio, max_ratio)))
    crop_h = max(1, int(height * rng.uniform(min_ratio, max_ratio)))
    left = rng.randint(0, width - crop_w)
    top = rng.randint(0, height - crop_h)
    box = (left, top, left + crop_w, top + crop_h)
    return {key: image.crop(box) for key, image in sample.items()}


def hflip(sample: Sample) -> Sample:
    return {key: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for key, image in sample.items()}


def color_jitter(image: Image.Image, rng: random.Random, brightness: float, contrast: float, saturation: float,
                 hue: float) -> Image.Image:
    """torchvision-style ColorJitter: factors U(max(0, 1-x), 1+x), hue shift U(-h, h), random order."""
    def _brightness(im: Image.Image) -> Image.Image:
        return ImageEnhance.Brightness(im).enhance(rng.uniform(max(0.0, 1 - brightness), 1 + brightness))

    def _contrast(im: Image.Image) -> Image.Image:
        return ImageEnhance.Contrast(im).enhance(rng.uniform(max(0.0, 1 - contrast), 1 + contrast))

    def _saturation(im: Image.Image) -> Image.Image:
        return ImageEnhance.Color(im).enhance(rng.uniform(max(0.0, 1 - saturation), 1 + saturation))

    def _hue(im: Image.Image) -> Image.Image:
        shift = int(round(rng.uniform(-hue, hue) * 255))
        h, s, v = im.convert("HSV").split()
        h = h.point(lambda value: (value + shift) % 256)
        return Image.merge("HSV", (h, s, v)).convert("RGB")

    steps = [_brightness, _contrast, _saturation, _hue]
    rng.shuffle(steps)
    for step in steps:
        image = step(image)
    return image


def rotate(sample: Sample, rng: random.Random, max_angle: float, fills: dict) -> Sample:
    """Angle U(-max, max), expand=True, nearest resampling, per-entry fill (reference 3.3)."""
    angle = rng.uniform(-max_angle, max_angle)
    return {key: image.rotate(angle, resample=Image.Resampling.NEAREST, expand=True, fillcolor=fills[key])
            for key, image in sample.items()}


def native_window(sample: Sample, size: int, fills: dict, rng: random.Random | None = None) -> Sample:
    """A size x size window at the image's own resolution: random where the image is larger (the top-left
    one without `rng`), padded with `fills` where it is smaller. Nothing is resampled, so the traces a
    forger leaves (double JPEG compression, another noise or blur) survive, as they do for images that
    inference runs on native tiles or at the working size."""
    width, height = sample["image"].size
    left = rng.randint(0, width - size) if rng is not None and width > size else 0
    top = rng.randint(0, height - size) if rng is not None and height > size else 0
    window = {}
    for key, image in sample.items():
        part = image.crop((left, top, min(width, left + size), min(height, top + size)))
        if part.size != (size, size):
            canvas = Image.new(image.mode, (size, size), fills[key])
            canvas.paste(part, (0, 0))
            part = canvas
        window[key] = part
    return window


def resize(sample: Sample, size: int) -> Sample:
    """To size x size (aspect not kept): image and RGB labels bicubic, class maps and masks nearest."""
    out = {}
    for key, image in sample.items():
        smooth = key == "image" or (key == "label" and image.mode == "RGB")
        out[key] = image.resize((size, size), Image.Resampling.BICUBIC if smooth else Image.Resampling.NEAREST)
    return out


def augment(sample: Sample, task: Task, rng: random.Random, *, crop: bool = True) -> Sample:
    """The original's training transforms for `task`, in its order (crop, flip, jitter, rotate);
    `crop=False` leaves the random crop out (native-resolution training takes its own window)."""
    config = TRAIN_AUGMENTATION[Task.parse(task)]
    if crop and config.crop is not None and rng.random() < config.crop[2]:
        sample = random_crop(sample, rng, config.crop[0], config.crop[1])
    if rng.random() < config.hflip:
        sample = hflip(sample)
    if config.jitter is not None and rng.random() < config.jitter[4]:
        sample = dict(sample, image=color_jitter(sample["image"], rng, *config.jitter[:4]))
    if config.rotate is not None and rng.random() < config.rotate[1]:
        sample = rotate(sample, rng, config.rotate[0], NEW_PIXEL_FILL[Task.parse(task)])
    return sample
