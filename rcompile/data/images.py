"""A folder of images as model input: decoded, resized, centre-cropped and normalised the way
the model was trained (see `preprocessing`), one batch at a time.

Only the file list is read up front; each batch decodes just its own images, so memory stays
bounded however many images there are. Files are taken in the order of their paths relative to
the folder, so the same folder always gives the same batches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rcompile.data.dataset import Dataset
from rcompile.data.preprocessing import Layout, Preprocessing
from rcompile.data.specs import InputSpec, first_line
from rcompile.errors import CalibrationError

EXTENSIONS = (".jpg", ".jpeg", ".png")
LABEL_PREFIX = re.compile(r"([0-9]+)_")
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Geometry:
    """The image the model takes: crop size, channel count (1 grey, 3 colour) and layout."""

    height: int
    width: int
    channels: int
    layout: Layout


def open_images(root: Path, specs: Sequence[InputSpec], prep: Preprocessing) -> Dataset:
    """The images under `root` (sub-folders included) as input for a one-input image model."""
    source = str(root)
    if len(specs) != 1:
        names = ", ".join(f"'{spec.name}'" for spec in specs)
        raise CalibrationError(
            f"{source}: a folder of images feeds one input, but the model has {len(specs)} "
            f"({names}); save a .npz with one array per input, keyed by the input's name, or "
            "hold the others constant with --input NAME=VALUE"
        )
    spec = specs[0]
    geometry = image_geometry(spec, prep.layout, source)
    mean, std = _channel_constants(prep, geometry.channels, spec.name)
    short = _resize_target(prep, geometry)
    files = scan_images(root)

    def read(start: int, stop: int) -> dict[str, np.ndarray]:
        pixels = np.stack([load_image(path, geometry, short) for path in files[start:stop]])
        if prep.bgr and geometry.channels == 3:
            pixels = pixels[..., ::-1]
        values = (pixels.astype(np.float32) * np.float32(prep.scale) - mean) / std
        if geometry.layout == "NCHW":
            values = values.transpose(0, 3, 1, 2)
        return {spec.name: np.ascontiguousarray(values, dtype=spec.dtype)}

    return Dataset(source, len(files), read, image_labels(root, files))


def scan_images(root: Path) -> list[Path]:
    """Every image file under `root`, sorted by relative path; hidden files and folders (such
    as macOS `._x.jpg` resource forks, which are not images) are skipped."""
    files = [
        path
        for path in root.rglob("*")
        if path.suffix.lower() in EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.is_file()
    ]
    if not files:
        raise CalibrationError(
            f"{root}: no images ({', '.join(EXTENSIONS)}) in this folder or its sub-folders; "
            "add images, or give a .npy or .npz"
        )
    return sorted(files, key=lambda path: path.relative_to(root).parts)


def image_labels(root: Path, files: Sequence[Path]) -> np.ndarray | None:
    """Class indices from class sub-folders (`root/<class>/x.jpg`) or, failing that, from a
    file-name prefix (`0042_x.jpg` is class 42); None when neither convention holds for all."""
    parts = [path.relative_to(root).parts for path in files]
    if all(len(p) > 1 for p in parts):
        classes = _class_indices(root)
        return np.array([classes[p[0]] for p in parts], dtype=np.int64)
    matches = [LABEL_PREFIX.match(p[-1]) for p in parts]
    if all(matches):
        return np.array([int(match.group(1)) for match in matches if match], dtype=np.int64)
    return None


def _class_indices(root: Path) -> dict[str, int]:
    """Integer folder names are the class indices themselves; other names are numbered in
    sorted order, counting every class folder, empty or not, so that indices do not shift."""
    names = sorted(
        path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")
    )
    if all(re.fullmatch(r"[0-9]+", name) for name in names):
        return {name: int(name) for name in names}
    return {name: index for index, name in enumerate(names)}


def image_geometry(spec: InputSpec, layout: Layout | None, source: str) -> Geometry:
    """Crop size, channels and layout from the model input's shape: a channel axis of size 1
    or 3 at axis 1 is NCHW, at axis 3 NHWC, unless `layout` says which."""
    shape = spec.shape
    if len(shape) != 4:
        raise CalibrationError(
            f"{source}: images need a 4-D model input, but '{spec.name}' has shape "
            f"{spec.shape_text}; give a .npy or .npz instead"
        )
    layout = layout or _infer_layout(spec, source)
    axes = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    channels, height, width = (shape[axis] for axis in axes)
    if channels not in (1, 3):
        raise CalibrationError(
            f"{source}: model input '{spec.name}' of shape {spec.shape_text} has no channel "
            f"axis of size 1 or 3 for layout {layout}"
        )
    if not isinstance(height, int) or not isinstance(width, int):
        raise CalibrationError(
            f"{source}: model input '{spec.name}' has a dynamic height or width "
            f"{spec.shape_text}; fix the model's input size, or give a .npy or .npz"
        )
    return Geometry(height, width, channels, layout)


def _infer_layout(spec: InputSpec, source: str) -> Layout:
    if spec.shape[1] in (1, 3):
        return "NCHW"
    if spec.shape[3] in (1, 3):
        return "NHWC"
    raise CalibrationError(
        f"{source}: cannot tell the channel axis of model input '{spec.name}' "
        f"{spec.shape_text}; set the layout to NCHW or NHWC"
    )


def _channel_constants(
    prep: Preprocessing, channels: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    if channels == 1 and 3 in (len(prep.mean), len(prep.std)):
        raise CalibrationError(
            f"model input '{name}' has 1 channel (grey) but the preprocessing has a mean and "
            "std per colour channel; use a single mean and std (e.g. unit, raw or inception)"
        )
    return np.float32(prep.mean), np.float32(prep.std)


def _resize_target(prep: Preprocessing, geometry: Geometry) -> int:
    crop = max(geometry.height, geometry.width)
    if prep.resize is not None and prep.resize < crop:
        raise CalibrationError(
            f"resize {prep.resize} is smaller than the model's input "
            f"{geometry.height}x{geometry.width}; resize to at least {crop}"
        )
    return prep.resize or crop


# Above this many pixels a resized image is resampled only where the crop takes it.
MAX_RESIZED_PIXELS = 4096 * 4096


def load_image(path: Path, geometry: Geometry, short: int) -> np.ndarray:
    """One image as (height, width, channels) uint8: shorter side resized to `short`
    (bilinear), then the centre cropped out, as torchvision's Resize and CenterCrop do."""
    try:
        with Image.open(path) as image:
            converted = image.convert("L" if geometry.channels == 1 else "RGB")
    except IMAGE_ERRORS as error:
        raise CalibrationError(
            f"{path}: cannot read the image ({first_line(error)}); remove or replace the file"
        ) from error
    cropped = _resized_centre(converted, short, geometry.height, geometry.width)
    return np.asarray(cropped, dtype=np.uint8).reshape(geometry.height, geometry.width, -1)


def _resized_centre(image: Image.Image, short: int, height: int, width: int) -> Image.Image:
    """The centre `height` x `width` of `image` with its shorter side resized to `short`.
    An image whose resized whole would be huge (a 16000 x 1 strip resizes to 4,096,000 x 256
    pixels) has only its centre resampled, from the matching box of the original: nearly
    the same pixels, in memory bounded by the crop."""
    size = _shorter_resized(image.size, short)
    if size == image.size:
        return _centre_crop(image, height, width)
    top, left = round((size[1] - height) / 2), round((size[0] - width) / 2)
    if size[0] * size[1] <= MAX_RESIZED_PIXELS or top < 0 or left < 0:
        return _centre_crop(image.resize(size, Image.Resampling.BILINEAR), height, width)
    sx, sy = image.size[0] / size[0], image.size[1] / size[1]
    box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
    return image.resize((width, height), Image.Resampling.BILINEAR, box=box)


def _shorter_resized(size: tuple[int, int], short: int) -> tuple[int, int]:
    width, height = size
    if width <= height:
        return (short, int(short * height / width))
    return (int(short * width / height), short)


def _centre_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    top = round((image.height - height) / 2)
    left = round((image.width - width) / 2)
    return image.crop((left, top, left + width, top + height))
