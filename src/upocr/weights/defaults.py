"""Inference defaults stored with the weights: how these weights are best run, not what the network is.

They travel in the safetensors metadata (`upocr_inference`) and in our training checkpoints
(`inference`). Files written before they moved out of the architecture config keep them among the
config's fields (`input_size`, `segmentation_threshold`): those are read as a fallback, and files
with neither get the original's values (512 px, threshold 0.4).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from upocr.tasks import SEGMENTATION_THRESHOLD

# The original's working resolution (its threshold, "tune this", is upocr.tasks.SEGMENTATION_THRESHOLD).
ORIGINAL_INPUT_SIZE = 512
# Input sides the network accepts are multiples of this: its encoder downsamples 32x and the decoder
# doubles back (defined here, below the network, so that stored sizes are checked on reading).
SIZE_MULTIPLE = 32
# Weights that store no removal pipeline: the model's own text mask, filled by Telea (what every file
# got before pipelines were stored).
DEFAULT_REMOVAL = "telea-fill"
DEFAULT_SEGMENTATION = "model"  # the model's own text mask


@dataclass(frozen=True)
class InferenceDefaults:
    """input_size: the working resolution the weights were trained at (the Predictor's default `size`).
    segmentation_threshold: the text-segmentation threshold on the output's channel mean that suits
    these weights (`scripts/calibrate_threshold.py` sets it from a validation split).
    removal: the text-removal pipeline that suits them (`upocr.removal.REMOVAL_PIPELINES`, checked when a
    Predictor uses it): the bundled synthetic-trained weights store the one that scored best on real
    photos; weights without the key get "telea-fill" (the model's text mask, filled by Telea).
    segmentation: which finder decides the text mask (`upocr.removal.SEGMENTATION_FINDERS`; "model" for
    weights without the key)."""

    input_size: int = ORIGINAL_INPUT_SIZE
    segmentation_threshold: float = SEGMENTATION_THRESHOLD
    removal: str = DEFAULT_REMOVAL
    segmentation: str = DEFAULT_SEGMENTATION

    # The largest working resolution (also `--size`'s limit): the model's memory grows with size^2, so a
    # weights file claiming 8192 made a 160x128 image take 4.9 GB; large images are better run on tiles.
    MAX_INPUT_SIZE: ClassVar[int] = 4096

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, int) or self.input_size <= 0 or self.input_size % SIZE_MULTIPLE:
            raise ValueError(f"input_size must be a positive multiple of {SIZE_MULTIPLE}, got {self.input_size!r}")
        if self.input_size > self.MAX_INPUT_SIZE:
            raise ValueError(f"input_size {self.input_size} is too large (at most {self.MAX_INPUT_SIZE})")
        if not 0.0 < float(self.segmentation_threshold) < 1.0:
            raise ValueError(f"segmentation_threshold must be in (0, 1), got {self.segmentation_threshold}")
        for key in ("removal", "segmentation"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f"{key} must be a name, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InferenceDefaults":
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown inference default keys: {', '.join(unknown)}")
        return cls(**data)


FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(InferenceDefaults))


def split_legacy_fields(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An architecture config as older files store it -> (the architecture alone, the inference
    defaults it carried among its fields)."""
    architecture = {key: value for key, value in config.items() if key not in FIELDS}
    legacy = {key: value for key, value in config.items() if key in FIELDS}
    return architecture, legacy
