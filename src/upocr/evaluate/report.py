"""Tables (markdown, shown on screen too) and JSON for evaluation results.

Results are kept as {task: {method: metrics}} where metrics are the dicts the metric functions return.
NaN (a ratio with an empty denominator) prints as "n/a" and is written to JSON as null.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from upocr.evaluate.baselines import ORACLE_BASELINES
from upocr.tasks import Task
from upocr.utils import atomic_output

# (column title, key path, format) per task; higher/lower-is-better arrows as in the papers.
_COLUMNS: dict[Task, list[tuple[str, tuple[str, ...], str]]] = {
    Task.TEXT_REMOVAL: [
        ("PSNR ↑", ("psnr",), "{:.2f}"),
        ("MSSIM ↑", ("mssim",), "{:.4f}"),
        ("MSE ↓", ("mse",), "{:.5f}"),
        ("AGE ↓", ("age",), "{:.3f}"),
        ("pEPs ↓", ("peps",), "{:.5f}"),
        ("pCEPs ↓", ("pceps",), "{:.5f}"),
        ("FID ↓", ("fid",), "{:.2f}"),
    ],
    Task.TEXT_SEGMENTATION: [
        ("fgIoU ↑", ("fg_iou",), "{:.4f}"),
        ("P ↑", ("precision",), "{:.4f}"),
        ("R ↑", ("recall",), "{:.4f}"),
        ("F ↑", ("f_score",), "{:.4f}"),
    ],
    Task.TAMPERED_TEXT_DETECTION: [
        ("real IoU", ("real", "iou"), "{:.4f}"),
        ("real P", ("real", "precision"), "{:.4f}"),
        ("real R", ("real", "recall"), "{:.4f}"),
        ("real F", ("real", "f_score"), "{:.4f}"),
        ("tampered IoU", ("tampered", "iou"), "{:.4f}"),
        ("tampered P", ("tampered", "precision"), "{:.4f}"),
        ("tampered R", ("tampered", "recall"), "{:.4f}"),
        ("tampered F", ("tampered", "f_score"), "{:.4f}"),
        ("mIoU ↑", ("miou",), "{:.4f}"),
        ("mF ↑", ("mf",), "{:.4f}"),
    ],
}


def _lookup(metrics: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = metrics
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def format_value(value: Any, fmt: str) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return fmt.format(value)


def markdown_table(task: Task, methods: Mapping[str, Mapping[str, Any]]) -> str:
    """One markdown table: a row per method (model, baselines), the task's metric columns, image count."""
    columns = _COLUMNS[task]
    lines = [
        "| method | " + " | ".join(title for title, _, _ in columns) + " | images |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for method, metrics in methods.items():
        cells = [format_value(_lookup(metrics, path), fmt) for _, path, fmt in columns]
        label = f"{method} (oracle: reads ground truth)" if method in ORACLE_BASELINES else method
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {metrics.get('count', 0)} |")
    notes = sorted({str(m["fid_missing"]) for m in methods.values() if m.get("fid_missing")})
    for note in notes:
        lines.append(f"\nFID: {note}.")
    return "\n".join(lines)


def markdown_report(results: Mapping[Task, Mapping[str, Mapping[str, Any]]], *, title: str | None = None) -> str:
    """All tasks' tables in one markdown document (a heading per task)."""
    parts = [f"# {title}\n"] if title else []
    for task, methods in results.items():
        parts.append(f"## {task.title.capitalize()}\n\n{markdown_table(task, methods)}\n")
    return "\n".join(parts)


def json_safe(value: Any) -> Any:
    """Replace NaN/inf floats by None (JSON has no NaN) and Paths by strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


