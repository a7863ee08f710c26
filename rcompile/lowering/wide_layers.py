"""Layers whose sums float32 cannot hold exactly, summed wider instead (sim).

float32 holds a layer's sum exactly when no partial sum can pass 2**24 steps of its
accumulator grid: the largest input code times the channel's absolute weight codes, plus the
bias code. Where only the bias breaks that (a 32-bit bias on a fine grid, as near-zero
channels have), the layer sums its products in float32 and adds the bias in float64. Where
the products do too (16-bit codes, mini floats with many exponents), it sums in float64,
exact below 2**53 steps whatever order onnxruntime adds in (onnxruntime has no float64 Conv,
so a convolution gathers its input patches and multiplies them with MatMul). Either way the
layer becomes a model-local function, one per layer, that rounds once to the output format
in float64 and casts the exact result to float32; the bias reaches it in float64 from its
int32 codes. The node keeps the layer's name and attributes, so the reference datapath and
Netron see the layer. Sums past 2**53 steps (products of 16-bit mini floats) may round in
float64; `rcompile verify` measures them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rcompile.formats import DFP, Format, MiniFloat
from rcompile.formats.codes import largest_code, step_exponents
from rcompile.graph import (
    consumers,
    initializers,
    node_attributes,
    per_axis,
    producers,
    remove_unread,
)
from rcompile.onnx_ops import DOMAIN, DOMAIN_VERSION, OPSET
from rcompile.onnx_ops.builder import FunctionBody
from rcompile.passes import PassResult
from rcompile.plan import Accumulator, LayerPlan, Plan

FLOAT32_EXACT = 2**24
WIDE = {"Conv": "WideConv", "Gemm": "WideGemm", "MatMul": "WideMatMul"}


def wide_op(op_type: str) -> str | None:
    """The layer op of a wide call's op type (`WideConv_layer3` -> `Conv`), else None."""
    return next((op for op, call in WIDE.items() if op_type.startswith(f"{call}_")), None)


def wide_layers(model: onnx.ModelProto, plan: Plan) -> PassResult:
    """`model` with every planned layer that float32 cannot sum exactly made wide."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    values = _parameter_values(graph)
    users = consumers(graph)
    by_name = {node.name: node for node in graph.node}
    replaced: dict[str, list[onnx.NodeProto]] = {}
    dropped: set[str] = set()
    for index, layer_plan in enumerate(plan.layers):
        node = by_name.get(layer_plan.layer.node)
        if node is None or not _integer(layer_plan, node):
            continue
        weights = values.get(node.input[1]) if layer_plan.weights else None
        bias_add = _bias_add(node, layer_plan, users)
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias_add is not None:
            bias_name = next(i for i in bias_add.input if i != node.output[0])
        bias = values.get(bias_name) if bias_name else None
        sums = sum_bounds(layer_plan, weights, bias)
        products = sums is not None and sums.products <= FLOAT32_EXACT
        register = layer_plan.accumulator
        overflows = register.bits is not None and (sums is None or sums.total > register.largest)
        if sums is not None and sums.total <= FLOAT32_EXACT and not overflows:
            continue
        emitted = []
        if bias_name is not None:
            bias_name, emitted = _in_float64(graph, bias_name)
        if bias_add is not None:  # shaped to broadcast after the layer: a vector inside it
            emitted.append(_flattened(graph, bias_name))
            bias_name = emitted[-1].output[0]
        grid = None if not overflows else (sums.grid if sums is not None else None)
        call, function = _wide(
            node, layer_plan, f"layer{index}", bias_name, weights, products, overflows, grid
        )
        if bias_add is not None:
            call.output[0] = bias_add.output[0]
            dropped.add(bias_add.name)
        replaced[node.name] = [*emitted, call]
        result.functions.append(function)
    if not replaced:
        return PassResult(result, False)
    if not any(entry.domain == DOMAIN for entry in result.opset_import):
        result.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    nodes = [
        n
        for node in graph.node
        if node.name not in dropped
        for n in replaced.get(node.name, [node])
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    remove_unread(graph)
    return PassResult(result, True)


def _integer(layer_plan: LayerPlan, node: onnx.NodeProto) -> bool:
    """Whether the layer computes on integer codes: every part has a format."""
    if node.op_type not in WIDE or None in layer_plan.inputs:
        return False
    attributes = node_attributes(node)
    if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
        return False
    has_bias = layer_plan.layer.bias is not None
    weighted = len(layer_plan.inputs) == 1
    return (not weighted or bool(layer_plan.weights)) and (not has_bias or bool(layer_plan.bias))


@dataclass(frozen=True)
class SumBounds:
    """The largest partial sum of a layer's products, and with its bias, in steps of its
    accumulator grid (2**grid, one exponent per output channel or one)."""

    products: float
    total: float
    grid: np.ndarray


def sum_bounds(layer_plan: LayerPlan, weights, bias) -> SumBounds | None:
    """Bounds from the largest input code and each channel's absolute weight codes; None
    for a product of two activations (the reduced length is not known here)."""
    if weights is None:
        return None
    x_code = largest_code(layer_plan.inputs[0])
    w_exponents = step_exponents(layer_plan.weights)
    axis = layer_plan.layer.weight_axis % weights.ndim
    by_channel = np.moveaxis(weights.astype(np.float64), axis, 0).reshape(weights.shape[axis], -1)
    steps = np.ldexp(1.0, w_exponents).reshape(-1, 1)
    product = x_code * np.abs(by_channel / steps).sum(axis=1)
    product_exponents = step_exponents(layer_plan.inputs[:1]) + w_exponents
    if bias is None or not layer_plan.bias:
        largest = float(product.max(initial=0))
        return SumBounds(largest, largest, product_exponents)
    grid = np.minimum(product_exponents, step_exponents(layer_plan.bias))
    bias_codes = np.abs(bias.reshape(-1).astype(np.float64)) / np.ldexp(1.0, grid)
    products = product * np.ldexp(1.0, product_exponents - grid)
    return SumBounds(float(products.max()), float((products + bias_codes).max()), grid)


def _bias_add(node, layer_plan: LayerPlan, users) -> onnx.NodeProto | None:
    """The Add after a layer node that adds its planned bias (the node has none inside)."""
    if not layer_plan.bias or (len(node.input) > 2 and node.input[2]):
        return None
    readers = users.get(node.output[0], [])
    return readers[0] if len(readers) == 1 and readers[0].op_type == "Add" else None


def _parameter_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Parameters as the sim form stores them (codes Cast and scaled by Mul, a float16 Cast,
    int4 codes under DequantizeLinear, or plain initializers), evaluated."""
    constants = initializers(graph)
    values = dict(constants)
    made_by = producers(graph)
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in constants:
            values[node.output[0]] = constants[node.input[0]].astype(np.float64)
        if node.op_type == "DequantizeLinear" and all(i in constants for i in node.input):
            values[node.output[0]] = _dequantized(node, constants)
    for node in graph.node:
        scaled = node.op_type == "Mul" and made_by.get(node.input[0]) is not None
        if scaled and node.input[0] in values and node.input[1] in constants:
            values[node.output[0]] = values[node.input[0]] * constants[node.input[1]]
    return values


