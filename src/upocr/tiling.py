"""Fitting images of any size to a fixed-size model: tiles and row bands, as pure numpy/torch helpers.

`upocr.predict` runs the model; these functions decide where tiles go and how they are blended
(raised-cosine ramps across overlaps), resize the model's working-size outputs back to the original
size a band of rows at a time (bit-exact with one torch interpolation of the whole), and run row filters
(blurs, dilations) on images that arrive in bands. Nothing here knows the model or the tasks.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

# `tile="auto"` tiles an image when it has more than this many times size x size pixels.
AUTO_TILE_AREA_FACTOR = 4
# Rows per band in which resized outputs are brought to full size and removal results composited.
BAND_ROWS = 256

Band = tuple[int, int, list[np.ndarray]]  # rows [top, bottom) of each task's float32 (3, rows, W) output


def resized_bands(outputs: list[np.ndarray], height: int, width: int, band_rows: int) -> Iterator[Band]:
    """Working-size outputs (3, s, s), bilinearly resized to (height, width), as bands of `band_rows` rows."""
    if outputs and height * width <= outputs[0].shape[1] * outputs[0].shape[2]:  # no larger: in one piece
        yield 0, height, [_resize_whole(output, height, width) for output in outputs]
        return
    for top in range(0, height, band_rows):
        bottom = min(height, top + band_rows)
        yield top, bottom, [resize_rows(output, height, width, top, bottom) for output in outputs]


def resize_rows(output: np.ndarray, height: int, width: int, top: int, bottom: int) -> np.ndarray:
    """Rows [top, bottom) of `output` (3, h, w) resized to (3, height, width), clipped to [0, 1]: the same
    values as F.interpolate(bilinear, align_corners=False) of the whole, without the whole.

    The width is interpolated by torch on the few source rows the band needs (at their own height, an
    exact copy along the height); the height by torch's index and weight formulas."""
    small_h, small_w = output.shape[1:]
    if (small_h, small_w) == (height, width):
        return output[:, top:bottom]
    first, second, weight_first, weight_second = _linear_indices(small_h, height, top, bottom)
    source_top, source_bottom = int(first.min()), int(second.max()) + 1
    source = torch.from_numpy(np.ascontiguousarray(output[None, :, source_top:source_bottom], dtype=np.float32))
    wide = F.interpolate(source, size=(source_bottom - source_top, width), mode="bilinear", align_corners=False)[0].numpy()
    # w0 * row0 + w1 * row1, the first product fused into the sum as torch's build does (float64 holds
    # the float32 product exactly), so the values match torch's to the bit on this build.
    second_term = (weight_second[:, None] * wide[:, second - source_top]).astype(np.float64)
    rows = (weight_first[:, None].astype(np.float64) * wide[:, first - source_top] + second_term).astype(np.float32)
    return np.clip(rows, 0, 1)


def _resize_whole(output: np.ndarray, height: int, width: int) -> np.ndarray:
    if output.shape[1:] == (height, width):
        return output
    resized = F.interpolate(torch.from_numpy(output)[None], size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].clamp_(0, 1).numpy()


def _linear_indices(source: int, target: int, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For target rows [top, bottom): source rows and weights of torch's bilinear (align_corners=False)
    interpolation, in float32 as torch computes them (aten/src/ATen/native/UpSample.h)."""
    scale = np.float32(source) / np.float32(target)
    # scale * (row + 0.5) - 0.5 rounded once (torch's build contracts it to a fused multiply-add): exact in
    # float64, then rounded to float32.
    position = (np.float64(scale) * (np.arange(top, bottom, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    position = np.maximum(position, np.float32(0))
    first = np.minimum(np.floor(position).astype(np.int64), source - 1)
    weight_second = np.clip(position - first.astype(np.float32), 0, 1).astype(np.float32)
    second = first + (first < source - 1)
    return first, second, (np.float32(1) - weight_second), weight_second


def weight_total(
    rows: list[int], cols: list[int], row_weights: list[np.ndarray], col_weights: list[np.ndarray],
    tile: int, top: int, bottom: int,
) -> np.ndarray:
    """Rows [top, bottom) of the sum of all tiles' blend weights (summed in the tiles' order)."""
    total = np.zeros((bottom - top, cols[-1] + tile), np.float32)
    for row_weight, row in zip(row_weights, rows):
        first, last = max(top, row), min(bottom, row + tile)
        if first >= last:
            continue
        for col_weight, col in zip(col_weights, cols):
            total[first - top : last - top, col : col + tile] += np.outer(row_weight[first - row : last - row], col_weight)
    return total


def filter_rows(array: np.ndarray, top: int, bottom: int, reach: int, apply: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Rows [top, bottom) of `apply(array)`, computed from those rows and `reach` rows either side, for a
    filter whose rows depend on at most `reach` rows above and below (blurs, dilations)."""
    first, last = max(0, top - reach), min(len(array), bottom + reach)
    return apply(array[first:last])[top - first : bottom - first]


