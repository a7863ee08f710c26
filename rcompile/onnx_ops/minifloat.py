"""`QuantizeMiniFloat(exp_bits, mant_bits, variant, exponent_bias)` as an ONNX function.

The body mirrors the reference: clamp to +-max, find the exponent exactly (`floor_log2`),
round the value divided by its quantum half to even and scale back (both exact: powers of
two), then flush (Ristretto), keep inf (IEEE) and pass NaN. The format's constants
(exponent range, max) are computed from the attributes, so editing them in a saved model
works; onnxruntime folds them to constants.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import helper

from rcompile.formats import MiniFloat
from rcompile.formats.exact import MAX_POW2_EXP
from rcompile.onnx_ops.builder import FunctionBody

NAME = "QuantizeMiniFloat"
ATTRIBUTES = ["exp_bits", "mant_bits", "variant", "exponent_bias"]


# Formats onnxruntime converts to natively: overload name -> (MiniFloat, target type). A
# saturating QuantizeLinear/DequantizeLinear pair for FP8, a Cast pair after a clip for the
# 16-bit types (which keep inf): the reference bit for bit and far faster than the generic
# body. With another exponent bias, the
# `SCALED` overload scales into the standard format's range and back (exact: powers of two;
# only values far below its smallest subnormal meet float32's, and they round to zero).
NATIVE = {
    "float8e4m3fn": (MiniFloat(4, 3, "fn"), onnx.TensorProto.FLOAT8E4M3FN),
    "float8e5m2": (MiniFloat(5, 2, "ieee"), onnx.TensorProto.FLOAT8E5M2),
    "float16": (MiniFloat(5, 10, "ieee"), onnx.TensorProto.FLOAT16),
    "bfloat16": (MiniFloat(8, 7, "ieee"), onnx.TensorProto.BFLOAT16),
}


ROUNDED = "round_"
SCALED = "_scaled"
# The scale and its inverse are normal float32 numbers; further out, the generic body.
MAX_SCALE_EXPONENT = 126


def overload(fmt: MiniFloat) -> str:
    """A native overload for the standard formats (its attributes are then informative only),
    else the generic body computed from the attributes, `round_<mode>` for another rounding
    than half to even."""
    if fmt.rounding != "even":
        return ROUNDED + fmt.rounding
    standard = replace(fmt, exponent_bias=None)
    name = next((name for name, (native, _) in NATIVE.items() if native == standard), "")
    if not name or fmt.exponent_bias is None:
        return name
    return name + SCALED if abs(fmt.scale_exponent) <= MAX_SCALE_EXPONENT else ""


def build(overload: str = "", bound: dict[str, int | bytes] | None = None) -> onnx.FunctionProto:
    if overload.removesuffix(SCALED) in NATIVE:
        return _native(overload, bound)
    mode = overload.removeprefix(ROUNDED) or "even"
    body = FunctionBody(bound)
    mant_bits = body.attribute("mant_bits", "int")
    variant = body.attribute("variant", "string")
    is_ristretto = body.op("Equal", variant, body.const("ristretto"))
    is_ieee = body.op("Equal", variant, body.const("ieee"))
    is_fn = body.op("Equal", variant, body.const("fn"))

    # The standard bias's exponent range, shifted by standard - exponent_bias.
    half_range = body.pow2(body.op("Sub", body.attribute("exp_bits", "int"), body.const(1)))
    bias = body.op("Sub", body.to_int(half_range), body.const(1))
    shift = body.op("Sub", bias, body.attribute("exponent_bias", "int"))
    emin = body.op("Where", is_ristretto, body.op("Neg", bias), body.op("Sub", body.const(1), bias))
    emin = body.op("Add", emin, shift)
    emax = body.op("Where", is_ieee, bias, body.op("Add", bias, body.const(1)))
    emax = body.op("Min", body.op("Add", emax, shift), body.const(MAX_POW2_EXP))
    top_step = body.op("Add", body.op("Sub", emax, mant_bits), body.to_int(is_fn))
    top_power = body.pow2(emax)
    largest = body.op("Add", top_power, body.op("Sub", top_power, body.pow2(top_step)))
    smallest_normal = body.pow2(emin)

    clamped = body.op("Clip", "X", body.op("Neg", largest), largest)
    magnitude = body.op("Abs", clamped)
    exponent = body.floor_log2(body.op("Max", magnitude, smallest_normal), emin, emax)
    quantum = body.pow2(body.op("Sub", exponent, mant_bits))
    result = body.op("Mul", body.round(body.op("Div", clamped, quantum), mode), quantum)

    flush_below = body.op("Where", is_ristretto, smallest_normal, body.const(0.0))
    keep = body.to_float(body.op("Not", body.op("Less", magnitude, flush_below)))
    result = body.op("Mul", result, keep)
    keep_inf = body.op("And", body.op("IsInf", "X"), is_ieee)
    result = body.op("Where", keep_inf, "X", result)
    result = body.op("Where", body.op("IsNaN", "X"), "X", result)
    declared = ATTRIBUTES if mode == "even" else [*ATTRIBUTES, "rounding"]
    return body.function(NAME, declared, result, overload)


def _native(overload: str, bound: dict[str, int | bytes] | None) -> onnx.FunctionProto:
    """FP8: QuantizeLinear to the float8 type and DequantizeLinear back, saturating, with the
    scale 2**(standard bias - exponent_bias) (1 unscaled): the QDQ form FP8 runtimes read, and
    onnxruntime's faster conversion (1.7x its Cast pair). The 16-bit types: clipped, cast
    there and back, scaled around the casts. Where the format keeps inf (IEEE-like), inf is
    put back after the saturation."""
    fmt, target = NATIVE[overload.removesuffix(SCALED)]
    body = FunctionBody(bound)
    scale = None
    if overload.endswith(SCALED):
        scale = body.pow2(
            body.op("Sub", body.const(fmt.bias), body.attribute("exponent_bias", "int"))
        )
    if target in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
        source = "X"
        if scale is not None:
            source = body.op("Mul", source, body.op("Reciprocal", scale))
        largest = body.const(float(fmt.max))
        source = body.op("Clip", source, body.op("Neg", largest), largest)
        narrow = body.op("Cast", source, to=target)
        result = body.op("Cast", narrow, to=onnx.TensorProto.FLOAT)
        if scale is not None:
            result = body.op("Mul", result, scale)
    else:
        # QuantizeLinear reads Max(X, X), which is X, so that no op onnxruntime matches
        # sits right before it: ClipQuantFusion fails the session on a Clip or Relu before
        # a float8 QuantizeLinear (1.32: "Unexpected data type for QuantizeLinear input
        # y_zero_point of 17"), and WeightBiasQuantization rounds the float weights and bias
        # of a Conv between a DequantizeLinear and a QuantizeLinear to int8 and int32 (a Mul
        # there would be fused into the Conv).
        scale = scale or body.const(1.0)
        zero = body.const(np.zeros((), helper.tensor_dtype_to_np_dtype(target)))
        kept_apart = body.op("Max", "X", "X")
        codes = body.op("QuantizeLinear", kept_apart, scale, zero, saturate=1)
        result = body.op("DequantizeLinear", codes, scale, zero)
    if fmt.has_inf:
        result = body.op("Where", body.op("IsInf", "X"), "X", result)
    return body.function(NAME, ATTRIBUTES, result, overload)


def attributes(fmt: MiniFloat) -> dict[str, int | str]:
    values = {
        "exp_bits": fmt.exp_bits,
        "mant_bits": fmt.mant_bits,
        "variant": fmt.variant,
        "exponent_bias": fmt.bias,
    }
    if fmt.rounding != "even":
        values["rounding"] = fmt.rounding
    return values
