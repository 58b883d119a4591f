"""Render one synthetic scene with exact ground truth.

A scene is a background (photo or procedural), text blocks drawn on top (font, size, colour, stroke,
shadow, rotation, perspective, curved baseline, several lines), then photometric degradations applied
identically to the composite and to the text-free background (illumination, blur, noise; JPEG happens
when files are written). Because both go through the same operations with the same random field, the
text-free image differs from the image only where text (or its blur footprint) is.

Every block remembers how it was drawn (style, layer, warp) so `tampering.py` can re-render a word in
the same place looking like its neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageDraw

from upocr.data.synth import backgrounds, fonts, text

MIN_FONT_PX = 8


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


class ImageWarp:
    """A warp of the whole image after a block's homography: `forward` moves points (polygons), `maps`
    gives cv2.remap's inverse maps, `apply` warps pixels (layers, backgrounds)."""

    def forward(self, points: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def apply(self, image: np.ndarray, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
        map_x, map_y = self.maps()
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=border, borderValue=0)


@dataclass
class PageCurl(ImageWarp):
    """A bent page (v2 books and receipts): a global warp of the image, applied to the background once
    and to every block through its geometry, so text, labels and polygons bend together.

    Defined in output coordinates (X, Y) <- source (x, y): x = g^-1(X) (a monotone horizontal squeeze),
    y = Y - (a0 + a1 Y / h) q(X) with q(X) = ((X - spine) / w)^2 (lines bend more away from the spine,
    and differently at the top and bottom of the page). The forward map has a closed form, so polygons
    follow the glyphs exactly up to their sampling."""

    hw: tuple[int, int]
    spine: float
    a0: float
    a1: float
    squeeze: float

    def _g(self, x: np.ndarray) -> np.ndarray:
        return x + self.squeeze * np.sin(np.pi * x / self.hw[1])

    def _q(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.spine) / self.hw[1]) ** 2

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.hw
        grid = np.arange(w, dtype=np.float64)
        map_x = np.interp(grid, self._g(grid), grid)  # g is monotone (|squeeze| < w / pi): invert by table
        q = self._q(grid)[None, :]
        Y = np.arange(h, dtype=np.float64)[:, None]
        map_y = Y - (self.a0 + self.a1 * Y / h) * q
        return np.broadcast_to(map_x[None, :], (h, w)).astype(np.float32), map_y.astype(np.float32)

    def forward(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) source points -> (N, 2) output points."""
        X = self._g(points[:, 0])
        q = self._q(X)
        Y = (points[:, 1] + self.a0 * q) / (1 - self.a1 * q / self.hw[0])
        return np.stack([X, Y], 1)



@dataclass
class ArcBend(ImageWarp):
    """One block bent around a circle (v2 badges, seals, logos, round signs): glyphs follow the arc and
    turn with it, as on a real round sign (the sine "curve" of v1 only shifts glyphs up and down).

    Defined in image coordinates around the straight block's centre (cx, cy): a point `u` along the text
    and `v` below its centre line goes to angle u / radius on a circle whose centre lies `radius` below
    (sign +1: the text arches) or above (sign -1: it smiles). Both directions have a closed form, so
    polygons follow the glyphs exactly up to their sampling (same interface as PageCurl)."""

    hw: tuple[int, int]
    cx: float
    cy: float
    radius: float
    sign: int  # +1 arch (circle centre below the text), -1 smile (above)

    def forward(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) straight-block image points -> (N, 2) bent image points."""
        u, v = points[:, 0] - self.cx, points[:, 1] - self.cy
        rho, theta = self.radius - self.sign * v, u / self.radius
        centre_y = self.cy + self.sign * self.radius
        return np.stack([self.cx + rho * np.sin(theta), centre_y - self.sign * rho * np.cos(theta)], 1)

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.hw
        Y, X = np.mgrid[0:h, 0:w].astype(np.float64)
        dx, dy = X - self.cx, self.sign * (self.cy + self.sign * self.radius - Y)
        rho, theta = np.hypot(dx, dy), np.arctan2(dx, dy)
        map_x = self.cx + self.radius * theta
        map_y = self.cy + self.sign * (self.radius - rho)
        # Beyond half a turn the circle folds back onto itself: nothing is drawn there.
        map_x[np.abs(theta) > np.pi * 0.999] = -1e6
        return map_x.astype(np.float32), map_y.astype(np.float32)



