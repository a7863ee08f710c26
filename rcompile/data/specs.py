"""What the model expects of its data, and the checks that hold every source to it.

An `InputSpec` is the model's view of one input, taken from the graph once so that the loaders
never touch protobuf. The checks here are shared by every source (arrays and images), so a
given mistake gets the same message whichever way the data arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from rcompile.errors import CalibrationError, ModelImportError
from rcompile.importer import graph_inputs

Dim = int | str | None
NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats: what a model can take


@dataclass(frozen=True)
class InputSpec:
    """One real model input: its name, its shape (None or a name for a dynamic dimension),
    the NumPy dtype its data is cast to, and the axis that counts samples (see
    `input_specs`)."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype
    batch_axis: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def sample_shape(self) -> tuple[Dim, ...]:
        """The shape of one sample: the input's shape without its batch axis."""
        axis = self.batch_axis
        return self.shape[:axis] + self.shape[axis + 1 :]

    @property
    def shape_text(self) -> str:
        """The shape the data must have, as users should write it: samples first (`N`,
        whatever batch size the model declares, and on whichever axis), `N` for dynamic dims."""
        dims = ["N"] + [d if isinstance(d, int) else "N" for d in self.sample_shape]
        return format_shape(dims)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers), in graph order.

    An input counts samples on axis 0, unless the model fixes its axis 0 and names another
    axis as the first axis of another input or output is named: a recurrent state
    (2, N, 128) beside an input (N, T, 40) counts them on axis 1."""
    specs = [_spec(value) for value in graph_inputs(model)]
    firsts = [spec.shape[0] for spec in specs if spec.shape]
    firsts += [_dim(out.type.tensor_type.shape.dim[0]) for out in model.graph.output if _rank(out)]
    batch_names = {dim for dim in firsts if isinstance(dim, str)}
    return [replace(spec, batch_axis=_batch_axis(spec, batch_names)) for spec in specs]


def _batch_axis(spec: InputSpec, batch_names: set[str]) -> int:
    if not spec.shape or not isinstance(spec.shape[0], int):
        return 0
    named = [axis for axis, dim in enumerate(spec.shape) if dim in batch_names]
    return named[0] if named else 0


def _rank(value: onnx.ValueInfoProto) -> int:
    tensor = value.type.tensor_type
    return len(tensor.shape.dim) if tensor.HasField("shape") else 0


def _spec(value: onnx.ValueInfoProto) -> InputSpec:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        raise ModelImportError(
            f"model input '{value.name}' has no tensor shape; give it one before calibrating"
        )
    shape = tuple(_dim(dim) for dim in tensor.shape.dim)
    return InputSpec(value.name, shape, onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or None


def format_shape(dims: Sequence[object]) -> str:
    """`(N, 3, 224, 224)`; a one-element shape keeps no trailing comma, unlike a tuple."""
    return "(" + ", ".join(str(d) for d in dims) + ")"


def first_line(error: BaseException) -> str:
    """The first line of an underlying error, for the parenthesis of a one-line message."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def check_array(spec: InputSpec, shape: tuple[int, ...], dtype: np.dtype, source: str) -> None:
    """Reject data whose dtype or shape the model cannot take, before any of it is read."""
    if dtype.kind not in NUMERIC_KINDS:
        raise CalibrationError(
            f"{source}: input '{spec.name}' has dtype {dtype}, which is not numeric; "
            "save numbers (not strings or objects)"
        )
    fits = len(shape) == len(spec.shape) >= 1 and all(
        not isinstance(want, int) or want == got
        for want, got in zip(spec.sample_shape, shape[1:], strict=True)
    )
    if not fits:
        raise CalibrationError(
            f"{source}: input '{spec.name}' must have shape {spec.shape_text} "
            f"(samples first), but the data has shape {format_shape(shape)}"
            + (f"; hold it constant with --input {spec.name}=VALUE" if not spec.shape else "")
        )


def cast_checked(spec: InputSpec, data: np.ndarray, first: int, source: str) -> np.ndarray:
    """Cast samples `first`, `first + 1`, ... to the model's dtype and stop NaN and inf here,
    with the sample's index, because past this point they only poison the statistics."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught just below
        out = np.ascontiguousarray(data, dtype=spec.dtype)
    checked = out if out.dtype.kind == "f" else np.asarray(data)
    if checked.dtype.kind == "f":
        _require_finite(spec.name, checked, first, source)
    return out


def _require_finite(name: str, data: np.ndarray, first: int, source: str) -> None:
    finite = np.isfinite(data).all(axis=tuple(range(1, data.ndim)))
    if finite.all():
        return
    bad = int(np.argmin(finite))
    kind = "NaN" if np.isnan(data[bad]).any() else "inf"
    raise CalibrationError(
        f"{source}: input '{name}' has {kind} at sample {first + bad}; remove or fix that sample"
    )
