"""A word's first-look probability beside those of the other words of its image and line.

Why a second look: a forger changes a field, not one word at random, and a file whose history shows in one
word usually shows it in others (the whole image re-saved, several digits re-typed). The first ensemble
judges each word against its neighbours' *features*; the second (`TreeEnsemble.context`) reads the same
features plus these numbers about the neighbours' *verdicts* (`upocr train-tampering --context`). On the
training-split validation images it raised recall at 0.5 % false alarms from 39.9 % to 44.2 % of tampered
words (found words: 33.2 -> 37.1 %), but on forgeries constructed from real photos, where one field is
changed, it found fewer (copy-moves 0.455 -> 0.393 recall): the synthetic habit of forging several words
per file is learnt too. So the bundled classifier has no second look (docs/tampering.md).

In training, the first-look probabilities of the training images come from ensembles that did not see them
(out-of-fold, `upocr.forensics.train.fit`): trees see the verdicts they will be given at inference, not the
over-confident ones on their own training words.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

CONTEXT_NAMES = (
    "first_logit",  # the word's own first-look log-odds
    "others_max", "others_mean", "others_over_half",  # the other words of the image: max, mean, share above 0.5
    "rank",  # the word's place among its image's words, 0 (least suspect) .. 1
    "line_words", "line_others_max",  # words in its line; the highest probability of the others (NaN: alone)
    "beside_max",  # the higher of its left and right neighbours' probabilities in the line (NaN: alone)
    "image_words",
)
LINE_OVERLAP = 0.5  # same line: vertical overlap at least this share of the lower word's height ...
LINE_GAP = 1.5  # ... and a horizontal gap at most this many heights of the taller word


def line_groups(boxes: np.ndarray) -> np.ndarray:
    """(N,) line index of each word box (x1, y1, x2, y2): words overlapping vertically and near each other
    horizontally are chained into one line."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    count = len(boxes)
    if count == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes.T
    height = y2 - y1 + 1
    overlap = np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :]) + 1
    gap = np.maximum(x1[:, None], x1[None, :]) - np.minimum(x2[:, None], x2[None, :])
    linked = ((overlap >= LINE_OVERLAP * np.minimum(height[:, None], height[None, :]))
              & (gap <= LINE_GAP * np.maximum(height[:, None], height[None, :])))
    rows, columns = np.nonzero(linked)
    graph = coo_matrix((np.ones(len(rows)), (rows, columns)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def _max_of_others(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(N,) per item, the maximum of the other items of its group (NaN when it is alone)."""
    result = np.full(len(values), np.nan)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        if len(members) < 2:
            continue
        order = members[np.argsort(values[members])[::-1]]
        result[members] = values[order[0]]
        result[order[0]] = values[order[1]]  # the top item's best other is the runner-up
    return result


def context_features(probabilities: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, len(CONTEXT_NAMES)) float32: what the other words of one image (their first-look
    `probabilities` and `boxes` (x1, y1, x2, y2)) say about each word."""
    p = np.asarray(probabilities, np.float64)
    count = len(p)
    out = np.full((count, len(CONTEXT_NAMES)), np.nan, np.float32)
    if count == 0:
        return out
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    out[:, 0] = np.log(clipped / (1 - clipped))
    if count > 1:
        out[:, 1] = _max_of_others(p, np.zeros(count, np.int64))
        out[:, 2] = (p.sum() - p) / (count - 1)
        over = p > 0.5
        out[:, 3] = (over.sum() - over) / (count - 1)
    rank = np.empty(count)
    rank[np.argsort(p, kind="stable")] = np.arange(count) / max(count - 1, 1)
    out[:, 4] = rank
    lines = line_groups(boxes)
    out[:, 5] = np.bincount(lines)[lines]
    out[:, 6] = _max_of_others(p, lines)
    centre = (np.asarray(boxes, np.float64)[:, 0] + np.asarray(boxes, np.float64)[:, 2]) / 2
    for line in np.unique(lines):
        members = np.flatnonzero(lines == line)
        if len(members) < 2:
            continue
        members = members[np.argsort(centre[members], kind="stable")]
        left = np.r_[np.nan, p[members[:-1]]]
        right = np.r_[p[members[1:]], np.nan]
        out[members, 7] = np.fmax(left, right)
    out[:, 8] = count
    return out