@dataclass
class BlockGeometry:
    """Layer (height, width) -> curved layer (vertical sine offsets) -> homography into the image
    (-> page curl or arc, v2)."""

    layer_size: tuple[int, int]
    curve_amplitude: float
    curve_period: float
    curve_phase: float
    homography: np.ndarray  # 3x3, curved-layer pixel coords -> image coords
    page: ImageWarp | None = None  # a page curl or an arc, after the homography

    @property
    def curve_pad(self) -> int:
        return int(math.ceil(abs(self.curve_amplitude))) + 1

    def curve_offset(self, x: np.ndarray) -> np.ndarray:
        if self.curve_amplitude == 0:
            return np.zeros_like(x)
        return self.curve_amplitude * np.sin(2 * np.pi * x / self.curve_period + self.curve_phase)

    def layer_to_image(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) layer points -> (N, 2) image points."""
        points = np.asarray(points, np.float64)
        curved = np.stack([points[:, 0], points[:, 1] + self.curve_pad + self.curve_offset(points[:, 0])], 1)
        flat = cv2.perspectiveTransform(curved[None], self.homography)[0]
        return flat if self.page is None else self.page.forward(flat)

    def outline(self) -> np.ndarray:
        """(N, 2) image points around the warped layer (densely sampled where a warp bends it)."""
        h, w = self.layer_size
        corners = np.float64([[0, 0], [w, 0], [w, h + 2 * self.curve_pad], [0, h + 2 * self.curve_pad]])
        if self.page is not None:  # the outline, densely, so the bent edges are inside the bounds
            t = np.linspace(0, 1, 33)[:, None]
            corners = np.concatenate([a + t * (b - a) for a, b in zip(corners, np.roll(corners, -1, 0))])
        warped = cv2.perspectiveTransform(corners[None], self.homography)[0]
        return warped if self.page is None else self.page.forward(warped)

    def image_bounds(self, out_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) of the warped layer inside the image (end exclusive; may be empty)."""
        warped = self.outline()
        x0, y0 = np.floor(warped.min(0)).astype(int) - 1
        x1, y1 = np.ceil(warped.max(0)).astype(int) + 2
        return max(0, y0), max(0, x0), min(out_hw[0], y1), min(out_hw[1], x1)

    def warp(self, layers: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[slice, slice]]:
        """(h, w, C<=4) float layer stack -> (crop, region): the warped stack only over the image
        region it can touch (compositing a block costs its size, not the image's)."""
        h, w = self.layer_size
        if self.curve_amplitude != 0:
            pad = self.curve_pad
            ys, xs = np.mgrid[0:h + 2 * pad, 0:w].astype(np.float32)
            map_y = ys - pad - self.curve_offset(xs).astype(np.float32)
            layers = cv2.remap(layers, xs, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        else:
            layers = np.pad(layers, ((self.curve_pad, self.curve_pad), (0, 0), (0, 0)))
        y0, x0, y1, x1 = self.image_bounds(out_hw)
        channels = layers.shape[2]
        if self.page is not None and y1 > y0 and x1 > x0:
            full = cv2.warpPerspective(layers, self.homography, (out_hw[1], out_hw[0]), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            curled = self.page.apply(full).reshape(out_hw[0], out_hw[1], channels)
            return np.ascontiguousarray(curled[y0:y1, x0:x1]), (slice(y0, y1), slice(x0, x1))
        if y1 <= y0 or x1 <= x0:
            return np.zeros((0, 0, channels), np.float32), (slice(0, 0), slice(0, 0))
        shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
        crop = cv2.warpPerspective(layers, shift @ self.homography, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return crop.reshape(y1 - y0, x1 - x0, channels), (slice(y0, y1), slice(x0, x1))


@dataclass(frozen=True)
class BlockPlan:
    """How a v2 block is drawn (see `world.py`); v1 blocks have no plan and draw their own choices."""

    font: fonts.FontSpec
    script: str
    size: int  # font size in pixels
    lines: int
    words_per_line: int
    max_width: float  # pixels
    angle: float  # degrees
    perspective: float  # corner jitter as a fraction of the block's width / height (0: none)
    curve: bool = False
    arc: float = 0.0  # degrees of a circle the block's width bends around (+ arch, - smile; 0: straight)
    align: str = "left"
    plate: "Plate | None" = None
    min_contrast: float = 70.0
    page: PageCurl | None = None
    ink: np.ndarray | None = None  # print: this fill colour, and no stroke, shadow or gradient


@dataclass(frozen=True)
class Plate:
    """A sign/label/paper under a block: drawn into the BACKGROUND (the label keeps it), warped with
    the block. `texture_kind` (optional) adds a procedural texture around the colour (paper)."""

    colour: np.ndarray
    padding: int  # pixels around the text
    corner: int  # corner radius
    border: int = 0
    border_colour: np.ndarray | None = None
    texture_kind: int | None = None  # procedural background kind (5: paper)


@dataclass
class Word:
    text: str
    script: str
    block: int
    origin: tuple[float, float]  # left-baseline anchor in layer coordinates
    local_box: tuple[float, float, float, float]  # x0, y0, x1, y1 in layer coords (incl. effects + margin)
    polygon: np.ndarray  # (N, 2) float image coordinates
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 inclusive, clipped to the image


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
# Helpers
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


def _random_style(rng: np.random.Generator, font: fonts.FontSpec, size: int, bg_colour: np.ndarray) -> TextStyle:
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
                     layer_size: tuple[int, int]) -> np.ndarray:
    """(h, w, 4) float32 layer stack in [0, 1]: glyph fill, fill+stroke ('body'), shadow coverage, and
    the layer's vertical position (for gradient fills, so the gradient follows the block's warp)."""
    h, w = layer_size
    font = fonts.load_font(style.font.path, style.size)
    fill_img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(fill_img)
    for word, origin in words:
        draw.text(origin, word, font=font, fill=255, anchor="ls")
    fill = np.asarray(fill_img, np.float32) / 255.0
    if style.stroke_width > 0:
        body_img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(body_img)
        for word, origin in words:
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


def polygon_of(geometry: BlockGeometry, local_box: tuple[float, float, float, float], points: int = 6) -> np.ndarray:
    x0, y0, x1, y1 = local_box
    xs = np.linspace(x0, x1, points)
    outline = np.concatenate([np.stack([xs, np.full(points, y0)], 1), np.stack([xs[::-1], np.full(points, y1)], 1)])
    return geometry.layer_to_image(outline).astype(np.float32)


def box_of(polygon: np.ndarray, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = hw
    x1, y1 = np.floor(polygon.min(0)).astype(int)
    x2, y2 = np.ceil(polygon.max(0)).astype(int)
    return int(np.clip(x1, 0, w - 1)), int(np.clip(y1, 0, h - 1)), int(np.clip(x2, 0, w - 1)), int(np.clip(y2, 0, h - 1))


def fill_polygons(polygons: list[np.ndarray], hw: tuple[int, int], value: int = 1) -> np.ndarray:
    mask = np.zeros(hw, np.uint8)
    for polygon in polygons:  # one call per polygon: a single fillPoly call cancels overlaps (even-odd)
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], value)
    return mask


# --------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------


def _random_degradation(rng: np.random.Generator, hw: tuple[int, int]) -> Degradation:
    h, w = hw
    illumination = None
    if rng.random() < 0.5:
        field = backgrounds._fractal_noise(rng, h, w, octaves=2)
        illumination = (1 + rng.uniform(0.1, 0.45) * (field - 0.5))[..., None].astype(np.float32)
    blur = float(rng.uniform(0.3, 1.2)) if rng.random() < 0.55 else 0.0
    motion = None
    if rng.random() < 0.1:
        length = int(rng.integers(3, 8))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        motion = kernel / max(float(kernel.sum()), 1e-6)
    noise = None
    if rng.random() < 0.6:
        noise = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(1, 7))
    return Degradation(illumination, blur, motion, noise, int(rng.integers(60, 96)))


