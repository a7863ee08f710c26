"""One planned layer as integer hardware computes it: codes of the input, weights and bias;
their exact sum on the accumulator's grid (the finer of the product grid and the bias
grid); that sum rounded once to the output format. A layer with any FP32 part (input,
weights or bias) computes in float32 as the ONNX op defines it, then quantizes its output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from rcompile.formats import DFP, Format
from rcompile.formats.codes import step_exponent, step_exponents, to_codes
from rcompile.formats.exact import F32
from rcompile.graph import node_attributes
from rcompile.passes.store_weights import quantize_values
from rcompile.plan import Accumulator
from rcompile.reference import sums
from rcompile.reference.requantize import requantize

# Codes shifted past this many bits leave int64 (its sign bit apart): Python integers then.
INT64_BITS = 62

# op type -> axis of the output that indexes its channels
OUTPUT_CHANNEL_AXIS = {"Conv": 1, "ConvTranspose": 1, "Gemm": -1, "MatMul": -1}


@dataclass(frozen=True)
class LayerSpec:
    """A layer node of the compiled model with its plan. `bias_outside`: the bias arrives as
    the node's last input, from the Add after the layer that the lowering placed there."""

    node: onnx.NodeProto
    inputs: tuple[Format | None, ...]
    output: Format | None
    weights: tuple[Format, ...]
    bias: tuple[Format, ...]
    weight_axis: int | None
    accumulator: Accumulator
    bias_outside: bool = False

    @property
    def attributes(self) -> dict:
        return node_attributes(self.node)


@dataclass(frozen=True)
class LayerCodes:
    """The integer tensors of one run of an integer layer, as hardware holds them; each
    tensor's step is 2**exponent (one exponent per output channel, or one). The bias is on
    the accumulator's grid, where the hardware adds it; the accumulator is after overflow."""

    inputs: tuple[np.ndarray, ...]
    input_exponents: tuple[int, ...]
    weights: np.ndarray | None
    weight_exponents: np.ndarray | None
    bias: np.ndarray | None
    accumulator: np.ndarray
    accumulator_exponents: np.ndarray
    output: np.ndarray | None
    output_exponent: int | None


def run_layer(
    spec: LayerSpec, inputs: list[np.ndarray], float_op
) -> tuple[np.ndarray, LayerCodes | None]:
    """The layer's output (float32 values of its output format) for the node's `inputs`, and
    its integer tensors (None for a layer that computes in float32)."""
    values = list(inputs)
    bias = values.pop() if spec.bias_outside else (values[2] if len(values) > 2 else None)
    for position, fmt in enumerate(spec.inputs):
        if fmt is not None:
            values[position] = fmt.quantize(values[position])
    if spec.weights:
        values[1] = quantize_values(values[1], spec.weights, _axis(spec, values[1]))
    if _integer(spec, bias):
        return _integer_output(spec, values, bias)
    if spec.bias_outside and bias is not None:
        values = [*values[:2], bias.reshape(-1)]
    result = float_op(*values)
    result = spec.output.quantize(result) if spec.output is not None else result
    return result.astype(F32), None


def _integer(spec: LayerSpec, bias) -> bool:
    """Whether every part of the layer has a format (and the op has an integer form)."""
    if spec.node.op_type not in OUTPUT_CHANNEL_AXIS or None in spec.inputs:
        return False
    attributes = spec.attributes
    if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
        return False
    weighted = len(spec.inputs) == 1
    return (not weighted or bool(spec.weights)) and (bias is None or bool(spec.bias))


def _axis(spec: LayerSpec, weights: np.ndarray) -> int | None:
    if len(spec.weights) == 1 or spec.weight_axis is None:
        return None
    return spec.weight_axis % weights.ndim


