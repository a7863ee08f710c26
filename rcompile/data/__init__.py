"""Calibration and evaluation data: a folder of images, a `.npz` or a `.npy`, checked against
the model's inputs and read in batches.

    specs = input_specs(model)
    data = open_data("images/", specs, parse_preprocessing("inception"))
    for batch in data.batches(32, limit=500):
        session.run(None, batch.inputs)

Every problem with the data raises `CalibrationError` with a one-line message that names the
file or input and the fix. Shapes, dtypes and counts are checked when the data is opened;
image decoding and NaN/inf checks happen per batch, so only the samples used are read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rcompile.data.arrays import open_npy, open_npz
from rcompile.data.dataset import Batch, Dataset, in_model_layout, subset, with_held
from rcompile.data.held import held_arrays, parse_held
from rcompile.data.images import open_images
from rcompile.data.preprocessing import PRESETS, Preprocessing, parse_preprocessing
from rcompile.data.specs import InputSpec, input_specs
from rcompile.errors import CalibrationError

__all__ = [
    "PRESETS",
    "Batch",
    "Dataset",
    "InputSpec",
    "Preprocessing",
    "input_specs",
    "open_data",
    "parse_held",
    "parse_preprocessing",
]

DEFAULT_PREPROCESSING = "imagenet"


def open_data(
    path: str | Path,
    inputs: Sequence[InputSpec],
    preprocessing: Preprocessing | None = None,
    held: Mapping[str, object] | None = None,
    samples: np.ndarray | None = None,
) -> Dataset:
    """Open calibration or evaluation data for a model whose real inputs are `inputs`.

    `preprocessing` applies to image folders only (None means the `imagenet` preset); arrays
    are taken as already preprocessed, so one setting can serve `--calib images/` and
    `--val data.npz` together. `held` gives inputs held constant (`NAME: value`, see
    `rcompile.data.held`); the data feeds the others."""
    arrays = held_arrays(inputs, held or {})
    if inputs and len(arrays) == len(inputs):
        raise CalibrationError("every input is held constant with --input; the data feeds none")
    fed = [spec for spec in inputs if spec.name not in arrays]
    dataset = _open(Path(path), fed, preprocessing)
    if samples is not None:
        dataset = subset(dataset, samples)
    dataset = in_model_layout(dataset, fed)
    return with_held(dataset, arrays) if arrays else dataset


def _open(path: Path, inputs: Sequence[InputSpec], preprocessing: Preprocessing | None):
    if not inputs:
        raise CalibrationError("the model has no inputs to feed data to")
    if not path.exists():
        raise CalibrationError(
            f"{path}: no such file or folder; give a folder of images, a .npz or a .npy"
        )
    if path.is_dir():
        return open_images(path, inputs, preprocessing or PRESETS[DEFAULT_PREPROCESSING])
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return open_npz(path, inputs)
    if suffix == ".npy":
        return open_npy(path, inputs)
    raise CalibrationError(
        f"{path}: unsupported data file; give a folder of images, a .npz or a .npy"
    )
