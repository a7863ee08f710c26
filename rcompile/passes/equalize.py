"""Cross-layer equalisation (Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", 2019, section 4.1).

Two convolutions in a row, with at most a ReLU or a clip between them (and zero padding or
pooling), compute the same function when output channel i of the first is divided by
s_i > 0 and input channel i of the second multiplied by it: ReLU, padding with zeros and
pooling commute with a positive scale, and a clip does when its bounds are divided by s_i
too (a per-channel clamp, free in hardware). Choosing
s_i = sqrt(r1_i / r2_i), with r1_i and r2_i the channel's largest weight magnitude in either
layer, gives both the same range, sqrt(r1_i r2_i). That is what per-tensor weight formats
want (one range for every channel), and what the second layer's per-channel formats want
too: its channels' ranges no longer differ with the first layer's. A chain of layers is
equalised pair by pair until the scales settle. The FP32 function changes by float rounding
only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rcompile.graph import (
    Constants,
    Names,
    consumers,
    initializers,
    node_attributes,
    output_names,
    remove_initializers,
    replace_initializer,
    values_read,
)
from rcompile.passes import PassResult
from rcompile.passes.layers import clamp_bounds

# Ops that commute with a positive per-channel scale and so may stand between a pair too.
CHANNELWISE = ("Pad", "MaxPool", "AveragePool")
# Sweeps over every pair; each brings a chain's scales closer to their fixed point.
MAX_SWEEPS = 100
# A sweep whose largest scale is within this of 1 ends the iteration.
SETTLED = 1e-6


@dataclass(frozen=True)
class Pair:
    """Two convolutions and the ReLU or Clip between them (None: there is none; zero
    padding and pooling may be there too)."""

    first: onnx.NodeProto
    between: onnx.NodeProto | None
    second: onnx.NodeProto


def equalize_layers(model: onnx.ModelProto) -> PassResult:
    """`model` with every pair of consecutive convolutions (see `pairs`) equalised."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    found = pairs(graph)
    if not found:
        return PassResult(model, False)
    values = initializers(graph)
    weights = {
        node.name: values[node.input[1]].astype(np.float64)
        for pair in found
        for node in (pair.first, pair.second)
    }
    # The first layer of each pair -> the product of its channels' scales.
    scaled = {pair.first.name: np.ones(weights[pair.first.name].shape[0]) for pair in found}
    for _ in range(MAX_SWEEPS):
        largest = 0.0
        for pair in found:
            scale = _equalizing_scale(weights[pair.first.name], weights[pair.second.name], pair)
            _scale_outputs(weights, pair.first, 1 / scale)
            _scale_inputs(weights, pair.second, scale)
            scaled[pair.first.name] *= scale
            largest = max(largest, float(np.abs(np.log(scale)).max()))
        if largest < SETTLED:
            break
    names = Names(graph)
    for node in {node.name: node for pair in found for node in (pair.first, pair.second)}.values():
        replace_initializer(graph, node.input[1], weights[node.name].astype(np.float32))
        if node.name in scaled and len(node.input) > 2 and node.input[2]:
            bias = values[node.input[2]].astype(np.float64) / scaled[node.name]
            replace_initializer(graph, node.input[2], bias.astype(np.float32))
    bounds = set()
    for pair in found:
        if pair.between is not None and pair.between.op_type == "Clip":
            bounds.update(pair.between.input[1:])
            scale, rank = scaled[pair.first.name], weights[pair.first.name].ndim
            _per_channel_clip(graph, pair.between, scale, rank, names)
    read = {name for node in graph.node for name in values_read(node)}
    remove_initializers(graph, bounds - read)
    return PassResult(result, True)


