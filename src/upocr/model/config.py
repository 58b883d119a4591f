"""Model architecture configs as plain data.

A config fully determines the network; checkpoints carry theirs (`config.json` / safetensors metadata /
the original's `args`), so loading never guesses.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class UPOCRConfig:
    """Sizes of the SwinV2 encoder, the mirrored decoder and the bottleneck.

    The bottleneck width is `embed_dim * 8` (the encoder's last stage). The decoder runs its five stages
    at `bottleneck, /2, /4, /8, /16` channels and ends each with a PatchSplit (x2 resolution, /2 channels).
    """

    embed_dim: int = 96
    encoder_depths: tuple[int, ...] = (2, 2, 18, 2)
    encoder_heads: tuple[int, ...] = (3, 6, 12, 24)
    encoder_window: int = 16
    encoder_pretrained_window: int = 16  # normalises the continuous position bias coordinates
    decoder_depths: tuple[int, ...] = (2, 18, 2, 2, 2)
    decoder_heads: tuple[int, ...] = (24, 12, 6, 3, 2)
    decoder_window: int = 8
    decoder_pretrained_window: int = 8
    mlp_ratio: float = 4.0
    cpb_hidden: int = 512  # hidden width of the continuous-position-bias MLP
    encoder_drop_path: float = 0.3
    decoder_drop_path: float = 0.3
    num_tasks: int = 3
    # Extensions of ours, off in the original architecture (paper, mini, and every original checkpoint):
    # image_skip: the input image joins the decoder at 1/2 and full resolution through a small conv fusion
    #   (`ImageFusion`). The original decoder sees nothing finer than the encoder's 1/4-resolution
    #   features, so it must re-synthesise every background pixel: blurry removal, coarse stroke masks.
    image_skip: bool = False
    # removal_residual: the text-removal outputs are `input + decoder output`, so the network only learns
    #   what to change; untouched background passes through exactly.
    removal_residual: bool = False

    def __post_init__(self) -> None:
        # Accept lists (from JSON/YAML) but store tuples so configs stay hashable and comparable.
        for name in ("encoder_depths", "encoder_heads", "decoder_depths", "decoder_heads"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.encoder_depths) != 4 or len(self.encoder_heads) != 4:
            raise ValueError("encoder_depths and encoder_heads need 4 entries (one per stage)")
        if len(self.decoder_depths) != 5 or len(self.decoder_heads) != 5:
            raise ValueError("decoder_depths and decoder_heads need 5 entries (one per stage)")
        for stage, heads in enumerate(self.encoder_heads):
            if (self.embed_dim * 2**stage) % heads:
                raise ValueError(f"encoder stage {stage}: {self.embed_dim * 2**stage} channels not divisible by {heads} heads")
        for stage, heads in enumerate(self.decoder_heads):
            if (self.bottleneck_dim // 2**stage) % heads:
                raise ValueError(f"decoder stage {stage}: {self.bottleneck_dim // 2**stage} channels not divisible by {heads} heads")
        if self.embed_dim % 16:
            raise ValueError(f"embed_dim must be a multiple of 16 (the decoder halves it 4 more times), got {self.embed_dim}")

    @property
    def bottleneck_dim(self) -> int:
        return self.embed_dim * 8

    # ---- presets -------------------------------------------------------------------------

    @staticmethod
    def preset(name: str) -> "UPOCRConfig":
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown model config {name!r}; choose one of {', '.join(PRESETS)}") from None

    # ---- specs: a preset name, or a preset with some fields changed ------------------------

    @classmethod
    def from_spec(cls, spec: "str | Mapping[str, Any]") -> "UPOCRConfig":
        """A preset name, or a mapping {"preset": name (default "small"), <field>: value, ...} (training
        configs write the architecture this way: `model: {preset: small, image_skip: true}`)."""
        if isinstance(spec, str):
            return cls.preset(spec)
        fields = dict(spec)
        base = cls.preset(str(fields.pop("preset", "small")))
        return cls.from_dict({**base.to_dict(), **fields})

    @staticmethod
    def describe_spec(spec: "str | Mapping[str, Any]") -> str:
        """A spec in one line, as training records show it: 'small', 'small + image_skip=True, ...'."""
        if isinstance(spec, str):
            return spec
        fields = dict(spec)
        base = str(fields.pop("preset", "small"))
        return " + ".join([base, ", ".join(f"{k}={v}" for k, v in fields.items())]) if fields else base

    # ---- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UPOCRConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_original_args(cls, args: Any) -> "UPOCRConfig":
        """Architecture from the original checkpoint's pickled `argparse.Namespace` (`swin_*` fields)."""
        get = lambda name, default: getattr(args, name, default)  # noqa: E731 - tiny local accessor
        paper = PRESETS["paper"]
        return cls(
            embed_dim=get("swin_enc_embed_dim", paper.embed_dim),
            encoder_depths=get("swin_enc_depths", paper.encoder_depths),
            encoder_heads=get("swin_enc_num_heads", paper.encoder_heads),
            encoder_window=get("swin_enc_window_size", paper.encoder_window),
            encoder_pretrained_window=get("swin_enc_pretrained_ws", paper.encoder_pretrained_window),
            decoder_depths=get("swin_dec_depths", paper.decoder_depths),
            decoder_heads=get("swin_dec_num_heads", paper.decoder_heads),
            decoder_window=get("swin_dec_window_size", paper.decoder_window),
            decoder_pretrained_window=get("swin_dec_pretrained_ws", paper.decoder_pretrained_window),
            encoder_drop_path=get("swin_enc_drop_path_rate", paper.encoder_drop_path),
            decoder_drop_path=get("swin_dec_drop_path_rate", paper.decoder_drop_path),
            num_tasks=len(get("tasks", range(paper.num_tasks))),
        )


PRESETS: dict[str, UPOCRConfig] = {
    # The published model: SwinV2-S encoder + mirrored decoder, 108,157,401 parameters.
    "paper": UPOCRConfig(),
    # The architecture of ../shared/compat/upocr-mini.pth (5.7M parameters).
    "mini": UPOCRConfig(
        embed_dim=32,
        encoder_depths=(2, 2, 2, 2),
        encoder_heads=(1, 2, 4, 8),
        encoder_window=8,
        encoder_pretrained_window=8,
        decoder_depths=(2, 2, 2, 2, 2),
        decoder_heads=(8, 4, 2, 1, 1),
    ),
    # CPU-trainable: mini's widths with a deeper third encoder stage and drop path suited to short runs.
    "small": UPOCRConfig(
        embed_dim=32,
        encoder_depths=(2, 2, 4, 2),
        encoder_heads=(1, 2, 4, 8),
        encoder_window=8,
        encoder_pretrained_window=8,
        decoder_depths=(2, 2, 2, 2, 2),
        decoder_heads=(8, 4, 2, 1, 1),
        encoder_drop_path=0.1,
        decoder_drop_path=0.1,
    ),
    # For tests: runs in milliseconds on 64x64 inputs.
    "tiny": UPOCRConfig(
        embed_dim=16,
        encoder_depths=(1, 1, 1, 1),
        encoder_heads=(1, 1, 2, 2),
        encoder_window=4,
        encoder_pretrained_window=4,
        decoder_depths=(1, 1, 1, 1, 1),
        decoder_heads=(2, 2, 1, 1, 1),
        decoder_window=4,
        decoder_pretrained_window=4,
        cpb_hidden=32,
        encoder_drop_path=0.1,
        decoder_drop_path=0.1,
    ),
}
