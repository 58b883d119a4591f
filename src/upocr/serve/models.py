"""The API's typed parameters and answers (pydantic models: validated, and described in /openapi.json).

The predictor options a request may set are not declared here: `RequestOptions` is made from the fields
of `upocr.options.PredictorOptions` (their types, choices, help and the command line's own parsers for
text), and the values a request gives are checked once more by `PredictorOptions` itself.
"""


import argparse
import dataclasses
import typing
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, BeforeValidator, Field, create_model

from upocr.options import PredictorOptions

TaskName = Literal["all", "removal", "segmentation", "tampering"]


# The options a request may set. The rest are the server's: they decide its memory per request (size,
# batch size, pixel limit), what it loaded (precision, backend, detector file) or what it keeps.
REQUEST_OPTIONS = ("removal", "threshold", "grow", "tile")


def _from_text(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    """A query value (text) through the option's own argparse type: the CLI's parsing and its message."""

    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse(value)
        except argparse.ArgumentTypeError as error:
            raise ValueError(str(error)) from None

    return convert


def _query_field(option: dataclasses.Field, annotation: Any) -> tuple[Any, Any]:
    """(annotation, pydantic Field) of one `PredictorOptions` field as an optional query parameter."""
    meta = option.metadata
    if meta.get("choices"):
        annotation = Literal[tuple(meta["choices"])]  # type: ignore[valid-type]
    if meta.get("type") is not None:
        annotation = Annotated[annotation, BeforeValidator(_from_text(meta["type"]))]
    hint = f" ({meta['metavar']})" if meta.get("metavar") else ""
    return annotation | None, Field(None, description=f"{meta['help']}{hint}; as the command line's {meta['flags'][0]}. "
                                                       "Not given: the server's.")


def _request_options_model() -> type[BaseModel]:
    hints = typing.get_type_hints(PredictorOptions)
    fields = {f.name: _query_field(f, hints[f.name]) for f in dataclasses.fields(PredictorOptions)
              if f.name in REQUEST_OPTIONS}
    model = create_model("RequestOptions", __doc__="Predictor options a request may set (upocr.options.PredictorOptions)",
                         **fields)
    model.predictor_changes = lambda self: {name: getattr(self, name) for name in self.model_fields_set}
    return model


RequestOptions = _request_options_model()


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
    removal: str = Field(description="the default text-removal pipeline: name, what finds the text and what fills it")
    segmentation: str = Field(description="the default text-segmentation finder")
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
    score: float | None = Field(None, description="removal with a word finder: the word detector's confidence")


class TaskResult(BaseModel):
    task: str
    title: str
    legend: list[LegendEntry]
    images: list[Picture]
    regions: list[Region] | None = Field(description="words found (segmentation, tampering; removal when its "
                                         "pipeline runs the word detector); else null")
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
