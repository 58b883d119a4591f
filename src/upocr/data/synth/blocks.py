"""Placing one text block in a scene: one path for every scene kind.

A block recipe (`BlockRecipe`) answers the questions placement asks, in the order it asks them: which
typeface, how many lines, how aligned, how curved, tilted and skewed, bent by which warp, on which
plate, in which ink. `BlockPlan` answers with values a v2 planner fixed (`world.py`); the classic
recipe (`classic.ClassicBlock`) draws its answers from the generator when asked, as v1 always did (so
v1 data keeps its bytes). Placement itself has three steps:

  style      typeface and a random style (fill, stroke, shadow) against the scene's colour;
  layout     words into lines at the typeface's metrics -> the block's layer and word origins;
  placement  curve, rotation, perspective and a free spot -> the block's geometry (`BlockTooBig`
             when the block cannot fit at all), then the words' polygons, the plate, the colour
             against the local background, and the warped glyph layers.

`SceneCanvas` holds a scene being drawn: the pixels blocks occupy and the layers composited so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from upocr.data.synth import backgrounds, fonts, text
from upocr.data.synth.geometry import ArcBend, BlockGeometry, ImageWarp, PageCurl, box_of, fill_polygons, polygon_of
from upocr.data.synth.render import (Block, Degradation, Scene, TextStyle, Typeface, Word, composite,
                                     contrasting_colour, draw_word_layers, luminance, random_style)

MIN_FONT_PX = 8
PLACEMENT_TRIES = 6  # free spots tried for a block before giving up on it


class BlockTooBig(Exception):
    """The block, rotated and skewed, is larger than the image: draw it smaller (`BlockRecipe.smaller`)."""


def random_curve(rng: np.random.Generator, layer_width: int) -> float:
    """Amplitude (pixels, either sign) of a block's sine-curved baseline."""
    return float(rng.uniform(0.05, 0.25) * layer_width * rng.choice([-1, 1]) * 0.3)


class BlockRecipe:
    """What placement asks a block, in the order it asks (see the module docstring). Methods that take
    `rng` may draw from it; the attributes are fixed."""

    max_width: float  # pixels a line may take
    plate: Plate | None = None  # drawn under the text, into the background
    ink: np.ndarray | None = None  # print: this fill colour, and no stroke, shadow or gradient
    min_contrast: float | None = None  # luminance the fill keeps from the local background

    def typeface(self, rng: np.random.Generator, split: str, min_side: int,
                 size_scale: float) -> tuple[fonts.FontSpec, str, int]:
        """(font, script, size in pixels) of the block on an image whose shorter side is `min_side`."""
        raise NotImplementedError

    def line_counts(self, rng: np.random.Generator) -> tuple[int, int]:
        """(lines, most words per line)."""
        raise NotImplementedError

    def line_typefaces(self, font: fonts.FontSpec, size: int, line_count: int) -> list[Typeface]:
        """(font, size) of each line: the block's own unless a line is set apart (a receipt's heading)."""
        return [(font, size)] * line_count

    @property
    def extra_margin(self) -> int:
        """Pixels of reach beyond the style's (a curl or arc resamples once more)."""
        return 0

    def alignment(self, rng: np.random.Generator) -> str:
        """Either "left" or "center"."""
        raise NotImplementedError

    def curve_amplitude(self, rng: np.random.Generator, layer_width: int, line_count: int) -> float:
        """Amplitude of the baseline's sine curve (0: straight)."""
        raise NotImplementedError

    def rotation(self, rng: np.random.Generator, draw: float) -> float:
        """Rotation in degrees; `draw` is a uniform number drawn for every block."""
        raise NotImplementedError

    def skew(self, rng: np.random.Generator, corners: np.ndarray, layer_hw: tuple[int, int]) -> np.ndarray:
        """The rotated layer's (4, 2) corners, moved for perspective."""
        raise NotImplementedError

    def bend(self, hw: tuple[int, int], centre: np.ndarray, layer_hw: tuple[int, int]) -> ImageWarp | None:
        """The warp after the homography (a page curl, an arc), for a block centred at `centre`."""
        return None

    def smaller(self, size_scale: float) -> tuple[BlockRecipe, float]:
        """(recipe, size scale) to try after `BlockTooBig`."""
        return self, size_scale * 0.7


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