def _dequantized(node: onnx.NodeProto, constants: dict) -> np.ndarray:
    codes = constants[node.input[0]].astype(np.float64)
    scale = per_axis(node, constants[node.input[1]].astype(np.float64), codes.ndim)
    zero = constants[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(1)
    return (codes - per_axis(node, zero.astype(np.float64), codes.ndim)) * scale


def _in_float64(graph: onnx.GraphProto, name: str) -> tuple[str, list[onnx.NodeProto]]:
    """`name` (a parameter) computed in float64, and the nodes that compute it: from its
    codes where the sim form scales them (Cast then Mul), which float32 may not hold, else
    by a Cast of its float32 value."""
    made_by = producers(graph)
    constants = initializers(graph)
    scale = made_by.get(name)
    cast = made_by.get(scale.input[0]) if scale is not None and scale.op_type == "Mul" else None
    wide = f"{name}_float64"
    if cast is None or cast.op_type != "Cast" or scale.input[1] not in constants:
        return wide, [_cast(name, wide, TensorProto.DOUBLE)]
    step = constants[scale.input[1]].astype(np.float64)
    graph.initializer.append(numpy_helper.from_array(step, f"{wide}_step"))
    codes = f"{wide}_codes"
    multiply = helper.make_node("Mul", [codes, f"{wide}_step"], [wide], name=f"{wide}_scale")
    return wide, [_cast(cast.input[0], codes, TensorProto.DOUBLE), multiply]


def _flattened(graph: onnx.GraphProto, name: str) -> onnx.NodeProto:
    shape = f"{name}_vector_shape"
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), shape))
    return helper.make_node("Reshape", [name, shape], [f"{name}_vector"], name=f"{name}_vector")


def _cast(source: str, target: str, to: int) -> onnx.NodeProto:
    return helper.make_node("Cast", [source], [target], name=f"{target}_cast", to=to)


