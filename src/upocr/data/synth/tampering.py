"""Tampered copies of a rendered scene, made the way a forger edits a photo.

The scene's image is first JPEG-compressed (the "original photo"). For each word chosen for
tampering, the word is erased (either OpenCV inpainting, or the true background "regenerated"
under it) and a different word of about the same length is drawn in its place with the same warp,
the same or a near font (another weight of the family), nearly the same size and colour, and its
own, slightly different blur and noise. The file is compressed again when written, so real text
carries double-compression and the scene's blur while tampered text does not: the traces real
tampering detectors learn from. Every word is labelled 1 (real) or 2 (tampered) with its
axis-aligned box.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import cv2
import numpy as np

from upocr.data.synth import fonts, text
from upocr.data.synth.render import Scene, box_of, composite, draw_word_layers, fill_polygons

REAL, TAMPERED = 1, 2


@dataclass
class TamperedScene:
    image: np.ndarray  # (H, W, 3) uint8
    boxes: list[tuple[int, int, int, int]]  # x1, y1, x2, y2 (inclusive), one per word
    labels: list[int]  # 1 real, 2 tampered


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].copy()


def tamper_scene(rng: np.random.Generator, scene: Scene, *, tamper_probability: float = 0.92, methods: str = "v1",
                 options=None) -> TamperedScene:
    h, w = scene.fill.shape
    photo = jpeg_roundtrip(scene.image, scene.degradation.jpeg_quality)
    words = scene.words
    if not words:
        return TamperedScene(photo, [], [])
    chosen: set[int] = set()
    if rng.random() < tamper_probability:
        count = int(rng.integers(1, max(1, int(np.ceil(len(words) * 0.5))) + 1))
        chosen = {int(i) for i in rng.choice(len(words), size=count, replace=False)}
    boxes = [wd.box for wd in words]
    labels = [TAMPERED if i in chosen else REAL for i in range(len(words))]
    if not chosen:
        return TamperedScene(photo, boxes, labels)

    # 1. Erase the chosen words.
    erase = fill_polygons([words[i].polygon for i in sorted(chosen)], (h, w), 255)
    if rng.random() < 0.5:
        radius = int(rng.integers(2, 6))
        out = cv2.inpaint(photo, erase, radius, cv2.INPAINT_TELEA if rng.random() < 0.5 else cv2.INPAINT_NS)
    else:
        clean = jpeg_roundtrip(scene.background, scene.degradation.jpeg_quality)
        # A regenerated background rarely matches perfectly: a faint brightness/colour offset.
        clean = np.clip(clean.astype(np.float32) + rng.normal(0, 3, 3), 0, 255).astype(np.uint8)
        out = np.where(erase[..., None] > 0, clean, photo)
    canvas = out.astype(np.float32)

    # 2. Draw replacement words, each with its own degradation.
    illumination = scene.degradation.illumination
    for i in sorted(chosen):
        word = words[i]
        block = scene.blocks[word.block]
        style = copy.copy(block.style)
        if rng.random() < 0.4:
            near = fonts.near_fonts(style.font)
            style.font = near[int(rng.integers(len(near)))]
        new_text = text.similar_word(rng, word.script, word.text)
        if not fonts.covers(style.font, new_text):
            new_text, style.font = text.similar_word(rng, word.script, word.text), block.style.font
            if not fonts.covers(style.font, new_text):
                new_text = word.text[::-1]  # same glyphs, different word
        # Fit the new word to the old width (a forger matches the box), within +-15 % of the size.
        old_width = fonts.load_font(block.style.font.path, block.style.size).getlength(word.text)
        new_width = fonts.load_font(style.font.path, style.size).getlength(new_text)
        scale = np.clip(old_width / max(new_width, 1.0), 0.85, 1.15) * rng.uniform(0.97, 1.03)
        style.size = max(6, int(round(style.size * scale)))
        jitter = rng.normal(0, 8, 3).astype(np.float32)
        centre = np.clip(np.round(word.polygon.mean(0)).astype(int), 0, [w - 1, h - 1])
        light = 1.0 if illumination is None else float(illumination[centre[1], centre[0], 0])
        style.fill = np.clip((style.fill + jitter) * light, 0, 255).astype(np.float32)
        if style.fill_bottom is not None:
            style.fill_bottom = np.clip((style.fill_bottom + jitter) * light, 0, 255).astype(np.float32)
        if style.stroke is not None:
            style.stroke = np.clip(style.stroke * light, 0, 255).astype(np.float32)
        layers = draw_word_layers(style, [(new_text, word.origin)], block.geometry.layer_size)
        warped, region = block.geometry.warp(layers, (h, w))
        if warped.size == 0:
            continue
        sigma = scene.degradation.blur_sigma * rng.uniform(0.0, 0.8)
        if sigma > 0.2:
            warped[..., :3] = cv2.GaussianBlur(np.ascontiguousarray(warped[..., :3]), (0, 0), sigma)
        coverage = np.maximum(warped[..., 1], warped[..., 2])
        patch = canvas[region]
        composite(patch, warped, style)
        if rng.random() < 0.5:  # its own sensor noise, only where the new word is
            noise = rng.standard_normal(patch.shape, dtype=np.float32) * np.float32(rng.uniform(1, 5))
            patch += noise * coverage[..., None]
        ys, xs = np.nonzero(coverage > 0.05)
        ys, xs = ys + region[0].start, xs + region[1].start
        if len(xs):
            x1, y1, x2, y2 = word.box
            drawn = box_of(np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]], np.float32), (h, w))
            boxes[i] = (min(x1, drawn[0]), min(y1, drawn[1]), max(x2, drawn[2]), max(y2, drawn[3]))
    return TamperedScene(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), boxes, labels)
