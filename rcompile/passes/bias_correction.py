"""Bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", 2019, in its empirical form): quantizing a layer's weights shifts the mean
of every output channel by (W_q - W) E[x], with E[x] the mean of each input channel on the
calibration data. Subtracting that shift from the FP32 bias before the bias is quantized
gives the quantized layer the FP32 layer's mean output. It matters most where a channel has
few weights (depthwise convolutions), whose rounding errors do not average out, and for
coarse weight formats (mini floats' 3-bit mantissas, power-of-two weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from rcompile.graph import consumers, initializers, node_attributes, replace_initializer
from rcompile.passes.layers import Layer
from rcompile.passes.store_weights import quantize_values

if TYPE_CHECKING:
    from rcompile.passes.calibrate import Statistics
    from rcompile.plan import PlanOptions

# The op types corrected (the layers with a bias), with the axis of their first input that
# holds its channels.
INPUT_CHANNEL_AXIS = {"Conv": 1, "Gemm": 1}


def mean_axes(model: onnx.ModelProto, layers: list[Layer]) -> dict[str, int]:
    """The layer inputs whose per-channel means bias correction needs, with their channel
    axis: the first input of every correctable layer (see `correctable`)."""
    nodes = {node.name: node for node in model.graph.node}
    users = consumers(model.graph)
    return {
        layer.inputs[0]: INPUT_CHANNEL_AXIS[nodes[layer.node].op_type]
        for layer in layers
        if correctable(layer, nodes[layer.node], users)
    }


def correctable(layer: Layer, node: onnx.NodeProto, users: dict) -> bool:
    """A Conv or Gemm with constant weights and a bias that no other node reads."""
    if node.op_type not in INPUT_CHANNEL_AXIS or layer.weight is None or layer.bias is None:
        return False
    attributes = node_attributes(node)
    if node.op_type == "Gemm" and (attributes.get("beta", 1.0) == 0 or attributes.get("transA")):
        return False
    return len(users.get(layer.bias, [])) == 1


class BiasCorrector:
    """The corrected bias of any layer of one model for any formats of its weights (a search
    asks for hundreds of combinations); None where the layer is not corrected."""

    def __init__(self, model: onnx.ModelProto, means: dict[str, np.ndarray]) -> None:
        self._values = initializers(model.graph)
        self._nodes = {node.name: node for node in model.graph.node}
        self._users = consumers(model.graph)
        self._means = means

    def __call__(self, layer: Layer, formats: tuple) -> np.ndarray | None:
        node = self._nodes[layer.node]
        mean = self._means.get(layer.inputs[0])
        if not formats or mean is None or not correctable(layer, node, self._users):
            return None
        weights = self._values[layer.weight]
        axis = layer.weight_axis if len(formats) > 1 else None
        quantized = quantize_values(weights, formats, axis)
        shift = _output_shift(node, quantized.astype(np.float64) - weights, mean)
        bias = self._values[layer.bias]
        return (bias.astype(np.float64) - shift.reshape(bias.shape)).astype(np.float32)


def bias_corrector(
    model: onnx.ModelProto, statistics: Statistics, options: PlanOptions
) -> BiasCorrector | None:
    """The corrector `options` ask for, where calibration measured the means it reads."""
    if not options.bias_correction or not statistics.means:
        return None
    return BiasCorrector(model, statistics.means)


def with_biases(model: onnx.ModelProto, biases: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` with the named initializers set to `biases`."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for name, values in biases.items():
        replace_initializer(result.graph, name, values)
    return result


def _output_shift(node: onnx.NodeProto, error: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The mean change of each output channel that the weight error `error` causes on
    inputs of per-channel mean `mean`."""
    attributes = node_attributes(node)
    if node.op_type == "Conv":
        group = attributes.get("group", 1)
        per_group = error.shape[1]
        summed = error.reshape(error.shape[0], per_group, -1).sum(axis=2)  # [O, C/group]
        outputs_per_group = error.shape[0] // group
        channels = np.arange(error.shape[0]) // outputs_per_group * per_group
        inputs = channels[:, None] + np.arange(per_group)[None, :]
        return (summed * mean[inputs]).sum(axis=1)
    by_output = error if attributes.get("transB") else error.T  # Gemm: [N, K]
    return attributes.get("alpha", 1.0) / attributes.get("beta", 1.0) * (by_output @ mean)
