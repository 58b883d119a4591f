"""The training record saved with weights: how they were made (steps, data, the weights they continued)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from upocr.weights.formats import DEFAULT_WEIGHTS, TRAINING_KEY, WEIGHTS_FILE, safetensors_metadata


def training_record(path: str | Path | None = None) -> dict[str, Any] | None:
    """How a saved model was trained (`save_pretrained(..., training=...)`), None when not recorded.

    path: a weights directory or .safetensors file; None -> the bundled default weights."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if path.is_dir():
        path = path / WEIGHTS_FILE
    try:
        record = safetensors_metadata(path).get(TRAINING_KEY)
        return json.loads(record) if record else None
    except (OSError, ValueError):
        return None


def training_stages(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A training record and the records of the weights it continued (`init_record`, and so on down),
    newest first: one entry per training stage."""
    stages: list[dict[str, Any]] = []
    while isinstance(record, dict) and len(stages) < 64:  # a chain of stages, never a cycle
        stages.append(record)
        record = record.get("init_record")
    return stages