def pairs(graph: onnx.GraphProto) -> list[Pair]:
    """The pairs of Conv nodes, each with constant weights (and bias) that no other node
    reads, where the first's output reaches only the second, directly or through a ReLU or a
    Clip with constant bounds, zero padding and pooling, each read by the next alone."""
    users = consumers(graph)
    outputs = output_names(graph)
    constants = Constants(graph)
    values = initializers(graph)

    def only_reader(name: str) -> onnx.NodeProto | None:
        readers = users.get(name, [])
        return readers[0] if len(readers) == 1 and name not in outputs else None

    def owned(node: onnx.NodeProto) -> bool:
        parameters = [name for name in node.input[1:3] if name]
        return all(name in values and len(users[name]) == 1 for name in parameters)

    def zero_padding(node: onnx.NodeProto) -> bool:
        mode = node_attributes(node).get("mode", b"constant")
        fill = node.input[2] if len(node.input) > 2 and node.input[2] else None
        return mode in (b"constant", "constant") and (fill is None or constants(fill) == 0)

    found = []
    for first in graph.node:
        if first.op_type != "Conv" or not owned(first):
            continue
        between, last, node = None, first, only_reader(first.output[0])
        while node is not None and node.op_type in ("Relu", "Clip", *CHANNELWISE):
            if node.op_type in CHANNELWISE:
                if node.op_type == "Pad" and not zero_padding(node):
                    break
            elif between is not None or clamp_bounds(graph, node, constants) is None:
                break
            else:
                between = node
            last, node = node, only_reader(node.output[0])
        if node is None or node.op_type != "Conv" or not owned(node):
            continue
        if node.input[0] != last.output[0]:
            continue
        group = node_attributes(node).get("group", 1)
        if values[first.input[1]].shape[0] == values[node.input[1]].shape[1] * group:
            found.append(Pair(first, between, node))
    return found


def _equalizing_scale(first: np.ndarray, second: np.ndarray, pair: Pair) -> np.ndarray:
    """s_i = sqrt(r1_i / r2_i) per channel; 1 where either range is 0."""
    first_range = np.abs(first).reshape(first.shape[0], -1).max(axis=1)
    second_range = np.abs(_by_input_channel(second, pair.second)).max(axis=(1, 3))
    second_range = second_range.reshape(-1)
    live = (first_range > 0) & (second_range > 0)
    ratio = first_range / np.where(live, second_range, 1.0)
    return np.where(live, np.sqrt(ratio), 1.0)


def _by_input_channel(weight: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """A Conv weight as (group, outputs per group, inputs per group, rest): input channel
    g * inputs per group + c is [g, :, c]."""
    group = node_attributes(node).get("group", 1)
    return weight.reshape(group, weight.shape[0] // group, weight.shape[1], -1)


def _scale_outputs(weights: dict, node: onnx.NodeProto, scale: np.ndarray) -> None:
    weight = weights[node.name]
    weights[node.name] = weight * scale.reshape(-1, *[1] * (weight.ndim - 1))


def _scale_inputs(weights: dict, node: onnx.NodeProto, scale: np.ndarray) -> None:
    weight = weights[node.name]
    grouped = _by_input_channel(weight, node)
    factors = scale.reshape(grouped.shape[0], 1, grouped.shape[2], 1)
    weights[node.name] = (grouped * factors).reshape(weight.shape)


def _per_channel_clip(
    graph: onnx.GraphProto, clip: onnx.NodeProto, scale: np.ndarray, rank: int, names: Names
) -> None:
    """Replace `clip` (between a pair, on values of `rank` dimensions) with a ReLU (for a
    lower bound of 0) or a Max, and a Min, whose bounds are the Clip's divided by each
    channel's scale."""
    low, high = clamp_bounds(graph, clip)
    shape = (-1, *[1] * (rank - 2))
    source, nodes = clip.input[0], []
    steps = [("Max", low), ("Min", high)]
    for step, (op, bound) in enumerate(steps):
        if math.isinf(bound):
            continue
        last = all(math.isinf(b) for _, b in steps[step + 1 :])
        target = clip.output[0] if last else names.fresh(f"{clip.output[0]}_{op.lower()}")
        name = clip.name if last else names.fresh(f"{clip.name}_{op.lower()}")
        if op == "Max" and bound == 0:
            nodes.append(helper.make_node("Relu", [source], [target], name=name))
        else:
            bounds = names.fresh(f"{clip.name}_{op.lower()}_bounds")
            per_channel = (bound / scale).reshape(shape).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(per_channel, bounds))
            nodes.append(helper.make_node(op, [source, bounds], [target], name=name))
        source = target
    if not nodes:
        nodes = [helper.make_node("Identity", [source], clip.output, name=clip.name)]
    position = list(graph.node).index(clip)
    graph.node.remove(clip)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
