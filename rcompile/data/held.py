"""Inputs held constant: a sample rate, a flag, a length that every sample shares, given once
on the command line (`--input sr=16000`) instead of per sample in the data."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from rcompile.data.specs import InputSpec
from rcompile.errors import CalibrationError

_HELD = re.compile(r"([^=]+)=(.+)")


def parse_held(texts: Sequence[str]) -> dict[str, list[float]]:
    """`NAME=VALUE[,VALUE...]` options as {name: values}."""
    held = {}
    for text in texts:
        match = _HELD.fullmatch(text.strip())
        try:
            values = [float(v) for v in match[2].split(",")] if match else None
        except ValueError:
            values = None
        if values is None:
            raise CalibrationError(
                f"--input {text!r}: expected NAME=VALUE or NAME=V1,V2,... (e.g. sr=16000)"
            )
        held[match[1]] = values
    return held


def held_arrays(specs: Sequence[InputSpec], given: Mapping[str, object]) -> dict[str, np.ndarray]:
    """The held inputs as arrays of their input's dtype and shape: a scalar input takes one
    value, an input of fixed shape that many values (one value fills it)."""
    by_name = {spec.name: spec for spec in specs}
    arrays = {}
    for name, value in given.items():
        spec = by_name.get(name)
        if spec is None:
            raise CalibrationError(
                f"--input {name}: the model has no input {name!r} (inputs: {', '.join(by_name)})"
            )
        if not all(isinstance(d, int) for d in spec.shape):
            raise CalibrationError(
                f"--input {name}: the input's shape {spec.shape_text} has dynamic dimensions; "
                "only inputs of fixed shape can be held constant"
            )
        values = np.asarray(value, dtype=np.float64).reshape(-1)
        size = int(np.prod(spec.shape, dtype=np.int64))
        if values.size not in (1, size):
            raise CalibrationError(
                f"--input {name}: {values.size} values given, the input holds {size}"
            )
        arrays[name] = np.broadcast_to(values, (size,)).reshape(spec.shape).astype(spec.dtype)
    return arrays
