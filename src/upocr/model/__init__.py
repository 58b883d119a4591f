"""The UPOCR network: configs, building blocks, the model, and checkpoint loading."""

from upocr.model.config import PRESETS, UPOCRConfig
from upocr.model.upocr import SIZE_MULTIPLE, UPOCR, build_model

__all__ = ["PRESETS", "SIZE_MULTIPLE", "UPOCR", "UPOCRConfig", "build_model"]
