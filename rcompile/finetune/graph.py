"""An rcompile model as a PyTorch module whose quantized layers train full-precision shadow
weights.

The ONNX graph is interpreted node by node with `rcompile.finetune.ops`. Every constant
subgraph (a weight's DequantizeLinear, shape constants) is evaluated once. The weights and
biases of the layers in the model's plan become `torch.nn.Parameter`s initialised from their
quantized values; the forward pass quantizes them with the plan's formats (straight-through
gradient), and the quantizer nodes quantize the activations exactly as onnxruntime does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from rcompile.errors import UserError
from rcompile.finetune.ops import handler
from rcompile.finetune.quantizers import fake_quantize, per_channel
from rcompile.formats import Format, parse_format
from rcompile.graph import node_attributes
from rcompile.lowering.wide_layers import wide_op
from rcompile.onnx_ops import DOMAIN, format_of
from rcompile.plan import recorded_plan


class NotAQuantizedModel(UserError):
    """Fine-tuning needs a model written by rcompile (it carries its plan)."""


@dataclass(frozen=True)
class Shadow:
    """A trainable tensor: the graph value it replaces, its formats and channel axis."""

    value: str
    formats: tuple[Format, ...]
    axis: int


def read_plan(model: onnx.ModelProto) -> dict:
    plan = recorded_plan(model)
    if plan is None:
        raise NotAQuantizedModel(
            "the model carries no rcompile plan; compile it with rcompile first"
        )
    return plan


def _axis(node: onnx.NodeProto) -> int:
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        return 0 if transposed else 1
    return 0 if node.op_type == "Conv" else -1


class QuantizedGraph(torch.nn.Module):
    """The model as a module: `forward(inputs: dict) -> first output`; `shadows` name the
    trainable tensors, `parameters()` are their shadow weights."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        self.model = model
        self.plan = read_plan(model)
        self.input_names = [v.name for v in model.graph.input]
        self.output_name = model.graph.output[0].name
        self.weight_seed: int | None = None
        self.constants = {t.name: _tensor(t) for t in model.graph.initializer}
        self.nodes = self._fold_constants()
        self.shadows = self._shadows()
        self.weights = torch.nn.ParameterList(
            [
                torch.nn.Parameter(self.constants[s.value].to(torch.float32).clone())
                for s in self.shadows
            ]
        )
        self._trainable = {s.value: i for i, s in enumerate(self.shadows)}
        self._formats = {id(n): format_of(n) for n in self.nodes if n.domain == DOMAIN}

    def _fold_constants(self) -> list[onnx.NodeProto]:
        """Evaluate every node whose inputs are all constant; return the others."""
        runtime = []
        for node in map(_plain_layer, self.model.graph.node):
            if node.domain != DOMAIN and all(not n or n in self.constants for n in node.input):
                inputs = [self.constants[n] if n else None for n in node.input]
                attrs = node_attributes(node)
                for name, value in zip(
                    node.output, handler(node)(node, inputs, attrs), strict=False
                ):
                    self.constants[name] = value
            else:
                runtime.append(node)
        return runtime

    def _shadows(self) -> list[Shadow]:
        by_name = {node.name: _plain_layer(node) for node in self.model.graph.node}
        shadows = []
        for layer in self.plan["layers"]:
            node = by_name[layer["node"]]
            if layer["weights"]:
                formats = tuple(parse_format(n) for n in layer["weights"])
                shadows.append(Shadow(node.input[1], formats, _axis(node)))
            if layer["bias"]:
                formats = tuple(parse_format(n) for n in layer["bias"])
                shadows.append(Shadow(self._bias_value(node, by_name), formats, 0))
        return shadows

    def _bias_value(self, node: onnx.NodeProto, by_name: dict) -> str:
        if len(node.input) > 2 and node.input[2]:
            return node.input[2]
        return by_name[f"{node.name}_add_bias"].input[1]

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        """Every shadow tensor quantized with its formats (what the exported model holds)."""
        return {
            s.value: per_channel(w.detach(), s.formats, s.axis % max(w.dim(), 1))
            for s, w in zip(self.shadows, self.weights, strict=True)
        }

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        values = dict(self.constants)
        for shadow, weight in zip(self.shadows, self.weights, strict=True):
            values[shadow.value] = per_channel(
                weight, shadow.formats, shadow.axis % max(weight.dim(), 1), self.weight_seed
            )
        values.update(inputs)
        for node in self.nodes:
            inputs_ = [values[n] if n else None for n in node.input]
            if node.domain == DOMAIN:
                outputs = [fake_quantize(inputs_[0], self._formats[id(node)])]
            else:
                attrs = node_attributes(node)
                outputs = handler(node)(node, inputs_, attrs)
            values.update(zip(node.output, outputs, strict=False))
        return values[self.output_name]


def _plain_layer(node: onnx.NodeProto) -> onnx.NodeProto:
    """A wide layer's call (see `rcompile.lowering.wide_layers`) as its plain op: the same
    sum and bias; the quantizer after it rounds as the call does."""
    if node.domain != DOMAIN or wide_op(node.op_type) is None:
        return node
    plain = onnx.NodeProto()
    plain.CopyFrom(node)
    plain.op_type, plain.domain = wide_op(node.op_type), ""
    return plain


def _tensor(initializer: onnx.TensorProto) -> torch.Tensor:
    """An initializer as a torch tensor; int4 codes widen to int8 (torch has no int4)."""
    array = numpy_helper.to_array(initializer)
    if initializer.data_type == onnx.TensorProto.INT4:
        array = array.astype(np.int8)
    return torch.from_numpy(np.array(array))


def float_arrays(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in batch.items()}
