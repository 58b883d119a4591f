"""What a synthetic scene is made of, and its exact ground truth.

A scene is a background (photo or procedural), text blocks drawn on top (font, size, colour, stroke,
shadow, rotation, perspective, curved baseline, several lines: `blocks.py` places them, `geometry.py`
warps them), then photometric degradations applied identically to the composite and to the text-free
background (illumination, blur, noise; JPEG happens when files are written). Because both go through the
same operations with the same random field, the text-free image differs from the image only where text
(or its blur footprint) is.

Every block remembers how it was drawn (style, layer, warp) so `tampering.py` can re-render a word in
the same place looking like its neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageDraw

from upocr.data.layouts import TEXTSEG_EFFECT, TEXTSEG_IGNORE, TEXTSEG_TEXT
from upocr.data.synth import fonts
from upocr.data.synth.geometry import BlockGeometry, fill_polygons

Typeface = tuple[fonts.FontSpec, int]  # a font file and its size in pixels


# --------------------------------------------------------------------------------------------
# Descriptions of what was drawn
# --------------------------------------------------------------------------------------------


@dataclass
class TextStyle:
    font: fonts.FontSpec
    size: int
    fill: np.ndarray  # RGB float
    fill_bottom: np.ndarray | None = None  # vertical gradient fill end colour
    stroke_width: int = 0
    stroke: np.ndarray | None = None
    shadow_offset: tuple[float, float] | None = None
    shadow_blur: float = 0.0
    shadow_opacity: float = 0.0
    shadow_colour: np.ndarray | None = None

    def margin(self, blur_reach: float) -> int:
        """Pixels around a glyph box that may differ from the background (stroke, shadow, blur)."""
        extra = self.stroke_width
        if self.shadow_offset is not None:
            extra += int(math.ceil(max(abs(self.shadow_offset[0]), abs(self.shadow_offset[1])) + 3 * self.shadow_blur))
        return extra + 2 + int(math.ceil(blur_reach))


@dataclass
class Word:
    text: str
    script: str
    block: int
    origin: tuple[float, float]  # left-baseline anchor in layer coordinates
    local_box: tuple[float, float, float, float]  # x0, y0, x1, y1 in layer coords (incl. effects + margin)
    polygon: np.ndarray  # (N, 2) float image coordinates
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 inclusive, clipped to the image
    typeface: Typeface | None = None  # (font, size) when its line's differ from the block's style


@dataclass
class Block:
    style: TextStyle
    geometry: BlockGeometry


@dataclass
class Degradation:
    """Photometric degradations shared by the image and its text-free twin."""

    illumination: np.ndarray | None  # (H, W, 1) multiplicative field
    blur_sigma: float
    motion_kernel: np.ndarray | None
    noise: np.ndarray | None  # (H, W, 3) additive field
    jpeg_quality: int
    # (H, W, 3) shot-noise field: adds field * sqrt(signal), so it differs only where the signal does.
    shot_noise: np.ndarray | None = None

    @property
    def reach(self) -> float:
        """How far (pixels) blurring carries a change: word boxes are grown by this much."""
        motion = 0.0 if self.motion_kernel is None else self.motion_kernel.shape[0] / 2
        return 3 * self.blur_sigma + motion

    def apply(self, image: np.ndarray) -> np.ndarray:
        out = image
        if self.illumination is not None:
            out = out * self.illumination
        if self.blur_sigma > 0:
            out = cv2.GaussianBlur(out, (0, 0), self.blur_sigma)
        if self.motion_kernel is not None:
            out = cv2.filter2D(out, -1, self.motion_kernel)
        if self.noise is not None:
            out = out + self.noise
        if self.shot_noise is not None:
            out = out + self.shot_noise * np.sqrt(np.clip(out, 0, 255))
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8, degraded composite
    background: np.ndarray  # (H, W, 3) uint8, same degradations, no text
    clean_background: np.ndarray  # (H, W, 3) float32, before degradations (for re-rendering)
    fill: np.ndarray  # (H, W) float32 glyph coverage (before blur)
    effect: np.ndarray  # (H, W) float32 stroke/shadow coverage (before blur)
    words: list[Word]
    blocks: list[Block]
    degradation: Degradation
    split: str = "train"
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Colours, styles, glyph layers
# --------------------------------------------------------------------------------------------


def luminance(colour: np.ndarray) -> float:
    return float(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])


def contrasting_colour(rng: np.random.Generator, against: np.ndarray, min_contrast: float) -> np.ndarray:
    """A random colour whose luminance differs from `against` by at least `min_contrast`."""
    colour = rng.uniform(0, 255, 3)
    if rng.random() < 0.45:  # many real texts are near-black or near-white
        colour = np.full(3, rng.uniform(0, 40) if rng.random() < 0.6 else rng.uniform(215, 255)) + rng.normal(0, 6, 3)
    colour = np.clip(colour, 0, 255)
    bg = luminance(against)
    if abs(luminance(colour) - bg) < min_contrast:
        # Move towards black or white (whichever side has room) until the contrast is reached.
        target = np.zeros(3) if bg > 127 else np.full(3, 255.0)
        if (bg > 127 and bg < min_contrast) or (bg <= 127 and 255 - bg < min_contrast):
            target = 255.0 - target
        lum_c, lum_t = luminance(colour), luminance(target)
        want = bg - min_contrast if lum_t < bg else bg + min_contrast
        t = np.clip((want - lum_c) / (lum_t - lum_c), 0, 1) if lum_t != lum_c else 1.0
        colour = colour + t * (target - colour)
    return np.clip(colour, 0, 255).astype(np.float32)


def random_style(rng: np.random.Generator, font: fonts.FontSpec, size: int, bg_colour: np.ndarray) -> TextStyle:
    contrast = rng.uniform(30, 60) if rng.random() < 0.1 else rng.uniform(70, 220)
    if size < 20:  # small print is only legible (and only labelled sensibly) with real contrast
        contrast = max(contrast, 100.0)
    fill = contrasting_colour(rng, bg_colour, contrast)
    style = TextStyle(font=font, size=size, fill=fill)
    if rng.random() < 0.1:
        style.fill_bottom = np.clip(fill + rng.normal(0, 50, 3), 0, 255).astype(np.float32)
    if rng.random() < 0.22 and size >= 14:
        style.stroke_width = max(1, int(round(size * rng.uniform(0.03, 0.1))))
        style.stroke = contrasting_colour(rng, fill, rng.uniform(60, 200))
    if rng.random() < 0.18 and size >= 12:
        angle = rng.uniform(0, 2 * np.pi)
        distance = size * rng.uniform(0.03, 0.1) + 1
        style.shadow_offset = (float(distance * np.cos(angle)), float(distance * np.sin(angle)))
        style.shadow_blur = float(rng.uniform(0, size * 0.06))
        style.shadow_opacity = float(rng.uniform(0.45, 0.9))
        style.shadow_colour = np.clip(rng.uniform(0, 60, 3), 0, 255).astype(np.float32)
    return style


def draw_word_layers(style: TextStyle, words: list[tuple[str, tuple[float, float]]],
                     layer_size: tuple[int, int],
                     typefaces: list[Typeface] | None = None) -> np.ndarray:
    """(h, w, 4) float32 layer stack in [0, 1]: glyph fill, fill+stroke ('body'), shadow coverage, and
    the layer's vertical position (for gradient fills, so the gradient follows the block's warp).
    `typefaces`: (font, size) per word (default: the style's for all)."""
    h, w = layer_size
    faces = typefaces or [(style.font, style.size)] * len(words)
    word_fonts = [fonts.load_font(spec.path, size) for spec, size in faces]
    fill_img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(fill_img)
    for (word, origin), font in zip(words, word_fonts):
        draw.text(origin, word, font=font, fill=255, anchor="ls")
    fill = np.asarray(fill_img, np.float32) / 255.0
    if style.stroke_width > 0:
        body_img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(body_img)
        for (word, origin), font in zip(words, word_fonts):
            draw.text(origin, word, font=font, fill=255, anchor="ls", stroke_width=style.stroke_width, stroke_fill=255)
        body = np.maximum(np.asarray(body_img, np.float32) / 255.0, fill)
    else:
        body = fill
    shadow = np.zeros_like(fill)
    if style.shadow_offset is not None:
        dx, dy = style.shadow_offset
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        shadow = cv2.warpAffine(body, shift, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        if style.shadow_blur > 0.3:
            shadow = cv2.GaussianBlur(shadow, (0, 0), style.shadow_blur)
        shadow = shadow * style.shadow_opacity
    ramp = np.broadcast_to(np.linspace(0, 1, h, dtype=np.float32)[:, None], (h, w))
    return np.ascontiguousarray(np.stack([fill, body, shadow, ramp], axis=-1))


def composite(base: np.ndarray, warped: np.ndarray, style: TextStyle) -> np.ndarray:
    """Alpha-composite shadow, stroke then fill of one block onto a float (h, w, 3) image (or the view
    of the region the warped stack covers), in place."""
    fill, body, shadow = warped[..., 0:1], warped[..., 1:2], warped[..., 2:3]
    if style.shadow_offset is not None:
        base *= 1 - shadow
        base += shadow * style.shadow_colour
    if style.stroke_width > 0:
        base *= 1 - body
        base += body * style.stroke
    if style.fill_bottom is not None:
        ramp = warped[..., 3:4]
        colour = style.fill * (1 - ramp) + style.fill_bottom * ramp
    else:
        colour = style.fill
    base *= 1 - fill
    base += fill * colour
    return base


# --------------------------------------------------------------------------------------------
# Ground truth derived from a scene
# --------------------------------------------------------------------------------------------


def textseg_label(scene: Scene) -> np.ndarray:
    """(H, W) uint8 TextSeg label: 100 glyph (coverage >= 0.5), 200 word effect (stroke/shadow
    coverage >= 0.5 off the glyph), 255 ignore (anti-aliased glyph fringe, coverage in [0.15, 0.5)
    and not an effect), 0 background."""
    label = np.zeros(scene.fill.shape, np.uint8)
    label[(scene.fill >= 0.15) & (scene.fill < 0.5) & (scene.effect < 0.5)] = TEXTSEG_IGNORE
    label[(scene.effect >= 0.5) & (scene.fill < 0.5)] = TEXTSEG_EFFECT
    label[scene.fill >= 0.5] = TEXTSEG_TEXT
    return label


def removal_mask(scene: Scene) -> np.ndarray:
    """(H, W, 3) uint8 SCUT-EnsText-style mask: white background, word polygons black."""
    words = fill_polygons([wd.polygon for wd in scene.words], scene.fill.shape)
    mask = np.where(words[..., None] > 0, 0, 255).astype(np.uint8)
    return np.repeat(mask, 3, axis=2)
