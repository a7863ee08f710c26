"""Hardware cost of a plan, from each layer's sizes measured once: parameter memory,
activation memory, or bit operations (MACs x weight bits x input bits). FP32 tensors cost
32 bits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from rcompile.plan import Plan
from rcompile.report import FP32_BITS
from rcompile.report_build import inspect_layers

COSTS = ("weights", "activations", "bitops")


@dataclass(frozen=True)
class LayerSize:
    weights: int
    bias: int
    outputs: int
    macs: int


def layer_sizes(model: onnx.ModelProto) -> dict[str, LayerSize]:
    """Per quantizable layer: weight and bias elements, output elements and MACs per sample."""
    sizes = {}
    for row in inspect_layers(model):
        weights = math.prod(row["weight_shape"]) if row["weight_shape"] else 0
        outputs = math.prod(row["output_shape"]) if row["output_shape"] else 0
        sizes[row["node"]] = LayerSize(
            weights, row["parameters"] - weights, outputs, row["macs"] or 0
        )
    return sizes


def _bits(formats) -> int:
    present = [f for f in formats if f is not None]
    return (
        max(f.bit_width for f in present) if present and len(present) == len(formats) else FP32_BITS
    )


def plan_cost(plan: Plan, sizes: dict[str, LayerSize], kind: str) -> int:
    """The cost of `plan`; layers the plan leaves out count at FP32."""
    total = 0
    planned = {p.layer.node: p for p in plan.layers}
    for node, size in sizes.items():
        layer = planned.get(node)
        weight_bits = _bits(layer.weights) if layer and layer.weights else FP32_BITS
        bias_bits = _bits(layer.bias) if layer and layer.bias else FP32_BITS
        input_bits = _bits(layer.inputs) if layer else FP32_BITS
        output_bits = _bits((layer.output,)) if layer else FP32_BITS
        if kind == "weights":
            total += size.weights * weight_bits + size.bias * bias_bits
        elif kind == "activations":
            total += size.outputs * output_bits
        else:
            total += size.macs * weight_bits * input_bits
    return total
