"""How images become model input: the resize, crop and normalisation a model was trained with.

A model only sees correct activations (and so gets correct ranges) when its calibration images
are prepared exactly as in training, so the common conventions are named presets rather than
numbers each user retypes. A pixel value `x` in 0..255 becomes `(x * scale - mean) / std`, per
channel, with `mean` and `std` in the channel order the model takes (BGR for Caffe models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rcompile.errors import CalibrationError

Layout = Literal["NCHW", "NHWC"]
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Preprocessing:
    """Image preparation.

    resize: the shorter side after resizing (bilinear), before the centre crop to the model's
        height and width; None resizes to the crop size (the larger of height and width), so
        nothing but the longer side's excess is cropped away.
    mean, std: one value for every channel, or one per channel in the model's channel order.
    scale: multiplies the 0..255 pixel values first (1/255 gives 0..1).
    bgr: feed channels as blue, green, red (Caffe) instead of red, green, blue.
    layout: "NCHW" or "NHWC"; None infers it from the model input's shape.
    """

    resize: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0
    bgr: bool = False
    layout: Layout | None = None

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize < 1:
            raise CalibrationError(f"resize must be at least 1 pixel, got {self.resize}")
        for field, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, 3):
                raise CalibrationError(f"{field} needs 1 or 3 values, got {len(values)}")
        if any(value == 0 for value in self.std):
            raise CalibrationError(f"std must not be zero, got {self.std}")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise CalibrationError(f"layout must be NCHW or NHWC, got '{self.layout}'")


PRESETS: dict[str, Preprocessing] = {
    # torchvision and most PyTorch ImageNet models.
    "imagenet": Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1 / 255),
    # TensorFlow Inception, MobileNet, EfficientNet-Lite: (x / 127.5) - 1, in [-1, 1].
    "inception": Preprocessing(mean=(0.5,), std=(0.5,), scale=1 / 255),
    # Caffe models (the original Ristretto networks): BGR, 0..255 minus the per-channel mean.
    "caffe": Preprocessing(mean=(103.939, 116.779, 123.68), bgr=True),
    # Pixels in [0, 1], nothing else (MNIST-style models).
    "unit": Preprocessing(scale=1 / 255),
    # Pixels as they are, 0..255 as floats (models with their own normalisation inside).
    "raw": Preprocessing(),
}


def parse_preprocessing(name: str) -> Preprocessing:
    """The preset called `name` (as given to `--preprocess`)."""
    try:
        return PRESETS[name.strip().lower()]
    except KeyError:
        valid = ", ".join(sorted(PRESETS))
        raise CalibrationError(f"unknown preprocessing '{name}'; choose one of: {valid}") from None