def _wide(
    node,
    layer_plan: LayerPlan,
    suffix: str,
    bias,
    weights,
    products_exact: bool,
    overflows: bool,
    grid: np.ndarray | None,
):
    """The call of the layer's function and the function itself: products summed in float32
    where `products_exact`, else in float64; the float64 bias `B` added in float64; where
    the sum may pass the accumulator, its overflow (on the grid 2**grid, or the product
    grid of two activations)."""
    body = FunctionBody({})
    attributes = node_attributes(node)
    if products_exact:
        layer = helper.make_node(node.op_type, ["X", "W"], ["t0_sum"])
        layer.attribute.extend(node.attribute)
        body.nodes.append(layer)
        total = body.op("Cast", "t0_sum", to=TensorProto.DOUBLE)
    else:
        x = body.op("Cast", "X", to=TensorProto.DOUBLE)
        w = body.op("Cast", "W", to=TensorProto.DOUBLE)
        if node.op_type == "Conv":
            total = _conv(body, x, w, weights.shape, attributes)
        elif node.op_type == "Gemm":
            total = body.op("Gemm", x, w, transB=attributes.get("transB", 0))
        else:
            total = body.op("MatMul", x, w)
    inputs = ["X", "W"]
    if bias is not None:
        b = "B"
        if node.op_type == "Conv":
            shape = np.array([-1] + [1] * (len(weights.shape) - 2), np.int64)
            b = body.op("Reshape", b, body.const(shape))
        total = body.op("Add", total, b)
        inputs.append("B")
    if overflows:
        if grid is None:
            grid = step_exponents(layer_plan.inputs[:1]) + step_exponents(layer_plan.inputs[1:])
        rank = len(weights.shape) if node.op_type == "Conv" else None
        total = _overflow(body, total, layer_plan.accumulator, grid, rank)
    output = _round_double(body, total, layer_plan.output)
    body.nodes[-1].output[0] = "Y" if body.nodes[-1].output[0] == output else output
    if body.nodes[-1].output[0] != "Y":
        body.nodes.append(helper.make_node("Identity", [output], ["Y"]))
    # One function name per layer, not overloads of one: onnxruntime 1.20 inlines every
    # call of a name with the same overload.
    name = f"{WIDE[node.op_type]}_{suffix}"
    function = helper.make_function(
        DOMAIN,
        name,
        inputs,
        ["Y"],
        body.nodes,
        [helper.make_opsetid("", OPSET)],
        attributes=sorted(attributes),
    )
    call = helper.make_node(
        name,
        [node.input[0], node.input[1], *([bias] if bias else [])],
        list(node.output),
        name=node.name,
        domain=DOMAIN,
    )
    call.attribute.extend(node.attribute)
    return call, function