class RowFilterStream:
    """`apply` (a filter with row reach `reach`, as filter_rows) on an image of `height` rows that arrives
    in consecutive row bands: `push` returns the filtered rows whose neighbourhood is complete."""

    def __init__(self, height: int, reach: int, apply: Callable[[np.ndarray], np.ndarray]) -> None:
        self.height, self.reach, self.apply = height, reach, apply
        self.buffer: np.ndarray | None = None  # source rows [buffer_top, last pushed bottom)
        self.buffer_top = 0
        self.emitted = 0  # filtered rows [0, emitted) were returned

    def push(self, top: int, bottom: int, rows: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        if self.buffer is None:
            self.buffer = rows
        else:
            assert top == self.buffer_top + len(self.buffer), "bands must arrive in order"
            self.buffer = np.concatenate([self.buffer, rows])
        ready = bottom if bottom == self.height else bottom - self.reach
        if ready <= self.emitted:
            return []
        context_top = max(0, self.emitted - self.reach)
        filtered = self.apply(self.buffer[context_top - self.buffer_top :])
        done = (self.emitted, ready, filtered[self.emitted - context_top : ready - context_top])
        self.emitted = ready
        keep_top = max(0, ready - self.reach)
        self.buffer, self.buffer_top = self.buffer[keep_top - self.buffer_top :], keep_top
        return [done]


def gaussian_reach(sigma: float) -> int:
    """Rows either side that cv2.GaussianBlur(ksize=(0, 0), sigma) reads on float images (its kernel
    is round(8 sigma + 1) | 1 wide), plus one to spare."""
    return (int(round(sigma * 8 + 1)) | 1) // 2 + 1


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Top/left offsets of tiles covering [0, length) with at least `overlap` pixels shared by neighbours,
    spread evenly so that the first starts at 0 and the last ends at `length` (length >= tile)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_weights(starts: list[int], tile: int) -> list[np.ndarray]:
    """1-D blend weights per tile: 1 inside, a raised-cosine ramp across each overlap with a neighbour.

    The ramps of two neighbours are complementary (they sum to 1 across the overlap), and sides without a
    neighbour (the image border) are not tapered. Weights never reach 0, so dividing by their sum is safe.
    """
    weights = []
    for i, start in enumerate(starts):
        weight = np.ones(tile, np.float32)
        if i > 0:
            shared = starts[i - 1] + tile - start
            weight[:shared] *= _ramp(shared)
        if i < len(starts) - 1:
            shared = start + tile - starts[i + 1]
            weight[tile - shared :] *= _ramp(shared)[::-1]
        weights.append(weight)
    return weights


def _ramp(length: int) -> np.ndarray:
    """Rising raised-cosine of `length` samples in (0, 1); ramp + reversed ramp == 1."""
    position = (np.arange(length, dtype=np.float64) + 0.5) / length
    return (0.5 - 0.5 * np.cos(np.pi * position)).astype(np.float32)


def tiled_bands(
    pixels: np.ndarray, tile: int, overlap: int, task_count: int, batch_size: int,
    forward: Callable[[torch.Tensor, list[int]], np.ndarray],
) -> Iterator[Band]:
    """Weighted average of overlapping tile outputs at native resolution, streamed.

    `forward(batch, task_indices)` runs the model on a (B, 3, tile, tile) float batch in [0, 1], item i for
    task `task_indices[i]`, and returns its (B, 3, tile, tile) float32 output.

    Tiles run in row-major order, `batch_size` (tile, task) pairs per forward pass; the weighted sums
    are kept for the rows that later tiles still touch (at most a few tile heights), and each band of
    rows is yielded, divided by its weight total and clipped, as soon as no later tile touches it."""
    height, width = pixels.shape[:2]
    # Reflect-pad images smaller than a tile (numpy repeats the reflection if needed).
    padded_h, padded_w = max(height, tile), max(width, tile)
    if (padded_h, padded_w) != (height, width):
        pixels = np.pad(pixels, ((0, padded_h - height), (0, padded_w - width), (0, 0)), mode="reflect")
    rows = tile_starts(padded_h, tile, overlap)
    cols = tile_starts(padded_w, tile, overlap)
    row_weights = tile_weights(rows, tile)
    col_weights = tile_weights(cols, tile)
    # Rows [window_top, window_top + len(window)) of the weighted sums, one (3, rows, W) per task.
    window_top = 0
    window = np.zeros((task_count, 3, 0, padded_w), np.float32)
    jobs = [(r, c, t) for r in range(len(rows)) for c in range(len(cols)) for t in range(task_count)]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        bottom = rows[chunk[-1][0]] + tile
        if bottom > window_top + window.shape[2]:  # grow the window down to the chunk's lowest tile
            grow = bottom - window_top - window.shape[2]
            window = np.concatenate([window, np.zeros((task_count, 3, grow, padded_w), np.float32)], axis=2)
        batch = torch.stack(
            [
                torch.from_numpy(
                    np.ascontiguousarray(pixels[rows[r] : rows[r] + tile, cols[c] : cols[c] + tile])
                ).permute(2, 0, 1)
                for r, c, _ in chunk
            ]
        ).float().div_(255)
        result = forward(batch, [t for _, _, t in chunk])
        for (r, c, t), one in zip(chunk, result):
            weight = np.outer(row_weights[r], col_weights[c])
            top, left = rows[r] - window_top, cols[c]
            window[t][:, top : top + tile, left : left + tile] += one * weight
        # Rows above the next tile row (all of them after the last) are final.
        next_job = start + len(chunk)
        done = padded_h if next_job == len(jobs) else rows[jobs[next_job][0]]
        if done > window_top:
            final, window = window[:, :, : done - window_top], window[:, :, done - window_top :].copy()
            kept = min(done, height) - window_top  # rows of the image, not of the padding
            if kept > 0:
                total = weight_total(rows, cols, row_weights, col_weights, tile, window_top, done)
                total = total[:kept, :width]
                yield window_top, window_top + kept, [np.clip(one[:, :kept, :width] / total, 0, 1) for one in final]
            window_top = done
