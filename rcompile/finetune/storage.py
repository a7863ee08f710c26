"""The range a trained weight may take without changing how the model stores it.

rcompile stores weight codes in the narrowest integer type that holds them (see
`rcompile.passes.store_weights`): dfp16 weights whose codes happen to fit int8 are stored as
int8, and a power-of-two layer whose largest weight never reached the top exponent needs one
code fewer. Training may push a weight past that, which would widen the storage. Fine-tuning
keeps the storage instead: each shadow weight is clamped to the largest values of its format
that its stored codes can hold.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from rcompile.formats import DFP, APoT, Format, MiniFloat, Pow2
from rcompile.graph import producers
from rcompile.passes.store_weights import INTEGER_TYPES

_CODE_RANGES = {data_type: (low, high) for data_type, low, high in INTEGER_TYPES}


def stored_codes(model: onnx.ModelProto, value: str) -> tuple[int, np.ndarray] | None:
    """The integer type and the scale (one per channel, or one) of `value`'s stored codes,
    or None where `value` is stored as floats."""
    made_by = producers(model.graph)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    node = made_by.get(value)
    if node is None:
        return None
    if node.op_type == "DequantizeLinear":
        codes, scale = node.input[:2]
    elif node.op_type == "Mul" and node.input[0] in made_by:
        cast = made_by[node.input[0]]
        if cast.op_type != "Cast":
            return None
        codes, scale = cast.input[0], node.input[1]
    else:
        return None
    data_type = initializers[codes].data_type
    if data_type not in _CODE_RANGES:
        return None
    return data_type, numpy_helper.to_array(initializers[scale]).astype(np.float64).reshape(-1)


def storable_limits(
    formats: tuple[Format, ...], data_type: int, scales: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the smallest and largest values of its format that codes of `data_type`
    times its scale represent (float32, exact). One format may come with a scale per channel
    (a bias on a per-channel accumulator grid), and one scale with a format per channel."""
    code_low, code_high = _CODE_RANGES[data_type]
    channels = max(len(formats), scales.size)
    formats = formats * channels if len(formats) == 1 else formats
    scales = np.broadcast_to(scales, (channels,))
    limits = [
        _limits(fmt, code_low * scale, code_high * scale)
        for fmt, scale in zip(formats, scales, strict=True)
    ]
    low, high = np.array(limits, dtype=np.float64).T
    return low.astype(np.float32), high.astype(np.float32)


def _limits(fmt: Format, low: float, high: float) -> tuple[float, float]:
    if isinstance(fmt, DFP):
        step = math.ldexp(1.0, -fmt.fl)
        return max(fmt.min, math.ceil(low / step) * step), min(
            fmt.max, math.floor(high / step) * step
        )
    if isinstance(fmt, Pow2):
        top = min(fmt.max, math.ldexp(1.0, math.floor(math.log2(high))))
        return -top, top
    if isinstance(fmt, APoT):
        levels = fmt.levels
        top = float(levels[np.searchsorted(levels, high, side="right") - 1])
        return -top, top
    if isinstance(fmt, MiniFloat):
        return fmt.min, fmt.max
    raise TypeError(f"no storage limits for {type(fmt).__name__}")
