"""Column medians that skip missing values, shared by the word features and the seams."""

from __future__ import annotations

import numpy as np


def nanmedian_columns(values: np.ndarray) -> np.ndarray:
    """Column medians of (N, F) ignoring NaN (NaN for an all-NaN column); a sort, not numpy's masked path."""
    ordered = np.sort(values, axis=0)
    valid = (~np.isnan(values)).sum(axis=0)
    low, high = np.maximum(valid - 1, 0) // 2, np.maximum(valid, 1) // 2
    columns = np.arange(values.shape[1])
    last = len(values) - 1
    median = (ordered[np.minimum(low, last), columns] + ordered[np.minimum(high, last), columns]) / 2
    return np.where(valid > 0, median, np.nan)
