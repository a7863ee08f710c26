"""Build the report's rows from the model, its plan and per-sample shapes."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx

from rcompile.formats.codes import step_exponents
from rcompile.graph import bodies, constant_value, subgraphs
from rcompile.passes.calibrate import Statistics
from rcompile.passes.layers import find_layers
from rcompile.plan import LayerPlan, Plan
from rcompile.report import FP32_BITS, LayerRow, describe_format, describe_formats
from rcompile.shapes import per_sample_shapes


def layer_rows(
    model: onnx.ModelProto, plan: Plan, statistics: Statistics | None = None
) -> tuple[LayerRow, ...]:
    """One row per planned layer, with shapes and MACs for a single sample, and with the
    calibration's `statistics` the accumulator range it saw."""
    shapes = per_sample_shapes(model)
    nodes = {node.name: node for node in model.graph.node}
    return tuple(_row(model, nodes[p.layer.node], p, shapes, statistics) for p in plan.layers)


def unquantized_ops(model: onnx.ModelProto, plan: Plan) -> dict[str, int]:
    """How many nodes of each op type stay FP32 (everything but the planned layers); nodes
    inside an If, Loop or Scan body, which always stay FP32, as `Conv (in If)`."""
    planned = {p.layer.node for p in plan.layers}
    counts = Counter(
        n.op_type for n in model.graph.node if n.name not in planned and n.op_type != "Constant"
    )
    counts.update(f"{inner.op_type} (in {owner})" for owner, inner in nested_nodes(model.graph))
    return dict(counts)


def nested_nodes(graph: onnx.GraphProto) -> list[tuple[str, onnx.NodeProto]]:
    """Every node inside the bodies of `graph`'s control-flow nodes, with the op type of the
    outermost node that holds it."""
    return [
        (node.op_type, inner)
        for node in graph.node
        for body in bodies(node)
        for nested in [body, *subgraphs(body)]
        for inner in nested.node
    ]


def _row(model, node: onnx.NodeProto, plan: LayerPlan, shapes, statistics) -> LayerRow:
    layer = plan.layer
    weight = constant_value(model.graph, layer.weight) if layer.weight else None
    bias = constant_value(model.graph, layer.bias) if layer.bias else None
    input_shapes = tuple(shapes.get(name) for name in layer.inputs)
    output_shape = shapes.get(layer.output)
    weight_shape = tuple(weight.shape) if weight is not None else None
    memory = _memory(weight, plan.weights) + _memory(bias, plan.bias)
    return LayerRow(
        node=layer.node,
        op_type=layer.op_type,
        input_shapes=input_shapes,
        weight_shape=weight_shape,
        output_shape=output_shape,
        macs=layer_macs(node, input_shapes, weight_shape, output_shape),
        parameters=(weight.size if weight is not None else 0)
        + (bias.size if bias is not None else 0),
        inputs=tuple(describe_format(f) for f in plan.inputs),
        output=describe_format(plan.output),
        weights=describe_formats(plan.weights),
        bias=describe_formats(plan.bias),
        parameter_memory_bits=int(memory),
        activation_input_bits=_bits(input_shapes[0], _width(plan.inputs[0])),
        activation_output_bits=_bits(output_shape, _width(plan.output)),
        accumulator=_accumulator(plan, statistics),
    )


def _accumulator(plan: LayerPlan, statistics: Statistics | None) -> dict:
    """The register's width and overflow; with calibration, the largest magnitude the layer's
    sum took there (its FP32 output, before any clamp) in steps of the accumulator grid (the
    product grid, or the bias grid where finer) and the bits a register needs to hold it."""
    entry = plan.accumulator.as_dict()
    grid = _accumulator_exponent(plan)
    observed = statistics.activations.get(plan.layer.output) if statistics else None
    if grid is None or observed is None:
        return entry
    largest = math.ceil(math.ldexp(observed.max_abs, -grid))
    return {**entry, "largest_seen": largest, "bits_needed": largest.bit_length() + 1}


def _accumulator_exponent(plan: LayerPlan) -> int | None:
    """The finest exponent of the layer's accumulator grid, where every part has a format."""
    if None in plan.inputs or (plan.layer.weight and not plan.weights):
        return None
    exponents = step_exponents(plan.inputs[:1]) + (
        step_exponents(plan.weights) if plan.weights else step_exponents(plan.inputs[1:])
    )
    if plan.bias:
        exponents = np.minimum(exponents, step_exponents(plan.bias))
    return int(exponents.min())


def _width(fmt) -> int:
    return FP32_BITS if fmt is None else fmt.bit_width


def _memory(values, formats) -> int:
    if values is None:
        return 0
    return values.size * (max(f.bit_width for f in formats) if formats else FP32_BITS)


def _bits(shape: tuple[int, ...] | None, width: int) -> int | None:
    return math.prod(shape) * width if shape else None


def layer_macs(node, input_shapes, weight_shape, output_shape) -> int | None:
    """Multiply-accumulates for one sample."""
    if output_shape is None:
        return None
    outputs = math.prod(output_shape)
    if node.op_type == "Conv" and weight_shape:
        return outputs * math.prod(weight_shape[1:])
    if node.op_type == "ConvTranspose" and weight_shape and input_shapes[0]:
        return math.prod(input_shapes[0]) * math.prod(weight_shape[1:])
    if node.op_type == "Gemm" and weight_shape:
        inner = input_shapes[0][-1] if input_shapes[0] else None
        return outputs * inner if inner else None
    if node.op_type == "MatMul" and input_shapes[0]:
        return outputs * input_shapes[0][-1]
    if node.op_type == "LRN":
        size = next((a.i for a in node.attribute if a.name == "size"), 1)
        return outputs * size
    return None


def inspect_layers(model: onnx.ModelProto) -> list[dict]:
    """The quantizable layers with per-sample shapes, MACs and parameter counts."""
    shapes = per_sample_shapes(model)
    nodes = {node.name: node for node in model.graph.node}
    rows = []
    for layer in find_layers(model):
        weight = constant_value(model.graph, layer.weight) if layer.weight else None
        bias = constant_value(model.graph, layer.bias) if layer.bias else None
        input_shapes = tuple(shapes.get(name) for name in layer.inputs)
        weight_shape = tuple(weight.shape) if weight is not None else None
        output_shape = shapes.get(layer.output)
        rows.append(
            {
                "node": layer.node,
                "op_type": layer.op_type,
                "input_shapes": [list(s) if s else None for s in input_shapes],
                "weight_shape": list(weight_shape) if weight_shape else None,
                "output_shape": list(output_shape) if output_shape else None,
                "macs": layer_macs(nodes[layer.node], input_shapes, weight_shape, output_shape),
                "parameters": sum(t.size for t in (weight, bias) if t is not None),
            }
        )
    return rows