@dataclass(frozen=True)
class LineFace:
    """One line of a block set in another font and size: a receipt's shop name, a bold total. Genuine
    text differs in weight and size within a document too, not only where a forger retyped a word."""

    line: int  # the line's index (negative: from the last line)
    font: fonts.FontSpec
    scale: float = 1.0  # its size relative to the block's


@dataclass(frozen=True)
class BlockPlan(BlockRecipe):
    """A block whose every choice a planner fixed (the v2 kinds of `world.py`)."""

    font: fonts.FontSpec
    script: str
    size: int  # font size in pixels
    lines: int
    words_per_line: int
    max_width: float  # pixels
    angle: float  # degrees
    perspective: float  # corner jitter as a fraction of the block's width / height (0: none)
    curve: bool = False  # a sine-curved baseline (blocks of one or two lines)
    arc: float = 0.0  # degrees of a circle the block's width bends around (+ arch, - smile; 0: straight)
    align: str = "left"
    plate: Plate | None = None
    min_contrast: float = 70.0
    page: PageCurl | None = None
    ink: np.ndarray | None = None
    line_faces: tuple[LineFace, ...] = ()

    def typeface(self, rng: np.random.Generator, split: str, min_side: int,
                 size_scale: float) -> tuple[fonts.FontSpec, str, int]:
        return self.font, self.script, max(MIN_FONT_PX, int(round(self.size * size_scale)))

    def line_counts(self, rng: np.random.Generator) -> tuple[int, int]:
        return self.lines, self.words_per_line

    def line_typefaces(self, font: fonts.FontSpec, size: int, line_count: int) -> list[Typeface]:
        faces = [(font, size)] * line_count
        for face in self.line_faces:
            if -line_count <= face.line < line_count:
                faces[face.line] = (face.font, max(MIN_FONT_PX, int(round(size * face.scale))))
        return faces

    @property
    def extra_margin(self) -> int:
        return 1 if self.page is not None or self.arc else 0

    def alignment(self, rng: np.random.Generator) -> str:
        return self.align

    def curve_amplitude(self, rng: np.random.Generator, layer_width: int, line_count: int) -> float:
        return random_curve(rng, layer_width) if self.curve and line_count <= 2 else 0.0

    def rotation(self, rng: np.random.Generator, draw: float) -> float:
        return self.angle

    def skew(self, rng: np.random.Generator, corners: np.ndarray, layer_hw: tuple[int, int]) -> np.ndarray:
        if self.perspective <= 0:
            return corners
        # Per axis, relative to that side: a wide one-line sign keeps its height (no degenerate sliver).
        jitter = self.perspective * np.float32([layer_hw[1], layer_hw[0]])
        return corners + (rng.uniform(-1, 1, corners.shape) * jitter).astype(np.float32)

    def bend(self, hw: tuple[int, int], centre: np.ndarray, layer_hw: tuple[int, int]) -> ImageWarp | None:
        if not self.arc:
            return self.page
        # Around the block's centre, its width spanning `arc` degrees (less for short words: a radius
        # under the block's height would fold its inner edge over).
        radius = max(layer_hw[1] / math.radians(abs(self.arc)), float(layer_hw[0]))
        return ArcBend(hw, float(centre[0]), float(centre[1]), radius, 1 if self.arc > 0 else -1)

    def smaller(self, size_scale: float) -> tuple[BlockRecipe, float]:
        # A heading larger than the body is what overflows a small image: it goes first. Then pages and
        # receipts keep their print size and lose lines; other blocks shrink.
        if self.line_faces:
            return replace(self, line_faces=()), size_scale
        if self.lines > 3:
            return replace(self, lines=int(self.lines * 0.7)), size_scale
        return self, size_scale * 0.7


@dataclass
class BlockLayout:
    """A block's words laid out in its (unwarped) layer."""

    style: TextStyle
    script: str
    line_count: int
    placed: list[tuple[str, tuple[float, float]]]  # word, left-baseline origin in layer pixels
    layer_hw: tuple[int, int]
    margin: int  # pixels around a glyph box that may differ from the background
    typefaces: list[Typeface]  # (font, size) of each placed word


@dataclass
class WarpedPlate:
    """A plate warped into the image: RGBA `layers` over `region`, and its mean colour."""

    layers: np.ndarray
    region: tuple[slice, slice]
    colour: np.ndarray

    def composite(self, image: np.ndarray) -> None:
        """Alpha-composite onto a float image in place."""
        alpha = self.layers[..., 3:4]
        view = image[self.region]
        view *= 1 - alpha
        view += alpha * self.layers[..., :3] * 255.0


