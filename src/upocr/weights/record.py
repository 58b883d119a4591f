"""The training record saved with weights: how they were made (steps, data, the weights they continued).

One type, :class:`TrainingRecord`, that the trainer writes (`upocr.train.trainer`), the scripts that
re-save weights keep (`scripts/bundle_default_model.py`, `scripts/calibrate_threshold.py`), and
:func:`describe_weights` (`upocr demo`, `upocr serve`) reads. It is stored as JSON under `upocr_training`
in the safetensors metadata.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from upocr.weights.formats import DEFAULT_WEIGHTS, TRAINING_KEY, WEIGHTS_FILE, safetensors_metadata

# Every trained record names these, None included ("init": None = trained from scratch); the other
# fields appear only when set.
_TRAINED_FIELDS = ("trained", "steps", "config", "init", "input_size", "images", "data", "seed")
_MAX_STAGES = 64  # a chain of stages, never a cycle


@dataclass
class TrainingRecord:
    trained: bool | None = None  # False: random initialisation (`note` says so); None: not recorded
    steps: int | None = None  # optimizer steps of this stage
    config: str | None = None  # the model option in one line ('small + image_skip=True')
    init: str | None = None  # the weights this stage started from (None: from scratch)
    input_size: int | None = None  # training resolution
    images: int | None = None  # images seen in this stage (steps x images per step)
    data: str | None = None  # the data root, or 'in-memory'
    seed: int | None = None
    init_record: "TrainingRecord | None" = None  # the record of `init`'s weights, and so on down
    segmentation_threshold_from: str | None = None  # scripts/calibrate_threshold.py: where the threshold came from
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys written by other versions, kept as they are

    # ---- JSON -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "extra":
                continue
            if value is None and not (self.trained and item.name in _TRAINED_FIELDS):
                continue
            values[item.name] = value.to_dict() if isinstance(value, TrainingRecord) else value
        return {**self.extra, **values}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, depth: int = 0) -> "TrainingRecord":
        known = {item.name for item in dataclasses.fields(cls)} - {"extra"}
        fields = {k: v for k, v in values.items() if k in known}
        earlier = fields.get("init_record")
        if isinstance(earlier, Mapping) and depth < _MAX_STAGES:
            fields["init_record"] = cls.from_dict(earlier, depth=depth + 1)
        else:
            fields["init_record"] = None
        return cls(**fields, extra={k: v for k, v in values.items() if k not in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainingRecord":
        values = json.loads(text)
        if not isinstance(values, Mapping):
            raise ValueError(f"a training record is a JSON object, got {type(values).__name__}")
        return cls.from_dict(values)

    # ---- reading ----------------------------------------------------------------------------------

    def stages(self) -> list["TrainingRecord"]:
        """This record and the records of the weights it continued, newest first: one per training stage."""
        stages: list[TrainingRecord] = []
        record: TrainingRecord | None = self
        while record is not None and len(stages) < _MAX_STAGES:
            stages.append(record)
            record = record.init_record
        return stages

    def describe(self) -> str:
        """In a few words: 'trained (steps=600, images=57600, ...; last of 4 stages, ...)' or 'UNTRAINED (...)'."""
        if self.trained is False:
            return f"UNTRAINED ({self.note or 'random initialisation'})"
        shown = {"config": self.config, "data": self.data, "images": self.images, "input_size": self.input_size,
                 "steps": self.steps}  # fmt: skip
        summary = ", ".join(f"{k}={v}" for k, v in shown.items() if v is not None)
        stages = self.stages()  # weights continued from others: count every stage
        if len(stages) > 1:
            summary += f"; last of {len(stages)} stages, {sum(stage.images or 0 for stage in stages):,} training images in all"
        return f"trained ({summary})" if self.trained else f"training not recorded ({summary})"


def training_record(path: str | Path | None = None) -> TrainingRecord | None:
    """How a saved model was trained (`save_pretrained(..., training=record.to_dict())`), None when not recorded.

    path: a weights directory or .safetensors file; None -> the bundled default weights."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if path.is_dir():
        path = path / WEIGHTS_FILE
    try:
        text = safetensors_metadata(path).get(TRAINING_KEY)
        return TrainingRecord.from_json(text) if text else None
    except (OSError, ValueError, TypeError):
        return None


def describe_weights(weights: str | Path | None) -> str:
    """Which weights run, and whether they were trained (the record saved with them), in one line."""
    name = str(weights) if weights is not None else f"bundled default {DEFAULT_WEIGHTS}"
    record = training_record(weights)
    if record is None:
        return f"{name} - no training record" + ("" if weights is not None else ": UNTRAINED, results are not meaningful")
    return f"{name} - {record.describe()}"
