"""upocr: unified pixel-level OCR (text removal, text segmentation, tampered text detection).

    import upocr
    model = upocr.load_model()                 # bundled default weights, or a path to any checkpoint
    predictor = upocr.Predictor(model)
    result = predictor.predict("photo.jpg", "removal")
"""

from upocr.model import UPOCR, UPOCRConfig, build_model
from upocr.model.checkpoint import load_model, save_pretrained
from upocr.options import PredictorOptions
from upocr.tasks import Task
from upocr.weights import CheckpointError, InferenceDefaults, bundled_inference_defaults, describe_weights

__all__ = ["CheckpointError", "InferenceDefaults", "bundled_inference_defaults", "Predictor", "PredictorOptions", "Prediction", "Task",
           "UPOCR", "UPOCRConfig", "build_model", "describe_weights", "load_model", "save_pretrained"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The predictor pulls in image I/O; imported on first use so `import upocr` stays light.
    if name in ("Predictor", "Prediction"):
        from upocr import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'upocr' has no attribute {name!r}")