@dataclass
class PlacedBlock:
    block: Block
    words: list[Word]
    layers: np.ndarray  # warped fill / body / shadow / ramp over `region`
    region: tuple[slice, slice]
    plate: WarpedPlate | None


class SceneCanvas:
    """A scene being drawn: the text image over its clean background, the pixels blocks occupy, the glyph
    fill and effect (stroke, shadow) coverage, and the blocks and words placed so far."""

    def __init__(self, clean_bg: np.ndarray) -> None:
        h, w = clean_bg.shape[:2]
        self.clean_bg = clean_bg
        self.image = clean_bg.copy()
        self.occupied = np.zeros((h, w), np.uint8)
        self.fill = np.zeros((h, w), np.float32)
        self.effect = np.zeros((h, w), np.float32)
        self.words: list[Word] = []
        self.blocks: list[Block] = []

    def draw(self, placed: PlacedBlock) -> None:
        """Composite a placed block (its plate into both images, under the text) and record it."""
        if placed.plate is not None:  # part of the background: the text-free label keeps it
            placed.plate.composite(self.clean_bg)
            placed.plate.composite(self.image)
        layers, region, style = placed.layers, placed.region, placed.block.style
        composite(self.image[region], layers, style)
        np.maximum(self.fill[region], layers[..., 0], out=self.fill[region])
        effect = np.maximum(layers[..., 1] if style.stroke_width > 0 else 0, layers[..., 2])
        np.maximum(self.effect[region], effect, out=self.effect[region])
        self.blocks.append(placed.block)
        self.words.extend(placed.words)

    def scene(self, degradation: Degradation, split: str, extra: dict | None = None) -> Scene:
        """The finished Scene: the camera degradation applied alike to the image and its text-free label."""
        return Scene(image=degradation.apply(self.image), background=degradation.apply(self.clean_bg),
                     clean_background=self.clean_bg, fill=self.fill, effect=self.effect, words=self.words,
                     blocks=self.blocks, degradation=degradation, split=split, extra=dict(extra or {}))


# --------------------------------------------------------------------------------------------
# Style, layout, placement
# --------------------------------------------------------------------------------------------


