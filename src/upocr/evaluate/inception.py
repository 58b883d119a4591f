"""The FID Inception-v3 network and its weights: TensorFlow's 2015-12-05 Inception-v3 graph as
pytorch-fid 0.3.0 ports it (`fid_inception_v3()`, which differs from torchvision's Inception-v3 in four
blocks), up to its 2048-d pool3 features. The FID statistics over these features are `upocr.evaluate.fid`.

The weights (`pt_inception-2015-12-05-6726825d.pth`) are downloaded at run time by pytorch-fid; upocr
downloads nothing, so the user names that file (`--fid-weights`). Module and parameter names follow
pytorch-fid's (torchvision's `Inception3` names with `aux_logits=False`, 1008 classes) so its state dict
loads as is, checked key by key.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from upocr.weights import CheckpointError, read_weights

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_IMAGE_SIZE = 299  # pytorch-fid resizes every batch to 299 x 299 inside the network
FID_FEATURE_DIM = 2048  # pool3, pytorch-fid's default --dims
FID_NUM_CLASSES = 1008  # the TF graph's classifier (in the state dict, unused for FID)
BATCH_NORM_EPS = 0.001  # torchvision's BasicConv2d (TF's value)

# BatchNorm counters: absent from state dicts saved before PyTorch 0.4.1, never used in eval mode.
_OPTIONAL_KEY_SUFFIX = ".num_batches_tracked"


class FIDWeightsError(ValueError):
    """A weights file that is not the FID Inception-v3 state dict; one line naming the file."""


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm(eps=0.001) -> ReLU; state dict keys `conv.*`, `bn.*`."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BATCH_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool as TensorFlow's: padded zeros are not counted in the average."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d (pytorch-fid's FIDInceptionA): 1x1 | 5x5 | double 3x3 | TF avg pool + 1x1."""

    def __init__(self, in_channels: int, *, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a (torchvision's InceptionB): strided 3x3 | strided double 3x3 | strided max pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """Mixed_6b..6e (pytorch-fid's FIDInceptionC): 1x1 | 7x7 | double 7x7 (factorised) | TF avg pool + 1x1."""

    def __init__(self, in_channels: int, *, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a (torchvision's InceptionD): 1x1 + strided 3x3 | 1x1 + 7x7 + strided 3x3 | strided max pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b / Mixed_7c (pytorch-fid's FIDInceptionE_1 / FIDInceptionE_2).

    `pool`: "avg" (7b: TF average pool without padded zeros) or "max" (7c: the TF graph max-pools
    here, unlike the paper; pytorch-fid keeps that and so do we).
    """

    def __init__(self, in_channels: int, *, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', not {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = _avg_pool_tf(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 up to pool3. `forward(images in [0, 1], any size) -> (B, 2048) features`.

    `fc` (2048 -> 1008) is part of the weights file and therefore of the state dict, but FID never
    uses it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FID_FEATURE_DIM, FID_NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # pytorch-fid's InceptionV3 wrapper: resize (identity for 299x299 inputs), then [0,1] -> [-1,1].
        x = F.interpolate(images, size=(FID_IMAGE_SIZE, FID_IMAGE_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)  # pool3


def expected_state_keys(*, with_batch_counters: bool = False) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the FID Inception-v3 state dict (pytorch-fid's names), from a meta-device build."""
    with torch.device("meta"):
        network = FIDInceptionV3()
    return {
        key: tuple(value.shape)
        for key, value in network.state_dict().items()
        if with_batch_counters or not key.endswith(_OPTIONAL_KEY_SUFFIX)
    }


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors through the package's one safe reader (`upocr.weights.read_weights`: never
    unpickles code; a `{"state_dict": ...}` wrapper is unpacked); FIDWeightsError naming the file."""
    try:
        return dict(read_weights(path).state)
    except CheckpointError as error:
        raise FIDWeightsError(str(error)) from None


def load_fid_inception(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception-v3 in eval mode with the weights in `path` (pytorch-fid's .pth state dict).

    Every key of pytorch-fid's `fid_inception_v3()` must be present with its shape and nothing else
    (BatchNorm `num_batches_tracked` counters may be absent); otherwise FIDWeightsError, one line.
    Cached: the evaluation of several methods with one weights file reads it once.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FID weights file not found")
    stat = path.stat()
    return _load_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(torch.device(device)))


@functools.lru_cache(maxsize=1)
def _load_cached(path_text: str, _mtime_ns: int, _size: int, device: str) -> FIDInceptionV3:
    path = Path(path_text)
    state = _read_state_dict(path)
    expected = expected_state_keys(with_batch_counters=True)
    required = {k for k in expected if not k.endswith(_OPTIONAL_KEY_SUFFIX)}
    missing = sorted(required - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []) + (
            [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        )
        raise FIDWeightsError(
            f"{path}: not pytorch-fid's FID Inception-v3 state dict ({FID_WEIGHTS_NAME}): keys " + ", ".join(parts)
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != expected[key]:
            raise FIDWeightsError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected {expected[key]}")
        if not key.endswith(_OPTIONAL_KEY_SUFFIX) and not tensor.is_floating_point():
            raise FIDWeightsError(f"{path}: {key} is {tensor.dtype}, expected floating point")
    full = {key: (tensor.float() if tensor.is_floating_point() else tensor) for key, tensor in state.items()}
    for key in expected.keys() - full.keys():  # absent counters
        full[key] = torch.tensor(0, dtype=torch.long)
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        network = FIDInceptionV3()
    network.load_state_dict(full, strict=True, assign=True)
    network = network.to(device).eval().requires_grad_(False)
    network.weights_key = (path_text, _mtime_ns, _size, device)  # identifies cached folder features
    return network
