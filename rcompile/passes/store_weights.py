"""Offline weight quantization: the quantized values stored as compactly as they are exact.

DFP, Pow2 and APoT values are integers times a power of two, so they are stored as integer codes
of the narrowest standard type (int4, int8, int16, int32) with a DequantizeLinear whose scale
is that power of two (per output channel where the formats are). Mini-float values are
stored as float16 with a Cast when float16 holds them exactly (every 8-bit format here),
else as float32. Dequantizing is exact in every case.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rcompile.formats import DFP, APoT, Format, MiniFloat, Pow2
from rcompile.formats.dfp import code_range, quantize_fixed_point
from rcompile.formats.pow2 import quantize_power_of_two

F32 = np.float32
# (type, smallest, largest) from narrowest to widest
INTEGER_TYPES = (
    (TensorProto.INT4, -8, 7),
    (TensorProto.INT8, -128, 127),
    (TensorProto.INT16, -(2**15), 2**15 - 1),
    (TensorProto.INT32, -(2**31), 2**31 - 1),
)
NUMPY_TYPES = {
    TensorProto.INT4: ml_dtypes.int4,
    TensorProto.INT8: np.int8,
    TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32,
}


@dataclass(frozen=True)
class StoredTensor:
    """The initializers and nodes that produce `output`, the quantized tensor."""

    initializers: tuple[onnx.TensorProto, ...]
    nodes: tuple[onnx.NodeProto, ...]
    output: str


def quantize_values(
    values: np.ndarray, formats: tuple[Format, ...], axis: int | None
) -> np.ndarray:
    """Quantize with one format, or one format per slice along `axis`."""
    values = values.astype(F32)
    if len(formats) == 1:
        return formats[0].quantize(values)
    if families(formats) == {DFP} and len({f.rounding for f in formats}) == 1:
        fl, bw, signed = np.array([(f.fl, f.bw, f.signed) for f in formats], np.int64).T
        code_min, code_max = code_range(bw, signed)
        parameters = (_along(p, values, axis) for p in (fl, code_min, code_max))
        return quantize_fixed_point(values, *parameters, rounding=formats[0].rounding)
    if families(formats) == {Pow2}:
        return quantize_power_of_two(
            values,
            *(
                _along([getattr(f, k) for f in formats], values, axis)
                for k in ("exp_min", "exp_max", "zero")
            ),
        )
    moved = np.moveaxis(values, axis, 0)
    return np.moveaxis(
        np.stack([f.quantize(s) for f, s in zip(formats, moved, strict=True)]), 0, axis
    )


def families(formats: tuple[Format, ...]) -> set[type]:
    """The format classes among `formats` (a layer has thousands of per-channel formats)."""
    return set(map(type, formats))


def _along(values, like: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel parameters shaped to broadcast along `axis` of `like`."""
    shape = [1] * like.ndim
    shape[axis] = len(values)
    return np.asarray(values).reshape(shape)


def store(
    name: str,
    quantized: np.ndarray,
    formats: tuple[Format, ...],
    axis: int | None,
    scales: np.ndarray | None = None,
    types: tuple[int, ...] | None = None,
) -> StoredTensor:
    """Store already quantized values under `name`.

    `scales` (one power of two per format, or None for the formats' own) lets a bias be stored
    on the accumulator's grid. `types` are the integer types the codes may take, narrowest
    first (by default `parameter_types(formats)`); values no type holds stay float32.
    """
    if families(formats) <= {DFP, Pow2, APoT}:
        steps = scales if scales is not None else weight_steps(formats).astype(F32)
        codes = _divide(quantized, steps, axis)
        if np.array_equal(codes, np.rint(codes)):
            stored = _integer_codes(name, codes, steps, axis, types or parameter_types(formats))
            if stored is not None:
                return stored
    if families(formats) == {MiniFloat}:
        for half, suffix in ((np.float16, "float16"), (ml_dtypes.bfloat16, "bfloat16")):
            if _exact_in(quantized, half):
                stored = numpy_helper.from_array(quantized.astype(half), f"{name}_{suffix}")
                cast = helper.make_node(
                    "Cast", [stored.name], [name], name=f"{name}_cast", to=TensorProto.FLOAT
                )
                return StoredTensor((stored,), (cast,), name)
    return float_tensor(name, quantized)


def float_tensor(name: str, values: np.ndarray) -> StoredTensor:
    """The values as a plain float32 initializer."""
    return StoredTensor((numpy_helper.from_array(values.astype(F32), name),), (), name)


def weight_exponents(formats: tuple[Format, ...]) -> np.ndarray:
    """log2 of the value of code 1 of each DFP or (two-term) power-of-two format: -fl for
    DFP, the smallest exponent for powers of two."""
    return np.array([-f.fl if isinstance(f, DFP) else f.exp_min for f in formats], np.int64)


def weight_steps(formats: tuple[Format, ...]) -> np.ndarray:
    """The value of code 1 of each format (float64)."""
    return np.ldexp(1.0, weight_exponents(formats))


def _divide(values: np.ndarray, steps: np.ndarray, axis: int | None) -> np.ndarray:
    if steps.size == 1:
        return values.astype(np.float64) / float(steps[0])
    shape = [1] * values.ndim
    shape[axis] = steps.size
    return values.astype(np.float64) / steps.astype(np.float64).reshape(shape)


def parameter_types(formats: tuple[Format, ...]) -> tuple[int, ...]:
    """The integer types for parameter codes. int4 only for formats of at most 4 bits, else
    int8 at least: onnxruntime fuses int8 weights into integer kernels, not int4. Never int32:
    onnxruntime fuses an int32 DequantizeLinear as if it were a bias on the accumulator grid."""
    if all(f.bit_width <= 4 for f in formats):
        return (TensorProto.INT4, TensorProto.INT8, TensorProto.INT16)
    return (TensorProto.INT8, TensorProto.INT16)


def _integer_codes(
    name: str, codes: np.ndarray, steps: np.ndarray, axis: int | None, types: tuple[int, ...]
) -> StoredTensor | None:
    low, high = codes.min(initial=0), codes.max(initial=0)
    ranges = {t: (lo, hi) for t, lo, hi in INTEGER_TYPES}
    data_type = next((t for t in types if ranges[t][0] <= low and high <= ranges[t][1]), None)
    if data_type is None:
        return None
    tensor = numpy_helper.from_array(codes.astype(NUMPY_TYPES[data_type]), f"{name}_codes")
    zero = numpy_helper.from_array(
        np.zeros(steps.shape if steps.size > 1 else (), NUMPY_TYPES[data_type]), f"{name}_zero"
    )
    scale = numpy_helper.from_array(
        steps.astype(F32) if steps.size > 1 else F32(steps[0]), f"{name}_scale"
    )
    attributes = {"axis": axis} if steps.size > 1 else {}
    node = helper.make_node(
        "DequantizeLinear",
        [tensor.name, scale.name, zero.name],
        [name],
        name=f"{name}_dequantize",
        **attributes,
    )
    return StoredTensor((tensor, scale, zero), (node,), name)


def _exact_in(values: np.ndarray, half) -> bool:
    """Whether the 16-bit float type `half` holds every value (signed zeros included)."""
    with np.errstate(over="ignore"):
        round_trip = values.astype(half).astype(F32)
    return np.array_equal(round_trip.view(np.uint32), values.astype(F32).view(np.uint32))
