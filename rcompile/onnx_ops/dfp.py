"""`QuantizeDFP(bw, fl, signed)` as ONNX functions, one overload per storage width.

Codes of up to 16 bits go through QuantizeLinear/DequantizeLinear with scale 2**-fl:
QuantizeLinear rounds half to even and saturates, and scaling by a power of two is exact, so
this is the reference bit for bit. Codes are stored unsigned, with zero point 2**(width-1)
for signed formats: the values are the same, and onnxruntime fuses 8-bit activations into
integer kernels only when a layer's input and output share one type. Wider codes use the
float overload: Mul, Round, Clip, a Where that makes a zero code +0, Mul.
"""

from __future__ import annotations

import numpy as np
import onnx

from rcompile.formats import DFP
from rcompile.formats.rounding import ROUNDING_MODES
from rcompile.onnx_ops.builder import FunctionBody

NAME = "QuantizeDFP"
ATTRIBUTES = ["bw", "fl", "signed"]
STORAGE = {"uint8": (np.uint8, 8), "uint16": (np.uint16, 16)}
CLIPPED = "_clipped"
LATE = "_late"
OVERLOADS = (
    *STORAGE,
    *(name + CLIPPED for name in STORAGE),
    *(name + CLIPPED + LATE for name in STORAGE),
    "float",
    *(f"float_{mode}" for mode in ROUNDING_MODES[1:]),
)
FLOAT = "float"


FORMS = ("default", "arithmetic", "late", "unclipped")


def overload(fmt: DFP, form: str = "default") -> str:
    """`uint8`/`uint16` when `bw` is exactly that width (QuantizeLinear saturates by itself),
    `uint8_clipped`/`uint16_clipped` for narrower codes, `float` for codes over 16 bits.

    Other forms: `arithmetic` is the float overload whatever the width. `late` (for a layer's
    output) clips narrower codes after the QuantizeLinear/DequantizeLinear pair instead of
    before: the same values (the clip bounds lie on the grid, and the wider pair saturates
    beyond them), but the layer's output goes straight into QuantizeLinear, as onnxruntime
    needs to fuse the layer into integer kernels. `unclipped` is the bare pair of the storage
    width, without the clip to `bw` bits: the same values only for inputs that the clip would
    not change, which the caller must know (the search's evaluation form uses it)."""
    if form not in FORMS:
        raise ValueError(f"DFP quantizer form must be one of {FORMS}, got {form!r}")
    if fmt.rounding != "even":
        return f"{FLOAT}_{fmt.rounding}"  # QuantizeLinear rounds half to even only
    if form == "arithmetic":
        return FLOAT
    for name, (_, width) in STORAGE.items():
        if fmt.bw == width or (fmt.bw < width and form == "unclipped"):
            return name
        if fmt.bw < width:
            return name + CLIPPED + (LATE if form == "late" else "")
    return "float"


def _code_range(body: FunctionBody) -> tuple[str, str]:
    """The smallest and largest code as float32 values, from the attributes bw and signed."""
    signed = body.attribute("signed", "int")
    span = body.pow2(body.op("Sub", body.attribute("bw", "int"), signed))
    highest = body.op("Sub", span, body.const(1.0))
    lowest = body.op("Mul", body.op("Neg", span), body.to_float(signed))
    return lowest, highest


def build(overload: str, bound: dict[str, int | bytes] | None = None) -> onnx.FunctionProto:
    """The function body for one overload.

    A full-width overload is a bare QuantizeLinear/DequantizeLinear pair, the pattern that
    onnxruntime fuses with the neighbouring layers into integer kernels; its `bw` must stay
    the storage width. A clipped overload first clips to the codes of `bw` bits. With
    `bound`, one node's body with its constants folded (see `FunctionBody`).
    """
    body = FunctionBody(bound)
    fl = body.attribute("fl", "int")
    if overload.startswith(FLOAT):
        mode = overload.removeprefix(FLOAT).removeprefix("_") or "even"
        lowest, highest = _code_range(body)
        codes = body.round(body.op("Mul", "X", body.pow2(fl)), mode)
        codes = body.op("Clip", codes, lowest, highest)
        zero = body.op("Equal", codes, body.const(0.0))
        codes = body.op("Where", zero, body.const(0.0), codes)  # integers have no -0
        values = body.op("Mul", codes, body.pow2(body.op("Neg", fl)))
        declared = ATTRIBUTES if mode == "even" else [*ATTRIBUTES, "rounding"]
        return body.function(NAME, declared, values, overload)
    step = body.pow2(body.op("Neg", fl))
    source = "X"
    if overload.endswith(CLIPPED):
        source = _clip(body, "X", step)
    storage, width = STORAGE[overload.removesuffix(LATE).removesuffix(CLIPPED)]
    middle = body.op("Mul", body.attribute("signed", "int"), body.const(2 ** (width - 1)))
    zero_point = body.op("Cast", middle, to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(storage)))
    codes = body.op("QuantizeLinear", source, step, zero_point)
    values = body.op("DequantizeLinear", codes, step, zero_point)
    if overload.endswith(LATE):
        values = _clip(body, values, step)
    return body.function(NAME, ATTRIBUTES, values, overload)


def _clip(body: FunctionBody, value: str, step: str) -> str:
    """Clip to the values of the codes of `bw` bits."""
    lowest, highest = _code_range(body)
    return body.op("Clip", value, body.op("Mul", lowest, step), body.op("Mul", highest, step))


def attributes(fmt: DFP) -> dict[str, int | str]:
    """The node's attributes; `rounding` only where it is not half to even (informative: the
    overload rounds)."""
    values: dict[str, int | str] = {"bw": fmt.bw, "fl": fmt.fl, "signed": int(fmt.signed)}
    if fmt.rounding != "even":
        values["rounding"] = fmt.rounding
    return values
