"""`QuantizeDFP(bw, fl, signed)` as ONNX functions, one overload per storage type.

Where the codes fit a standard integer type the body is Clip, QuantizeLinear,
DequantizeLinear with scale 2**-fl: QuantizeLinear rounds half to even and saturates, and
scaling by a power of two is exact, so this is the reference bit for bit (and onnxruntime
can fuse the pair into integer kernels). Wider codes use the float overload:
Mul, Round, Clip, Mul, and an added +0 that turns a negative zero into +0.
"""

from __future__ import annotations

import numpy as np
import onnx

from rcompile.formats import DFP
from rcompile.onnx_ops.builder import FunctionBody

NAME = "QuantizeDFP"
ATTRIBUTES = ["bw", "fl", "signed"]
INTEGER_STORAGE = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16}
OVERLOADS = (*INTEGER_STORAGE, "float")


def overload(fmt: DFP) -> str:
    """The overload for a format: the narrowest standard integer that holds every code."""
    for name, dtype in INTEGER_STORAGE.items():
        info = np.iinfo(dtype)
        if info.min <= fmt.code_min and fmt.code_max <= info.max and (info.min < 0) == fmt.signed:
            return name
    return "float"


def _code_range(body: FunctionBody) -> tuple[str, str]:
    """The smallest and largest code as float32 values, from the attributes bw and signed."""
    signed = body.attribute("signed", "int")
    span = body.pow2(body.op("Sub", body.attribute("bw", "int"), signed))
    highest = body.op("Sub", span, body.const(1.0))
    lowest = body.op("Mul", body.op("Neg", span), body.to_float(signed))
    return lowest, highest


def build(overload: str) -> onnx.FunctionProto:
    """The function body for one storage overload."""
    body = FunctionBody()
    fl = body.attribute("fl", "int")
    lowest, highest = _code_range(body)
    if overload == "float":
        codes = body.op("Round", body.op("Mul", "X", body.pow2(fl)))
        codes = body.op("Clip", codes, lowest, highest)
        values = body.op("Mul", codes, body.pow2(body.op("Neg", fl)))
        return body.function(NAME, ATTRIBUTES, body.op("Add", values, body.const(0.0)), overload)
    step = body.pow2(body.op("Neg", fl))
    clipped = body.op("Clip", "X", body.op("Mul", lowest, step), body.op("Mul", highest, step))
    zero_point = body.const(np.zeros((), dtype=INTEGER_STORAGE[overload]))
    codes = body.op("QuantizeLinear", clipped, step, zero_point)
    values = body.op("DequantizeLinear", codes, step, zero_point)
    return body.function(NAME, ATTRIBUTES, values, overload)


def attributes(fmt: DFP) -> dict[str, int]:
    return {"bw": fmt.bw, "fl": fmt.fl, "signed": int(fmt.signed)}
