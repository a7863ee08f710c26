"""`QuantizeMiniFloat(exp_bits, mant_bits, variant)` as an ONNX function.

The body mirrors the reference: clamp to +-max, find the exponent exactly (`floor_log2`),
round the value divided by its quantum half to even and scale back (both exact: powers of
two), then flush (Ristretto), keep inf (IEEE) and pass NaN. The format's constants (bias,
exponent range, max) are computed from the attributes, so editing them in a saved model
works; onnxruntime folds them to constants.
"""

from __future__ import annotations

import onnx

from rcompile.formats import MiniFloat
from rcompile.formats.exact import MAX_POW2_EXP
from rcompile.onnx_ops.builder import FunctionBody

NAME = "QuantizeMiniFloat"
ATTRIBUTES = ["exp_bits", "mant_bits", "variant"]


def overload(fmt: object) -> str:
    """One body serves every parameter set."""
    return ""


def build(overload: str = "") -> onnx.FunctionProto:
    body = FunctionBody()
    mant_bits = body.attribute("mant_bits", "int")
    variant = body.attribute("variant", "string")
    is_ristretto = body.op("Equal", variant, body.const("ristretto"))
    is_ieee = body.op("Equal", variant, body.const("ieee"))
    is_fn = body.op("Equal", variant, body.const("fn"))

    half_range = body.pow2(body.op("Sub", body.attribute("exp_bits", "int"), body.const(1)))
    bias = body.op("Sub", body.to_int(half_range), body.const(1))
    emin = body.op("Where", is_ristretto, body.op("Neg", bias), body.op("Sub", body.const(1), bias))
    emax = body.op("Where", is_ieee, bias, body.op("Add", bias, body.const(1)))
    emax = body.op("Min", emax, body.const(MAX_POW2_EXP))
    top_step = body.op("Add", body.op("Sub", emax, mant_bits), body.to_int(is_fn))
    top_power = body.pow2(emax)
    largest = body.op("Add", top_power, body.op("Sub", top_power, body.pow2(top_step)))
    smallest_normal = body.pow2(emin)

    clamped = body.op("Clip", "X", body.op("Neg", largest), largest)
    magnitude = body.op("Abs", clamped)
    exponent = body.floor_log2(body.op("Max", magnitude, smallest_normal), emin, emax)
    quantum = body.pow2(body.op("Sub", exponent, mant_bits))
    result = body.op("Mul", body.op("Round", body.op("Div", clamped, quantum)), quantum)

    flush_below = body.op("Where", is_ristretto, smallest_normal, body.const(0.0))
    keep = body.to_float(body.op("Not", body.op("Less", magnitude, flush_below)))
    result = body.op("Mul", result, keep)
    keep_inf = body.op("And", body.op("IsInf", "X"), is_ieee)
    result = body.op("Where", keep_inf, "X", result)
    result = body.op("Where", body.op("IsNaN", "X"), "X", result)
    return body.function(NAME, ATTRIBUTES, result)


def attributes(fmt: MiniFloat) -> dict[str, int | str]:
    return {"exp_bits": fmt.exp_bits, "mant_bits": fmt.mant_bits, "variant": fmt.variant}
