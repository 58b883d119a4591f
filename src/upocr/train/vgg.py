"""Frozen VGG16 feature extractor for the text-removal perceptual and style losses.

The original splits torchvision's ``vgg16().features`` into three stages (reference 2.1):
``enc_1 = features[0:5]`` (64 channels, H/2), ``enc_2 = features[5:10]`` (128, H/4),
``enc_3 = features[10:17]`` (256, H/8), fed raw [0, 1] images (no ImageNet normalisation).
The layers here are named like the original's ``vgg16.enc_*`` modules, so both a torchvision VGG16
state dict (``features.{0,2,5,7,10,12,14}.*``) and an original checkpoint's ``vgg16.enc_*`` keys load.
ImageNet weights cannot be downloaded here: they come from a file (:func:`load_vgg16`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from upocr.weights import read_weights

# torchvision `features` index -> our (stage, index-in-stage) name.
TORCHVISION_TO_STAGE = {
    0: "enc_1.0", 2: "enc_1.2",
    5: "enc_2.0", 7: "enc_2.2",
    10: "enc_3.0", 12: "enc_3.2", 14: "enc_3.4",
}  # fmt: skip


def _stage(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


class VGG16Features(nn.Module):
    """The first three VGG16 stages; frozen and always in eval mode. forward -> [f1, f2, f3]."""

    def __init__(self) -> None:
        super().__init__()
        self.enc_1 = _stage(3, 64, 2)
        self.enc_2 = _stage(64, 128, 2)
        self.enc_3 = _stage(128, 256, 3)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG16Features":
        # Frozen feature extractor: never switch to training mode (it has no dropout/BN anyway).
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.enc_1(images)
        f2 = self.enc_2(f1)
        f3 = self.enc_3(f2)
        return [f1, f2, f3]


def vgg16_state_dict(source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Extract the 14 VGG tensors, named ``enc_{1,2,3}.{i}.{weight,bias}``, from any accepted layout.

    Accepted: torchvision VGG16 (``features.N.*``, optionally with ``classifier.*``), an original
    UPOCR/ViTEraser model state dict (``vgg16.enc_*``, possibly ``module.``-prefixed), or our own names.
    """
    found: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        name = key.removeprefix("module.")
        if name.startswith("vgg16."):
            name = name.removeprefix("vgg16.")
        elif name.startswith("features."):
            _, index, param = name.split(".", 2)
            if not index.isdigit() or int(index) not in TORCHVISION_TO_STAGE:
                continue
            name = f"{TORCHVISION_TO_STAGE[int(index)]}.{param}"
        if name.startswith("enc_"):
            found[name] = value
    return found


def _read_tensors(path: Path) -> Mapping[str, torch.Tensor]:
    """The file's tensors through the package's one safe reader (`upocr.weights.read_weights`: safetensors,
    or torch files without unpickling code; an original checkpoint's `model` entry unpacked)."""
    return read_weights(path).state


def load_vgg16(path: str | Path, device: str | torch.device = "cpu") -> VGG16Features:
    """A frozen VGG16Features with the weights from `path` (.pth/.pt or .safetensors).

    Raises ValueError naming the file when it holds no complete VGG16 (all 14 tensors, right shapes).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: VGG16 weights file not found")
    try:
        source = _read_tensors(path)
    except ValueError:
        raise
    except Exception as error:  # unpickling refusals, truncated files, ...
        raise ValueError(f"{path}: cannot read VGG16 weights ({type(error).__name__}: {error})") from error
    model = VGG16Features()
    state = vgg16_state_dict(source)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(
            f"{path}: no VGG16 weights found (missing {len(missing)} of {len(expected)} tensors, e.g. {missing[0]}); "
            "expected a torchvision VGG16 state dict (features.N.*) or an original checkpoint with vgg16.enc_* keys"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ValueError(f"{path}: VGG16 tensor {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}")
    model.load_state_dict({k: state[k].float() for k in expected})
    return model.to(device)
