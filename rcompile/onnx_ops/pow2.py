"""`QuantizePow2(exp_min, exp_max, zero)` as an ONNX function.

The body mirrors the reference: clamp the magnitude to [2**(exp_min-1), 2**(exp_max+1)],
find its exponent exactly, round up when the mantissa exceeds float32(sqrt(2)), clip the
exponent, and give magnitudes that round below the range zero (when `zero` is 1).
"""

from __future__ import annotations

import onnx

from rcompile.formats import Pow2
from rcompile.formats.exact import SQRT2_F32
from rcompile.onnx_ops.builder import FunctionBody

NAME = "QuantizePow2"
ATTRIBUTES = ["exp_min", "exp_max", "zero"]


def overload(fmt: object) -> str:
    """One body serves every parameter set."""
    return ""


def build(overload: str = "", bound: dict[str, int | bytes] | None = None) -> onnx.FunctionProto:
    body = FunctionBody(bound)
    exp_min = body.attribute("exp_min", "int")
    exp_max = body.attribute("exp_max", "int")
    below_range = body.op("Sub", exp_min, body.const(1))
    above_range = body.op("Add", exp_max, body.const(1))

    magnitude = body.op("Clip", body.op("Abs", "X"), body.pow2(below_range), body.pow2(above_range))
    floor_exp = body.floor_log2(magnitude, below_range, above_range)
    mantissa = body.op("Div", magnitude, body.pow2(floor_exp))
    round_up = body.to_int(body.op("Greater", mantissa, body.const(float(SQRT2_F32))))
    exponent = body.op("Add", floor_exp, round_up)

    power = body.pow2(body.op("Clip", exponent, exp_min, exp_max))
    has_zero = body.op("Cast", body.attribute("zero", "int"), to=onnx.TensorProto.BOOL)
    to_zero = body.op("And", body.op("Less", exponent, exp_min), has_zero)
    power = body.op("Mul", power, body.to_float(body.op("Not", to_zero)))
    # The zero code is +0: give it sign +1 (an added +0 would be optimised away).
    sign = body.op(
        "Where", body.op("Equal", power, body.const(0.0)), body.const(1.0), body.sign_of("X")
    )
    result = body.op("Mul", power, sign)
    result = body.op("Where", body.op("IsNaN", "X"), "X", result)
    return body.function(NAME, ATTRIBUTES, result)


def attributes(fmt: Pow2) -> dict[str, int]:
    return {"exp_min": fmt.exp_min, "exp_max": fmt.exp_max, "zero": int(fmt.zero)}
