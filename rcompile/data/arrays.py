"""NumPy sources: a `.npz` with one array per model input (plus optional `labels`), or a
`.npy` holding the one input of a single-input model.

Arrays are the format for data that is already preprocessed, and for models whose inputs are
not images. Nothing is ever unpickled: `allow_pickle=False` always, so a data file cannot run
code. A `.npy` is memory-mapped and streams from disk; a `.npz` is compressed or zipped and
NumPy cannot map it, so its arrays are read into memory (use `.npy` for data larger than that).
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rcompile.data.dataset import Dataset, check_labels, with_held
from rcompile.data.specs import InputSpec, cast_checked, check_array, first_line
from rcompile.errors import CalibrationError

LABELS = "labels"
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def open_npz(path: Path, specs: Sequence[InputSpec]) -> Dataset:
    """Read the arrays the model needs from a `.npz` (keyed by input name, or the one array of
    a single-input model whatever its key) and its `labels`, which is never an input. A 0-d
    array for a scalar input (a sample rate) is held constant for every sample."""
    source = str(path)
    try:
        # Opened here, not by np.load, which leaves the file open when the zip is corrupt.
        with path.open("rb") as file:
            arrays, labels = _read_npz(np.load(file, allow_pickle=False), specs, source)
    except READ_ERRORS as error:
        raise CalibrationError(
            f"{source}: cannot be read as a .npz without pickle ({first_line(error)}); "
            "save it with numpy.savez"
        ) from error
    scalars = {
        spec.name: arrays.pop(spec.name).astype(spec.dtype)
        for spec in specs
        if spec.shape == () and arrays[spec.name].ndim == 0
    }
    fed = [spec for spec in specs if spec.name not in scalars]
    if not fed:
        raise CalibrationError(f"{source}: holds only scalars; there are no samples to feed")
    return with_held(array_dataset(arrays, fed, labels, source), scalars)


def open_npy(path: Path, specs: Sequence[InputSpec]) -> Dataset:
    """Memory-map a `.npy` for a single-input model; batches are read from disk as needed."""
    source = str(path)
    _require_single_input(specs, source)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except READ_ERRORS as error:
        raise CalibrationError(
            f"{source}: cannot be read as a NumPy array without pickle ({first_line(error)}); "
            "save plain numbers with numpy.save"
        ) from error
    if not isinstance(array, np.ndarray):
        array.close()
        raise CalibrationError(f"{source}: is a .npz archive, not a .npy array; rename it .npz")
    return array_dataset({specs[0].name: array}, specs, None, source)


def array_dataset(
    arrays: Mapping[str, np.ndarray],
    specs: Sequence[InputSpec],
    labels: np.ndarray | None,
    source: str,
) -> Dataset:
    """Check shapes, dtypes, sample counts and labels up front (cheap: no data is read), and
    leave the cast and the NaN check to each batch, so samples past `limit` are never read."""
    for spec in specs:
        check_array(spec, arrays[spec.name].shape, arrays[spec.name].dtype, source)
    count = _sample_count(arrays, source)
    if labels is not None:
        labels = check_labels(labels, count, source)

    def read(start: int, stop: int) -> dict[str, np.ndarray]:
        return {
            spec.name: cast_checked(spec, arrays[spec.name][start:stop], start, source)
            for spec in specs
        }

    return Dataset(source, count, read, labels)


def _read_npz(
    npz: object, specs: Sequence[InputSpec], source: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The arrays for the model's inputs, and the labels if there are any."""
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CalibrationError(f"{source}: is a .npy array, not a .npz archive; rename it .npy")
    with npz:
        keys = _choose_keys(npz.files, specs, source)
        arrays = {name: _member(npz, key, source) for name, key in keys.items()}
        labels = _member(npz, LABELS, source) if LABELS in npz.files else None
    return arrays, labels


def _choose_keys(files: Sequence[str], specs: Sequence[InputSpec], source: str) -> dict[str, str]:
    """Map each input name to the key of its array in the archive."""
    keys = [key for key in files if key != LABELS]
    if all(spec.name in keys for spec in specs):
        return {spec.name: spec.name for spec in specs}
    if len(keys) == 1:
        _require_single_input(specs, source)
        return {specs[0].name: keys[0]}
    missing = next(spec.name for spec in specs if spec.name not in keys)
    present = ", ".join(f"'{key}'" for key in files) or "none"
    raise CalibrationError(
        f"{source}: no array for model input '{missing}' (keys present: {present}); "
        "save one array per input, keyed by the input's name"
    )


def _member(npz: np.lib.npyio.NpzFile, key: str, source: str) -> np.ndarray:
    try:
        return npz[key]
    except READ_ERRORS as error:
        if "pickle" not in str(error):
            raise CalibrationError(
                f"{source}: array '{key}' is damaged or cut short ({first_line(error)}); "
                "write the file again"
            ) from error
        raise CalibrationError(
            f"{source}: array '{key}' cannot be read without pickle ({first_line(error)}); "
            "save plain numbers, not Python objects"
        ) from error


def _require_single_input(specs: Sequence[InputSpec], source: str) -> None:
    if len(specs) != 1:
        names = ", ".join(f"'{spec.name}'" for spec in specs)
        raise CalibrationError(
            f"{source}: holds a single array but the model has {len(specs)} inputs ({names}); "
            "save a .npz with one array per input, keyed by the input's name, or hold the "
            "others constant with --input NAME=VALUE"
        )


def _sample_count(arrays: Mapping[str, np.ndarray], source: str) -> int:
    counts = {name: len(array) for name, array in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{name}': {count}" for name, count in counts.items())
        raise CalibrationError(
            f"{source}: inputs have different sample counts ({listed}); give each the same"
        )
    count = next(iter(counts.values()))
    if count == 0:
        raise CalibrationError(f"{source}: has no samples; give at least one")
    return count