def _layout_lines(rng: np.random.Generator, script: str, style: TextStyle, font_path: list[fonts.FontSpec],
                  document: bool, max_width: float, plan: BlockPlan | None = None) -> list[list[str]]:
    if plan is not None:
        lines_count, words_max = plan.lines, plan.words_per_line
    else:
        lines_count = int(rng.integers(3, 9)) if document else int(rng.choice([1, 1, 1, 2, 2, 3, 4]))
        words_max = 7 if document else 4
    font = fonts.load_font(style.font.path, style.size)
    lines = []
    for _ in range(lines_count):
        line: list[str] = []
        for _ in range(int(rng.integers(1, words_max + 1))):
            word = text.random_word(rng, script)
            if not fonts.covers(style.font, word):
                continue
            if font.getlength(" ".join(line + [word])) > max_width and line:
                break
            line.append(word)
        if line:
            lines.append(line)
    return lines


def _try_block(rng: np.random.Generator, scene_bg: np.ndarray, occupied: np.ndarray, split: str,
               document: bool, blur_reach: float, block_index: int, size_scale: float,
               plan: BlockPlan | None = None):
    """Choose, lay out and place one block; returns (Block, words, warped layers, region, plate) or
    None or "too-big". `plan` (v2) fixes font, script, size, layout and geometry; else v1 draws them."""
    h, w = occupied.shape
    min_dim = min(h, w)
    if plan is not None:
        font, script = plan.font, plan.script
        size = max(MIN_FONT_PX, int(round(plan.size * size_scale)))
    else:
        font = fonts.fonts_for_split(split)[int(rng.integers(len(fonts.fonts_for_split(split))))]
        if document:
            size = rng.uniform(0.025, 0.05) * min_dim
        else:
            size = math.exp(rng.uniform(math.log(0.03), math.log(0.17))) * min_dim
        size = max(MIN_FONT_PX, int(round(size * size_scale)))
        script = text.choose_script(rng)
        if not fonts.covers(font, text.random_word(rng, script)):
            script = "english"
    # Colour decided against the background's overall colour; refined after placement below.
    global_mean = np.asarray(cv2.mean(scene_bg)[:3], np.float32)
    style = _random_style(rng, font, size, global_mean)
    if plan is not None and plan.ink is not None:
        style.stroke_width, style.stroke, style.shadow_offset, style.fill_bottom = 0, None, None, None
    lines = _layout_lines(rng, script, style, [font], document, max_width=plan.max_width if plan else w * 0.9,
                          plan=plan)
    if not lines:
        return None
    pil_font = fonts.load_font(font.path, size)
    margin = style.margin(blur_reach)
    if plan is not None and (plan.page is not None or plan.arc):
        margin += 1  # the curl or arc resamples once more (bilinear): one more pixel of reach
    plate_pad = 0 if plan is None or plan.plate is None else plan.plate.padding
    pad = margin + 2 + plate_pad
    ascent, descent = pil_font.getmetrics()
    line_height = (ascent + descent) * rng.uniform(1.0, 1.35)
    space = pil_font.getlength(" ") * rng.uniform(1.0, 1.6)
    widths = [sum(pil_font.getlength(wd) for wd in line) + space * (len(line) - 1) for line in lines]
    block_w = max(widths)
    if plan is not None:
        align = plan.align
    else:
        align = rng.choice(["left", "center"]) if not document else "left"
    layer_w = int(math.ceil(block_w + 2 * pad + style.stroke_width * 2))
    layer_h = int(math.ceil(line_height * (len(lines) - 1) + ascent + descent + 2 * pad))
    placed: list[tuple[str, tuple[float, float]]] = []
    for row, (line, width) in enumerate(zip(lines, widths)):
        x = pad + style.stroke_width + ((block_w - width) / 2 if align == "center" else 0)
        y = pad + ascent + row * line_height
        for word in line:
            placed.append((word, (float(x), float(y))))
            x += pil_font.getlength(word) + space
    # Geometry: curve, rotation, perspective, position.
    amplitude = 0.0
    if plan is not None:
        if plan.curve and len(lines) <= 2:
            amplitude = float(rng.uniform(0.05, 0.25) * layer_w * rng.choice([-1, 1]) * 0.3)
    elif not document and rng.random() < 0.15 and len(lines) <= 2:
        amplitude = float(rng.uniform(0.05, 0.25) * layer_w * rng.choice([-1, 1]) * 0.3)
    period = float(layer_w * rng.uniform(1.5, 3.0))
    phase = float(rng.uniform(0, 2 * np.pi))
    r = rng.random()
    if plan is not None:
        angle = plan.angle
    elif document:
        angle = rng.normal(0, 1.5)
    elif r < 0.55:
        angle = rng.normal(0, 3)
    elif r < 0.92:
        angle = rng.uniform(-30, 30)
    else:
        angle = rng.uniform(-90, 90)
    pad_c = int(math.ceil(abs(amplitude))) + 1
    src = np.float32([[0, 0], [layer_w, 0], [layer_w, layer_h + 2 * pad_c], [0, layer_h + 2 * pad_c]])
    centred = src - src.mean(0)
    theta = np.deg2rad(angle)
    rot = np.float32([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    dst = centred @ rot.T
    if plan is not None:
        if plan.perspective > 0:
            # Per axis, relative to that side: a wide one-line sign keeps its height (no degenerate sliver).
            jitter = plan.perspective * np.float32([layer_w, layer_h])
            dst = dst + (rng.uniform(-1, 1, dst.shape) * jitter).astype(np.float32)
    elif rng.random() < 0.35:
        jitter = rng.uniform(0.02, 0.12) * max(layer_w, layer_h)
        dst = dst + rng.uniform(-jitter, jitter, dst.shape).astype(np.float32)
    ext = dst.max(0) - dst.min(0)
    if ext[0] > w - 2 or ext[1] > h - 2:
        return "too-big"
    lo = -dst.min(0)
    hi = np.array([w - 1, h - 1], np.float32) - dst.max(0)
    for _ in range(6):
        centre = rng.uniform(lo, hi).astype(np.float32)
        homography = cv2.getPerspectiveTransform(src, (dst + centre).astype(np.float32))
        bend = plan.page if plan is not None else None
        if plan is not None and plan.arc:  # around the block's centre, its width spanning `arc` degrees
            # (less for short words: a radius under the block's height would fold its inner edge over)
            radius = max(layer_w / math.radians(abs(plan.arc)), float(layer_h))
            bend = ArcBend((h, w), float(centre[0]), float(centre[1]), radius, 1 if plan.arc > 0 else -1)
        geometry = BlockGeometry((layer_h, layer_w), amplitude, period, phase, homography.astype(np.float64),
                                 page=bend)
        if isinstance(bend, ArcBend):  # the bent block must stay whole inside the image
            outline = geometry.outline()
            if outline.min() < 1 or (outline.max(0) > np.array([w - 2, h - 2])).any():
                continue
        # Overlap test on the whole block's outline (cheap); word polygons only once placed.
        if amplitude == 0 and geometry.page is None:
            outline = cv2.perspectiveTransform(src[None].astype(np.float64), geometry.homography)[0]
        else:
            y0, x0, y1, x1 = geometry.image_bounds((h, w))
            outline = np.float64([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        footprint = fill_polygons([outline], (h, w))
        if not np.logical_and(footprint, occupied).any():
            words = []
            for word, origin in placed:
                left, top, right, bottom = pil_font.getbbox(word, anchor="ls", stroke_width=style.stroke_width)
                local = [origin[0] + left - margin, origin[1] + top - margin, origin[0] + right + margin,
                         origin[1] + bottom + margin]
                if style.shadow_offset is not None:
                    dx, dy = style.shadow_offset
                    local = [min(local[0], local[0] + dx), min(local[1], local[1] + dy),
                             max(local[2], local[2] + dx), max(local[3], local[3] + dy)]
                local = (max(local[0], 0.0), max(local[1], 0.0), min(local[2], layer_w), min(local[3], layer_h))
                polygon = polygon_of(geometry, local, points=6 if geometry.page is None else 16)
                words.append(Word(word, script, block_index, origin, local, polygon, box_of(polygon, (h, w))))
            plate = None
            if plan is not None and plan.plate is not None:
                plate = _draw_plate(rng, plan.plate, geometry, (layer_h, layer_w), (h, w))
                local_bg = plate[2]
            else:
                local_bg = np.asarray(cv2.mean(scene_bg, mask=footprint)[:3], np.float32) if footprint.any() else global_mean
            # Re-pick the colour against the actual local background so contrast is as intended.
            recoloured = _random_style(rng, font, size, local_bg)
            if plan is not None and plan.ink is not None:
                recoloured.fill = plan.ink
            if plan is not None and abs(luminance(recoloured.fill) - luminance(local_bg)) < plan.min_contrast:
                recoloured.fill = contrasting_colour(rng, local_bg, plan.min_contrast)
            style.fill, style.fill_bottom = recoloured.fill, (
                None if style.fill_bottom is None else recoloured.fill_bottom)
            if style.stroke_width > 0:
                style.stroke = contrasting_colour(rng, style.fill, rng.uniform(60, 200))
            layers = draw_word_layers(style, placed, (layer_h, layer_w))
            warped, region = geometry.warp(layers, (h, w))
            occupied |= cv2.dilate(footprint, np.ones((3, 3), np.uint8))
            return Block(style, geometry), words, warped, region, plate
    return None


def _draw_plate(rng: np.random.Generator, plate: Plate, geometry: BlockGeometry, layer_hw: tuple[int, int],
                out_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray]:
    """(warped RGBA crop, region, mean colour) of a plate filling the block's layer (rounded corners,
    optional border and paper texture)."""
    lh, lw = layer_hw
    alpha = np.zeros((lh, lw), np.float32)
    r = int(min(plate.corner, lh // 2, lw // 2))
    cv2.rectangle(alpha, (r, 0), (lw - 1 - r, lh - 1), 1.0, -1)
    cv2.rectangle(alpha, (0, r), (lw - 1, lh - 1 - r), 1.0, -1)
    for cx, cy in ((r, r), (lw - 1 - r, r), (r, lh - 1 - r), (lw - 1 - r, lh - 1 - r)):
        cv2.circle(alpha, (cx, cy), r, 1.0, -1, lineType=cv2.LINE_AA)
    if plate.texture_kind is not None:
        texture = backgrounds.procedural_background(rng, lh, lw, kind=plate.texture_kind)
        colour = plate.colour[None, None, :] + texture - texture.mean((0, 1), keepdims=True)
    else:
        colour = np.broadcast_to(plate.colour, (lh, lw, 3)).astype(np.float32)
    colour = np.array(colour, np.float32)
    if plate.border > 0 and plate.border_colour is not None:
        inner = cv2.erode(alpha, np.ones((2 * plate.border + 1,) * 2, np.uint8))
        colour = colour * inner[..., None] + plate.border_colour * (1 - inner[..., None])
    warped, region = geometry.warp(np.dstack([colour / 255.0, alpha]), out_hw)
    return warped, region, plate.colour.astype(np.float32)


def composite_plate(image: np.ndarray, plate: tuple) -> None:
    """Alpha-composite a warped plate (from `_draw_plate`) onto a float image in place."""
    warped, region, _ = plate
    alpha = warped[..., 3:4]
    view = image[region]
    view *= 1 - alpha
    view += alpha * warped[..., :3] * 255.0


def render_classic_scene(rng: np.random.Generator, *, size: tuple[int, int], split: str = "train", options=None) -> Scene:
    """One v1 scene of `size` (height, width) drawn with the split's fonts and photos; `options`
    (`world.SceneOptions`) may add user background photos. `world.render_scene` picks v1 or v2."""
    h, w = size
    if options is not None and options.user_photos:
        clean_bg = backgrounds.random_background(rng, split, h, w, user_photos=options.user_photos,
                                                 user_mix=options.background_mix)
    else:
        clean_bg = backgrounds.random_background(rng, split, h, w)
    degradation = _random_degradation(rng, (h, w))
    document = rng.random() < 0.15
    if document:
        paper = backgrounds.procedural_background(rng, h, w)
        clean_bg = np.clip(clean_bg * 0.15 + np.clip(paper + 120, 0, 255) * 0.85, 0, 255).astype(np.float32)
    canvas = SceneCanvas(clean_bg)
    wanted = int(rng.integers(1, 3)) if document else int(rng.integers(1, 6))
    attempts = 0
    size_scale = 1.0
    while len(canvas.blocks) < wanted and attempts < wanted * 4:
        attempts += 1
        result = _try_block(rng, clean_bg, canvas.occupied, split, document, degradation.reach, len(canvas.blocks),
                            size_scale)
        if result == "too-big":
            size_scale *= 0.7
            continue
        if result is None:
            continue
        block, block_words, warped, region, _ = result
        canvas.draw(block, block_words, warped, region)
    return canvas.scene(degradation, split)


class SceneCanvas:
    """A scene being drawn: the text image over its clean background, the pixels blocks occupy, the glyph
    fill and effect (stroke, shadow) coverage, and the blocks and words placed so far (v1 and v2 scenes)."""

    def __init__(self, clean_bg: np.ndarray) -> None:
        h, w = clean_bg.shape[:2]
        self.clean_bg = clean_bg
        self.image = clean_bg.copy()
        self.occupied = np.zeros((h, w), np.uint8)
        self.fill = np.zeros((h, w), np.float32)
        self.effect = np.zeros((h, w), np.float32)
        self.words: list[Word] = []
        self.blocks: list[Block] = []

    def draw(self, block: Block, words: list[Word], warped: np.ndarray, region: tuple[slice, slice]) -> None:
        """Composite a rendered block (its warped fill/stroke/shadow layers) into `region` and record it."""
        composite(self.image[region], warped, block.style)
        np.maximum(self.fill[region], warped[..., 0], out=self.fill[region])
        effect = np.maximum(warped[..., 1] if block.style.stroke_width > 0 else 0, warped[..., 2])
        np.maximum(self.effect[region], effect, out=self.effect[region])
        self.blocks.append(block)
        self.words.extend(words)

    def scene(self, degradation: Degradation, split: str, extra: dict | None = None) -> Scene:
        """The finished Scene: the camera degradation applied alike to the image and its text-free label."""
        return Scene(image=degradation.apply(self.image), background=degradation.apply(self.clean_bg),
                     clean_background=self.clean_bg, fill=self.fill, effect=self.effect, words=self.words,
                     blocks=self.blocks, degradation=degradation, split=split, extra=dict(extra or {}))


# --------------------------------------------------------------------------------------------
# Ground truth derived from a scene
# --------------------------------------------------------------------------------------------

# TextSeg label values written by the generator (the reader maps 100 -> text, 200 -> background,
# 255 -> ignore, like the original's ConvertLabel).
TEXTSEG_TEXT, TEXTSEG_EFFECT, TEXTSEG_IGNORE = 100, 200, 255


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
