"""The API's typed parameters and answers (pydantic models: validated, and described in /openapi.json)."""


from typing import Any, Literal

from pydantic import BaseModel, Field

from upocr.predict import REMOVAL_MODES

TaskName = Literal["all", "removal", "segmentation", "tampering"]


class RequestOptions(BaseModel):
    """Predictor options a request may set (the rest, e.g. size and precision, are the server's)."""

    removal_mode: Literal[REMOVAL_MODES] | None = Field(  # type: ignore[valid-type]
        None, description="how text removal builds its result, as remove-text --mode (default: the server's)")
    threshold: float | None = Field(None, gt=0, lt=1, description="segmentation threshold (default: the weights')")
    grow: int | None = Field(None, ge=0, le=64, description="pixels the fill modes grow the text mask by")
    tile: Literal["auto", "off"] | None = Field(
        None, description="auto: native tiles for large images; off: always resized (one forward pass)")

    def predictor_changes(self) -> dict[str, Any]:
        """The `Predictor.with_options` arguments for the options given."""
        changes: dict[str, Any] = {}
        if self.removal_mode is not None:
            changes["removal"] = self.removal_mode
        if self.threshold is not None:
            changes["threshold"] = self.threshold
        if self.grow is not None:
            changes["grow"] = self.grow
        if self.tile is not None:
            changes["tile"] = None if self.tile == "off" else "auto"
        return changes


class ErrorAnswer(BaseModel):
    error: str = Field(description="one line saying what was wrong")


class QueueState(BaseModel):
    capacity: int
    admitted: int
    running: int


class HealthAnswer(BaseModel):
    status: Literal["ok"]
    api: str
    model: str = Field(description="the weights, by file name only")
    device: str
    size: int
    precision: str
    backend: str
    tasks: list[str]
    samples: list[str]
    max_upload_bytes: int
    max_pixels: int
    preview_max_side: int
    worker: int = Field(description="the process id of the worker that answered")
    queue: QueueState


class Picture(BaseModel):
    kind: str = Field(description="result, overlay, mask or classes")
    label: str
    filename: str
    png: str = Field(description="base64 PNG at result_width x result_height")


class LegendEntry(BaseModel):
    label: str
    colour: str


class Region(BaseModel):
    polygon: list[list[float]] = Field(description="the word's outline, [x, y] in the upload's pixels")
    box: list[float] = Field(description="[x, y, width, height] in the upload's pixels")
    pixels: int = Field(description="text pixels of the word")
    tampered_score: float | None = Field(None, description="tampering: share of the word's text pixels classed tampered")
    label: str | None = Field(None, description="tampering: real text or tampered text")


class TaskResult(BaseModel):
    task: str
    title: str
    legend: list[LegendEntry]
    images: list[Picture]
    regions: list[Region] | None = Field(description="words found (segmentation, tampering); null for removal")
    text_fraction: float | None = None


class PredictionAnswer(BaseModel):
    width: int
    height: int
    preview: bool = Field(description="true: the results are a downscaled preview (result_width x result_height)")
    result_width: int
    result_height: int
    tiled: bool = Field(description="whether the model ran on native tiles (else on the image resized)")
    tasks: list[str]
    seconds: float = Field(description="model time")
    input: str | None = Field(description="the image the results are drawn on, base64 PNG")
    results: list[TaskResult]