def _integer_output(spec: LayerSpec, values: list[np.ndarray], bias):
    op = spec.node.op_type
    x_exponent = step_exponents(spec.inputs[:1])
    x = to_codes(values[0], x_exponent, None)
    if len(spec.inputs) == 2:
        second = step_exponents(spec.inputs[1:])
        y = to_codes(values[1], second, None)
        total = sums.matmul(x, y)
        inputs = ((x, y), (int(x_exponent[0]), int(second[0])))
        return _output(spec, total, x_exponent + second, None, None, inputs, None)
    w_exponents = step_exponents(spec.weights)
    w = to_codes(values[1], w_exponents, _axis(spec, values[1]))
    if op == "Conv":
        total = sums.conv(x, w, spec.attributes)
    elif op == "ConvTranspose":
        total = sums.conv_transpose(x, w, spec.node)
    elif op == "Gemm" and spec.attributes.get("transB", 0):
        total = sums.matmul(x, w.T)
    else:
        total = sums.matmul(x, w)
    b = None
    if bias is not None:
        b_exponents = step_exponents(spec.bias)
        b = (to_codes(_bias_values(bias.reshape(-1), spec.bias), b_exponents, 0), b_exponents)
    inputs = ((x,), (int(x_exponent[0]),))
    weights = (w, w_exponents)
    return _output(
        spec, total, x_exponent + w_exponents, b, OUTPUT_CHANNEL_AXIS[op], inputs, weights
    )


def overflow(accumulator: np.ndarray, register: Accumulator) -> np.ndarray:
    """The exact sum as the register holds it: clipped to its codes (`saturate`), or its low
    `bits` bits as a two's-complement number (`wrap`); an exact register keeps it."""
    if register.bits is None or np.all(np.abs(accumulator) <= register.largest):
        return accumulator
    low, high = -register.largest - 1, register.largest
    if register.overflow == "saturate":
        return np.clip(accumulator, low, high)
    values = accumulator.astype(object) if register.bits > 62 else accumulator
    span = 2**register.bits
    remainder = values % span
    return np.where(remainder > high, remainder - span, remainder)


def _bits(codes: np.ndarray) -> int:
    return int(np.abs(codes).max(initial=0)).bit_length()


def _bias_values(bias: np.ndarray, formats: tuple[Format, ...]) -> np.ndarray:
    """The bias quantized to its formats. A wide layer reads its bias in float64, from codes
    float32 may not hold: DFP biases are quantized there in float64, exactly."""
    axis = 0 if len(formats) > 1 else None
    if bias.dtype != np.float64 or np.array_equal(bias.astype(F32), bias):
        return quantize_values(bias.astype(F32), formats, axis)
    if not all(isinstance(fmt, DFP) for fmt in formats):
        raise ValueError("a float64 bias needs DFP formats")
    fl, low, high = (
        np.array([getattr(f, k) for f in formats]) for k in ("fl", "code_min", "code_max")
    )
    return np.ldexp(np.clip(np.rint(np.ldexp(bias, fl)), low, high), -fl)


def _output(spec: LayerSpec, total, product_exponents, bias, axis, inputs, weights):
    """Add the bias on the accumulator grid, apply the register's overflow and round to the
    output format; with the layer's integer tensors."""
    exponent = product_exponents
    bias_codes = None
    if bias is not None:
        codes, bias_exponents = bias
        channels = max(codes.size, product_exponents.size)
        product_exponents = np.broadcast_to(product_exponents, channels)
        exponent = np.minimum(product_exponents, np.broadcast_to(bias_exponents, channels))
        shifts = bias_exponents - exponent
        if codes.dtype != object and _bits(codes) + int(shifts.max(initial=0)) > INT64_BITS:
            codes = sums.python_ints(codes)  # a bias far above a mini float's finest products
        bias_codes = codes << shifts
    shape = [1] * total.ndim
    if exponent.size > 1:
        shape[axis] = exponent.size
    accumulator = total << (product_exponents - exponent).reshape(shape)
    if bias is not None:
        accumulator = accumulator + bias_codes.reshape(shape)
    accumulator = overflow(accumulator, spec.accumulator)
    grid = exponent.reshape(shape) if exponent.size > 1 else exponent.reshape(())
    if spec.output is None:
        result = np.ldexp(accumulator.astype(np.float64), grid).astype(F32)
        output_codes, output_exponent = None, None
    else:
        result = requantize(accumulator, grid, spec.output)
        output_exponent = step_exponent(spec.output)
        output_codes = to_codes(result, np.array([output_exponent]), None)
    codes = LayerCodes(
        inputs=inputs[0],
        input_exponents=inputs[1],
        weights=None if weights is None else weights[0],
        weight_exponents=None if weights is None else weights[1],
        bias=bias_codes,
        accumulator=accumulator,
        accumulator_exponents=exponent,
        output=output_codes,
        output_exponent=output_exponent,
    )
    return result, codes
