"""Checks of a state dict against itself and against the network it is meant for, before it is used."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from upocr.weights.formats import CheckpointError


def check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse NaN/Inf weights: they load silently and give blank results."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: {key} has NaN/Inf values")


def check_state_fits(expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Every key the network expects is in `state` with its shape, and nothing else; else one line that
    counts and names (the first three of) the missing, unexpected and misfitting keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(shape)}" for k, shape in expected.items() if k in state and state[k].shape != shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches (file vs model)", mismatched)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(f"{path}: does not fit the model config: {'; '.join(problems)}")