def _conv(body: FunctionBody, x: str, w: str, shape: tuple, attributes: dict) -> str:
    """A float64 convolution: the input's patches (one strided Slice per kernel offset,
    shape-agnostic) times the weights, grouped, by MatMul."""
    out_channels, group_channels, *kernel = shape
    spatial = len(kernel)
    group = attributes.get("group", 1)
    strides = attributes.get("strides", [1] * spatial)
    dilations = attributes.get("dilations", [1] * spatial)
    pads = attributes.get("pads", [0] * 2 * spatial)
    if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"", ""):
        raise ValueError("a wide convolution with auto_pad is not supported")
    if any(pads):
        full = np.array([0, 0, *pads[:spatial], 0, 0, *pads[spatial:]], np.int64)
        x = body.op("Pad", x, body.const(full))
    axes = np.arange(2, 2 + spatial, dtype=np.int64)
    patches = []
    for offset in np.ndindex(*kernel):
        starts = np.array([o * d for o, d in zip(offset, dilations, strict=True)], np.int64)
        reach = [(k - 1 - o) * d for k, o, d in zip(kernel, offset, dilations, strict=True)]
        ends = np.array([-r if r else 2**62 for r in reach], np.int64)
        piece = body.op(
            "Slice",
            x,
            body.const(starts),
            body.const(ends),
            body.const(axes),
            body.const(np.array(strides, np.int64)),
        )
        patches.append(piece)
    first = patches[0]
    stacked = body.op(
        "Concat",
        *[body.op("Unsqueeze", p, body.const(np.array([2], np.int64))) for p in patches],
        axis=2,
    )
    per_group = group_channels * math.prod(kernel)
    columns = body.op("Reshape", stacked, body.const(np.array([0, group, per_group, -1], np.int64)))
    matrix = body.op(
        "Reshape", w, body.const(np.array([group, out_channels // group, per_group], np.int64))
    )
    total = body.op("MatMul", matrix, columns)
    sizes = body.op("Shape", first)
    shape_out = body.op(
        "Concat",
        body.op(
            "Slice", sizes, body.const(np.array([0], np.int64)), body.const(np.array([1], np.int64))
        ),
        body.const(np.array([out_channels], np.int64)),
        body.op(
            "Slice",
            sizes,
            body.const(np.array([2], np.int64)),
            body.const(np.array([2 + spatial], np.int64)),
        ),
        axis=0,
    )
    return body.op("Reshape", total, shape_out)


def _overflow(body: FunctionBody, value: str, register: Accumulator, grid, rank) -> str:
    """`value` (exact float64, whole steps of 2**grid per output channel) as the register
    holds it: clipped to its codes (`saturate`), or wrapped into them: the remainder of
    value over 2**bits steps, less 2**bits steps where it passes the largest code."""
    steps = np.ldexp(1.0, np.asarray(grid, np.int64))
    if steps.size > 1 and rank is not None:  # a convolution's channels are axis 1
        steps = steps.reshape(-1, *([1] * (rank - 2)))
    elif steps.size == 1:
        steps = steps.reshape(())

    def const(codes: float) -> str:
        return body.const(np.asarray(codes * steps, np.float64))

    if register.overflow == "saturate":
        top = body.op("Min", value, const(register.largest))
        return body.op("Max", top, const(-register.largest - 1))
    span = const(2.0**register.bits)
    remainder = body.op(
        "Sub", value, body.op("Mul", body.op("Floor", body.op("Div", value, span)), span)
    )
    high = body.op("GreaterOrEqual", remainder, const(2.0 ** (register.bits - 1)))
    return body.op(
        "Sub", remainder, body.op("Mul", span, body.op("Cast", high, to=TensorProto.DOUBLE))
    )


def _round_double(body: FunctionBody, value: str, fmt: Format | None) -> str:
    """`value` (exact float64) rounded once to `fmt` and cast to float32 (exact then); the
    nearest float32 where the output is FP32."""
    if fmt is None:
        return body.op("Cast", value, to=TensorProto.FLOAT)
    if isinstance(fmt, DFP):
        scaled = body.op("Mul", value, body.const(_double(math.ldexp(1.0, fmt.fl))))
        codes = body.op(
            "Clip",
            body.round(scaled, fmt.rounding, np.float64),
            body.const(_double(fmt.code_min)),
            body.const(_double(fmt.code_max)),
        )
        codes = body.op("Cast", codes, to=TensorProto.FLOAT)
        zero = body.op("Equal", codes, body.const(0.0))
        codes = body.op("Where", zero, body.const(0.0), codes)  # integers have no -0
        return body.op("Mul", codes, body.const(np.array(fmt.step, np.float32)))
    return _minifloat_double(body, value, fmt)


def _minifloat_double(body: FunctionBody, value: str, fmt: MiniFloat) -> str:
    """The mini-float rounding of the NumPy reference, in float64: clamp, exact exponent
    (a Log estimate corrected against a table of powers of two), round at the quantum, flush
    (Ristretto)."""
    low, high = fmt.emin - 1, fmt.emax + 2
    powers = np.ldexp(1.0, np.arange(low, high + 1))
    table = body.const(powers)
    clamped = body.op("Clip", value, body.const(_double(-fmt.max)), body.const(_double(fmt.max)))
    magnitude = body.op("Abs", clamped)
    floor = body.op("Max", magnitude, body.const(_double(fmt.smallest_normal)))
    estimate = body.op(
        "Floor", body.op("Mul", body.op("Log", floor), body.const(_double(1 / math.log(2))))
    )
    index = body.op(
        "Clip",
        body.op("Cast", estimate, to=TensorProto.INT64),
        body.const(np.array(fmt.emin, np.int64)),
        body.const(np.array(fmt.emax, np.int64)),
    )
    index = body.op("Sub", index, body.const(np.array(low, np.int64)))
    too_high = body.op(
        "Cast", body.op("Greater", body.op("Gather", table, index), floor), to=TensorProto.INT64
    )
    index = body.op("Sub", index, too_high)
    next_power = body.op("Gather", table, body.op("Add", index, body.const(np.array(1, np.int64))))
    too_low = body.op("Cast", body.op("LessOrEqual", next_power, floor), to=TensorProto.INT64)
    index = body.op("Add", index, too_low)
    quanta = body.const(np.ldexp(1.0, np.arange(low, high + 1) - fmt.mant_bits))
    quantum = body.op("Gather", quanta, index)
    rounded = body.op(
        "Mul", body.round(body.op("Div", clamped, quantum), fmt.rounding, np.float64), quantum
    )
    if not fmt.has_subnormals:
        # Below the smallest normal: a zero of the value's sign. As products and a sum of
        # zeros of one sign, since onnxruntime's Where does not keep a selected -0.
        small = body.op("Less", magnitude, body.const(_double(fmt.smallest_normal)))
        keep = body.op("Cast", body.op("Not", small), to=TensorProto.DOUBLE)
        zero = body.op("Mul", clamped, body.const(_double(0.0)))
        rounded = body.op("Add", body.op("Mul", rounded, keep), zero)
    return body.op("Cast", rounded, to=TensorProto.FLOAT)


def _double(value: float) -> np.ndarray:
    return np.array(value, np.float64)
