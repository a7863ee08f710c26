"""Fold BatchNormalization into the Conv or Gemm that feeds it.

Inference-mode BatchNormalization is a per-channel affine map, so it merges into the
preceding layer's weights and bias; the quantizers then see the weights the hardware holds.
"""

from __future__ import annotations

import numpy as np
import onnx

from rcompile.graph import (
    consumers,
    initializers,
    node_attributes,
    output_names,
    producers,
    remove_initializers,
    replace_initializer,
)
from rcompile.passes import PassResult


def fold_batchnorm(model: onnx.ModelProto) -> PassResult:
    """Fold every foldable BatchNormalization; the others stay as they are."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    used_before = _used_names(graph)
    folded = [
        bn for bn in list(graph.node) if bn.op_type == "BatchNormalization" and _fold(graph, bn)
    ]
    for bn in folded:
        graph.node.remove(bn)
    _drop_initializers(graph, used_before - _used_names(graph))
    return PassResult(result, bool(folded))


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every value a node reads (in subgraphs too) or the graph returns."""
    used = output_names(graph)
    for node in graph.node:
        used.update(node.input)
        for attribute in node.attribute:
            subgraphs = [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]
            for subgraph in subgraphs:
                used |= _used_names(subgraph)
    return used


def _drop_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the constants that folding left unread (BatchNorm parameters, replaced weights),
    so the model carries no dead weights and onnxruntime has none to warn about."""
    remove_initializers(graph, {tensor.name for tensor in graph.initializer} & names)


def _fold(graph: onnx.GraphProto, bn: onnx.NodeProto) -> bool:
    layer = producers(graph).get(bn.input[0])
    constants = initializers(graph)
    if (
        layer is None
        or layer.op_type not in ("Conv", "Gemm")
        or len(bn.output) > 1
        or len(consumers(graph)[bn.input[0]]) != 1
        or bn.input[0] in output_names(graph)
        or not all(name in constants for name in (*bn.input[1:5], layer.input[1]))
        or (len(layer.input) > 2 and layer.input[2] not in constants)
    ):
        return False
    gamma, beta, mean, var = (constants[name].astype(np.float64) for name in bn.input[1:5])
    epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + epsilon)
    weight = constants[layer.input[1]].astype(np.float64)
    bias = constants[layer.input[2]].astype(np.float64) if len(layer.input) > 2 else 0.0
    if layer.op_type == "Conv":
        weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    else:
        weight, bias = _gemm_effective(layer, weight, bias)
        weight = weight * scale
    bias = (bias - mean) * scale + beta
    weight_name = f"{layer.name or layer.output[0]}_folded_weight"
    bias_name = f"{layer.name or layer.output[0]}_folded_bias"
    replace_initializer(graph, weight_name, weight.astype(np.float32))
    bias = np.broadcast_to(bias, np.broadcast_shapes(np.shape(bias), scale.shape))
    if bias.ndim == 2 and bias.shape[0] == 1:  # Gemm's C given as (1, N): a per-channel bias
        bias = bias[0]
    replace_initializer(graph, bias_name, bias.astype(np.float32))
    inputs = [layer.input[0], weight_name, bias_name]
    del layer.input[:]
    layer.input.extend(inputs)
    layer.output[0] = bn.output[0]
    if layer.op_type == "Gemm":
        _reset_gemm_attributes(layer)
    return True


def _gemm_effective(layer: onnx.NodeProto, weight: np.ndarray, bias) -> tuple[np.ndarray, object]:
    """Gemm's B as a (K, N) matrix with alpha applied, and C with beta applied."""
    attributes = node_attributes(layer)
    if attributes.get("transB", 0):
        weight = weight.T
    return weight * attributes.get("alpha", 1.0), np.asarray(bias) * attributes.get("beta", 1.0)


def _reset_gemm_attributes(layer: onnx.NodeProto) -> None:
    kept = [a for a in layer.attribute if a.name not in ("alpha", "beta", "transB")]
    del layer.attribute[:]
    layer.attribute.extend(kept)
