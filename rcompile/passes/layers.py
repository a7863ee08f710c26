"""Find the layers that do multiplications: the ones Ristretto's layer model quantizes.

Conv, ConvTranspose, Gemm and MatMul with a constant operand have parameters; a MatMul
between two activations and LRN have none. Every other node stays FP32 and is listed as
such in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import onnx

from rcompile.graph import Constants, constant_value, consumers, output_names

# op type -> index of the parameter input (None: the layer has no parameters)
QUANTIZABLE = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "LRN": None}
# op type -> axis of the weight tensor that indexes output channels
OUTPUT_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass(frozen=True)
class Layer:
    """One quantizable layer: its activation inputs, parameters and output."""

    node: str
    op_type: str
    inputs: tuple[str, ...]
    weight: str | None
    bias: str | None
    output: str
    weight_axis: int | None
    output_bounds: tuple[float, float] | None = None


def find_layers(model: onnx.ModelProto) -> list[Layer]:
    """The quantizable layers in graph order. Every node must have a name (the importer sees
    to it) because plans and overrides refer to layers by node name."""
    graph = model.graph
    users = consumers(graph)
    outputs = output_names(graph)
    layers = []
    for node in graph.node:
        if node.op_type not in QUANTIZABLE:
            continue
        layer = _layer(graph, node)
        if layer is not None:
            bounds = None if layer.output in outputs else _clamp_bounds(graph, users[layer.output])
            layers.append(replace(layer, output_bounds=bounds))
    return layers


def _clamp_bounds(
    graph: onnx.GraphProto, users: list[onnx.NodeProto]
) -> tuple[float, float] | None:
    """The interval a Relu or constant Clip that alone consumes a layer's output clamps it to.

    Values outside it are clamped anyway, so the output quantizer's range need only cover it:
    saturating there changes nothing after the clamp and buys resolution.
    """
    return clamp_bounds(graph, users[0]) if len(users) == 1 else None


def clamp_bounds(
    graph: onnx.GraphProto, node: onnx.NodeProto, constants: Constants | None = None
) -> tuple[float, float] | None:
    """The interval a Relu or a Clip with constant bounds clamps its input to, else None.
    `constants`: the graph's, where the caller has them indexed."""
    if node.op_type == "Relu":
        return (0.0, math.inf)
    if node.op_type != "Clip":
        return None
    bounds = [-math.inf, math.inf]
    for position in (1, 2):
        if len(node.input) > position and node.input[position]:
            value = (constants or Constants(graph))(node.input[position])
            if value is None:
                return None
            bounds[position - 1] = float(value)
    return (bounds[0], bounds[1])


def _layer(graph: onnx.GraphProto, node: onnx.NodeProto) -> Layer | None:
    if node.op_type == "LRN":
        return Layer(node.name, node.op_type, (node.input[0],), None, None, node.output[0], None)
    if node.op_type == "MatMul":
        return _matmul(graph, node)
    weight = node.input[1]
    if constant_value(graph, weight) is None:
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and constant_value(graph, bias) is None:
        return None
    axis = OUTPUT_CHANNEL_AXIS[node.op_type]
    if node.op_type == "Gemm" and _attribute(node, "transB", 0):
        axis = 0
    if node.op_type == "Gemm" and _attribute(node, "transA", 0):
        return None
    return Layer(node.name, node.op_type, (node.input[0],), weight, bias, node.output[0], axis)


def _matmul(graph: onnx.GraphProto, node: onnx.NodeProto) -> Layer:
    first, second = node.input[0], node.input[1]
    if constant_value(graph, second) is not None and constant_value(graph, first) is None:
        return Layer(node.name, "MatMul", (first,), second, None, node.output[0], -1)
    return Layer(node.name, "MatMul", (first, second), None, None, node.output[0], None)


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return attribute.i
    return default
