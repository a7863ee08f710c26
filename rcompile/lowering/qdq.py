"""The passes that make a rewritten model `qdq`: standard ops only, for runtimes that know no
model-local functions. Every quantizer becomes its body with its constants folded; a DFP
quantizer of up to 16 bits is then a QuantizeLinear/DequantizeLinear pair that QDQ runtimes
fuse into integer kernels."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rcompile.graph import Constants, Names, consumers, output_names, producers, remove_unread
from rcompile.onnx_ops import DOMAIN
from rcompile.onnx_ops.specialise import specialise
from rcompile.passes import PassResult
from rcompile.passes.layers import clamp_bounds


def inline_quantizers(model: onnx.ModelProto) -> PassResult:
    """`model` with its quantizer nodes replaced by their bodies and `ai.rcompile` dropped."""
    if not any(node.domain == DOMAIN for node in model.graph.node):
        return PassResult(model, False)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    specialise(result)
    return PassResult(result, True)


def integer_clamps(model: onnx.ModelProto) -> PassResult:
    """A Relu or constant Clip between a layer's output quantizer and the next quantizer of
    the same grid, `DequantizeLinear -> Clip -> QuantizeLinear`, becomes a Clip of the codes.

    With bounds on the grid, clamping the value and quantizing it again is clamping its
    code, so the values are the same; but onnxruntime fuses the layers on both sides into
    integer kernels that pass codes to each other, where the float clamp made it convert to
    float and back (on EfficientNet-Lite0 those three passes per ReLU6 cost more than the
    integer convolutions). A ReLU6 keeps its clamp: a power-of-two grid's range does not end
    at 6, so the quantizer's own clip cannot take it over, as it does for scales that
    onnxruntime's quantize_static fits to the clamp."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    made, readers, constants = producers(graph), consumers(graph), Constants(graph)
    names, kept = Names(graph), output_names(graph)
    replaced: dict[str, list[onnx.NodeProto]] = {}
    for clamp in graph.node:
        dequantize = made.get(clamp.input[0]) if clamp.input else None
        users = readers.get(clamp.output[0], [])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(users) != 1:
            continue
        quantize = users[0]
        bounds = _code_bounds(graph, clamp, dequantize, quantize, constants)
        if bounds is None or clamp.output[0] in kept:
            continue
        low, high = (names.fresh(f"{clamp.name}_{end}_code") for end in ("low", "high"))
        for value, name in zip(bounds, (low, high), strict=True):
            graph.initializer.append(numpy_helper.from_array(value, name))
        codes = helper.make_node(
            "Clip", [dequantize.input[0], low, high], [quantize.output[0]], name=clamp.name
        )
        replaced[clamp.name] = [codes]
        replaced[quantize.name] = []
    if not replaced:
        return PassResult(result, False)
    nodes = [new for node in graph.node for new in replaced.get(node.name, [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    remove_unread(graph)
    return PassResult(result, True)


def _code_bounds(graph, clamp, dequantize, quantize, constants) -> tuple | None:
    """The clamp's bounds as codes of the grid that `dequantize` and `quantize` share, when
    they share one (the same per-tensor scale, zero point and code type) and the bounds lie
    on it; else None."""
    bounds = clamp_bounds(graph, clamp, constants)
    if bounds is None or quantize.op_type != "QuantizeLinear" or len(quantize.input) < 3:
        return None
    if len(dequantize.input) < 3 or quantize.input[0] != clamp.output[0]:
        return None
    grids = [[constants(name) for name in node.input[1:3]] for node in (dequantize, quantize)]
    if any(value is None or value.size != 1 for grid in grids for value in grid):
        return None
    (scale, zero), (scale_again, zero_again) = grids
    if scale != scale_again or zero != zero_again or zero.dtype != zero_again.dtype:
        return None
    if zero.dtype.kind not in "iu" or scale <= 0:
        return None
    info = np.iinfo(zero.dtype)
    codes = []
    for bound, limit in zip(bounds, (info.min, info.max), strict=True):
        if math.isinf(bound):
            codes.append(limit)
            continue
        steps = bound / float(scale)
        if not steps.is_integer():
            return None
        codes.append(min(max(int(steps) + int(zero), info.min), info.max))
    return tuple(np.array(code, zero.dtype) for code in codes)