def _mean_colour(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    return np.asarray(cv2.mean(image, mask=mask)[:3], np.float32)


def choose_style(rng: np.random.Generator, recipe: BlockRecipe, split: str, scene_bg: np.ndarray,
                 size_scale: float) -> tuple[TextStyle, str]:
    """(style, script): the typeface and a style whose colour is chosen against the scene's mean colour
    (refined against the local background once placed)."""
    font, script, size = recipe.typeface(rng, split, min(scene_bg.shape[:2]), size_scale)
    style = random_style(rng, font, size, _mean_colour(scene_bg))
    if recipe.ink is not None:
        style.stroke_width, style.stroke, style.shadow_offset, style.fill_bottom = 0, None, None, None
    return style, script


def layout_lines(rng: np.random.Generator, script: str, typefaces: list[Typeface], words_max: int,
                 max_width: float) -> list[tuple[Typeface, list[str]]]:
    """One line per typeface of 1..`words_max` random words its font covers, within `max_width`; lines
    left empty are dropped."""
    lines = []
    for typeface in typefaces:
        spec, size = typeface
        font = fonts.load_font(spec.path, size)
        line: list[str] = []
        for _ in range(int(rng.integers(1, words_max + 1))):
            word = text.random_word(rng, script)
            if not fonts.covers(spec, word):
                continue
            if font.getlength(" ".join(line + [word])) > max_width and line:
                break
            line.append(word)
        if line:
            lines.append((typeface, line))
    return lines


def lay_out(rng: np.random.Generator, recipe: BlockRecipe, style: TextStyle, script: str,
            blur_reach: float) -> BlockLayout | None:
    """The block's words in lines, their origins and the layer's size (None: no word fits)."""
    line_count, words_max = recipe.line_counts(rng)
    lines = layout_lines(rng, script, recipe.line_typefaces(style.font, style.size, line_count), words_max,
                         recipe.max_width)
    if not lines:
        return None
    line_fonts = [fonts.load_font(spec.path, size) for (spec, size), _ in lines]
    metrics = [font.getmetrics() for font in line_fonts]  # (ascent, descent) per line
    margin = style.margin(blur_reach) + recipe.extra_margin
    pad = margin + 2 + (0 if recipe.plate is None else recipe.plate.padding)
    ascent, descent = metrics[0]
    spacing = rng.uniform(1.0, 1.35)
    line_height = (ascent + descent) * spacing
    # Baseline r sits r line heights below the first, plus what taller (or shorter) lines add: exactly
    # 0.0 in a block of one typeface, so such blocks keep their bytes.
    offsets = np.cumsum([0.0] + [(metrics[r - 1][1] + metrics[r][0]) * spacing - line_height
                                 for r in range(1, len(lines))]).tolist()
    spread = rng.uniform(1.0, 1.6)
    spaces = [font.getlength(" ") * spread for font in line_fonts]
    widths = [sum(font.getlength(wd) for wd in line) + space * (len(line) - 1)
              for font, space, (_, line) in zip(line_fonts, spaces, lines)]
    block_w = max(widths)
    align = recipe.alignment(rng)
    layer_w = int(math.ceil(block_w + 2 * pad + style.stroke_width * 2))
    layer_h = int(math.ceil(line_height * (len(lines) - 1) + offsets[-1] + ascent + metrics[-1][1] + 2 * pad))
    placed: list[tuple[str, tuple[float, float]]] = []
    typefaces: list[Typeface] = []
    for row, ((typeface, line), font, space, width) in enumerate(zip(lines, line_fonts, spaces, widths)):
        x = pad + style.stroke_width + ((block_w - width) / 2 if align == "center" else 0)
        y = pad + ascent + row * line_height + offsets[row]
        for word in line:
            placed.append((word, (float(x), float(y))))
            typefaces.append(typeface)
            x += font.getlength(word) + space
    return BlockLayout(style, script, len(lines), placed, (layer_h, layer_w), margin, typefaces)


def place(rng: np.random.Generator, recipe: BlockRecipe, layout: BlockLayout,
          occupied: np.ndarray) -> tuple[BlockGeometry, np.ndarray] | None:
    """(geometry, footprint mask) of the block at a free spot; None when PLACEMENT_TRIES spots all
    overlap other blocks. Raises BlockTooBig when the block cannot fit in the image at all."""
    h, w = occupied.shape
    layer_h, layer_w = layout.layer_hw
    amplitude = recipe.curve_amplitude(rng, layer_w, layout.line_count)
    period = float(layer_w * rng.uniform(1.5, 3.0))
    phase = float(rng.uniform(0, 2 * np.pi))
    angle = recipe.rotation(rng, rng.random())
    pad_c = int(math.ceil(abs(amplitude))) + 1
    src = np.float32([[0, 0], [layer_w, 0], [layer_w, layer_h + 2 * pad_c], [0, layer_h + 2 * pad_c]])
    theta = np.deg2rad(angle)
    rot = np.float32([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    dst = recipe.skew(rng, (src - src.mean(0)) @ rot.T, layout.layer_hw)
    ext = dst.max(0) - dst.min(0)
    if ext[0] > w - 2 or ext[1] > h - 2:
        raise BlockTooBig(f"{ext[0]:.0f}x{ext[1]:.0f} px block in a {w}x{h} image")
    lo = -dst.min(0)
    hi = np.array([w - 1, h - 1], np.float32) - dst.max(0)
    for _ in range(PLACEMENT_TRIES):
        centre = rng.uniform(lo, hi).astype(np.float32)
        homography = cv2.getPerspectiveTransform(src, (dst + centre).astype(np.float32))
        bend = recipe.bend((h, w), centre, layout.layer_hw)
        geometry = BlockGeometry(layout.layer_hw, amplitude, period, phase, homography.astype(np.float64), page=bend)
        if bend is not None and bend.stays_inside:
            outline = geometry.outline()
            if outline.min() < 1 or (outline.max(0) > np.array([w - 2, h - 2])).any():
                continue
        # Overlap test on the whole block's outline (cheap); word polygons only once placed.
        if amplitude == 0 and bend is None:
            outline = cv2.perspectiveTransform(src[None].astype(np.float64), geometry.homography)[0]
        else:
            y0, x0, y1, x1 = geometry.image_bounds((h, w))
            outline = np.float64([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        footprint = fill_polygons([outline], (h, w))
        if not np.logical_and(footprint, occupied).any():
            return geometry, footprint
    return None


def word_polygons(layout: BlockLayout, geometry: BlockGeometry, block_index: int,
                  hw: tuple[int, int]) -> list[Word]:
    """Each word's box in the layer (glyphs, stroke, shadow, blur reach) warped into the image."""
    style, (layer_h, layer_w), margin = layout.style, layout.layer_hw, layout.margin
    words = []
    for (word, origin), typeface in zip(layout.placed, layout.typefaces):
        font = fonts.load_font(typeface[0].path, typeface[1])
        left, top, right, bottom = font.getbbox(word, anchor="ls", stroke_width=style.stroke_width)
        local = [origin[0] + left - margin, origin[1] + top - margin, origin[0] + right + margin,
                 origin[1] + bottom + margin]
        if style.shadow_offset is not None:
            dx, dy = style.shadow_offset
            local = [min(local[0], local[0] + dx), min(local[1], local[1] + dy),
                     max(local[2], local[2] + dx), max(local[3], local[3] + dy)]
        local = (max(local[0], 0.0), max(local[1], 0.0), min(local[2], layer_w), min(local[3], layer_h))
        polygon = polygon_of(geometry, local, points=6 if geometry.page is None else 16)
        own = None if typeface == (style.font, style.size) else typeface
        words.append(Word(word, layout.script, block_index, origin, local, polygon, box_of(polygon, hw), own))
    return words


def recolour(rng: np.random.Generator, recipe: BlockRecipe, style: TextStyle, local_bg: np.ndarray) -> None:
    """Re-pick the fill (and stroke) against the block's actual local background, so contrast is as
    intended (in place)."""
    recoloured = random_style(rng, style.font, style.size, local_bg)
    if recipe.ink is not None:
        recoloured.fill = recipe.ink
    if recipe.min_contrast is not None and abs(luminance(recoloured.fill) - luminance(local_bg)) < recipe.min_contrast:
        recoloured.fill = contrasting_colour(rng, local_bg, recipe.min_contrast)
    style.fill, style.fill_bottom = recoloured.fill, None if style.fill_bottom is None else recoloured.fill_bottom
    if style.stroke_width > 0:
        style.stroke = contrasting_colour(rng, style.fill, rng.uniform(60, 200))


def place_block(rng: np.random.Generator, recipe: BlockRecipe, canvas: SceneCanvas, split: str, blur_reach: float,
                size_scale: float = 1.0) -> PlacedBlock | None:
    """Style, lay out and place one block on `canvas` (marking its pixels occupied); None when no word
    fits or no free spot was found. Raises BlockTooBig when it cannot fit in the image at all."""
    scene_bg, occupied = canvas.clean_bg, canvas.occupied
    hw = occupied.shape
    style, script = choose_style(rng, recipe, split, scene_bg, size_scale)
    layout = lay_out(rng, recipe, style, script, blur_reach)
    if layout is None:
        return None
    found = place(rng, recipe, layout, occupied)
    if found is None:
        return None
    geometry, footprint = found
    words = word_polygons(layout, geometry, len(canvas.blocks), hw)
    plate = None if recipe.plate is None else draw_plate(rng, recipe.plate, geometry, layout.layer_hw, hw)
    if plate is not None:
        local_bg = plate.colour
    else:
        local_bg = _mean_colour(scene_bg, footprint) if footprint.any() else _mean_colour(scene_bg)
    recolour(rng, recipe, style, local_bg)
    layers, region = geometry.warp(draw_word_layers(style, layout.placed, layout.layer_hw, layout.typefaces), hw)
    occupied |= cv2.dilate(footprint, np.ones((3, 3), np.uint8))
    return PlacedBlock(Block(style, geometry), words, layers, region, plate)


def place_with_retries(rng: np.random.Generator, recipe: BlockRecipe, canvas: SceneCanvas, split: str,
                       blur_reach: float, tries: int = 4) -> PlacedBlock | None:
    """`place_block` up to `tries` times, smaller (`BlockRecipe.smaller`) after each BlockTooBig."""
    size_scale = 1.0
    for _ in range(tries):
        try:
            placed = place_block(rng, recipe, canvas, split, blur_reach, size_scale)
        except BlockTooBig:
            recipe, size_scale = recipe.smaller(size_scale)
            continue
        if placed is not None:
            return placed
    return None


def draw_plate(rng: np.random.Generator, plate: Plate, geometry: BlockGeometry, layer_hw: tuple[int, int],
               out_hw: tuple[int, int]) -> WarpedPlate:
    """A plate filling the block's layer (rounded corners, optional border and paper texture), warped
    with the block."""
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
    layers, region = geometry.warp(np.dstack([colour / 255.0, alpha]), out_hw)
    return WarpedPlate(layers, region, plate.colour.astype(np.float32))
