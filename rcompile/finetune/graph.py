"""An rcompile model as a PyTorch module whose quantized layers train full-precision shadow
weights.

The ONNX graph is compiled once into a list of steps: every constant subgraph (a weight's
DequantizeLinear, shape constants) is evaluated, every remaining node's handler and
attributes are looked up, and every quantizer node's format is parsed. The weights and biases
of the layers in the model's plan become `torch.nn.Parameter`s initialised from their
quantized values; the forward pass quantizes them with the plan's formats, clamped to what
their stored codes hold (straight-through gradient), and the quantizer nodes quantize the
activations exactly as onnxruntime does. An FP32 model without a plan compiles the same way
(no shadows): the teacher of distillation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from rcompile.errors import UserError
from rcompile.finetune.ops import handler
from rcompile.finetune.quantizers import fake_quantize, per_channel
from rcompile.finetune.storage import storable_limits, stored_codes
from rcompile.formats import DFP, Format, parse_format
from rcompile.graph import node_attributes
from rcompile.lowering.wide_layers import wide_op
from rcompile.onnx_ops import DOMAIN, format_of
from rcompile.plan import recorded_plan


class NotAQuantizedModel(UserError):
    """Fine-tuning needs a model written by rcompile (it carries its plan)."""


@dataclass(frozen=True)
class Shadow:
    """A trainable tensor: the graph value it replaces, the layer it belongs to and its role
    there (its input 1, weights, or 2, bias), its formats,
    channel axis, the bounds its stored codes hold (None: stored as floats), and its unit
    (per format): the parameter holds the value divided by the unit, so that one learning
    rate moves every layer by the same share of its quantization step."""

    value: str
    layer: str
    role: str
    formats: tuple[Format, ...]
    axis: int
    limits: tuple[np.ndarray, np.ndarray] | None
    unit: np.ndarray


@dataclass(frozen=True)
class Step:
    """One runtime node: its handler with the node's attributes already parsed, or the
    format of a quantizer node."""

    node: onnx.NodeProto
    attributes: dict
    quantizer: Format | None
    run: Callable | None

    def __call__(self, inputs: list) -> list:
        if self.quantizer is not None:
            return [fake_quantize(inputs[0], self.quantizer)]
        return self.run(self.node, inputs, self.attributes)


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
    """The model as a module: `forward(inputs: dict) -> first output` (with `observe`, also
    the named values); `shadows` name the trainable tensors, `parameters()` are their shadow
    weights. `plan=False` runs a model without a plan as it is."""

    def __init__(self, model: onnx.ModelProto, plan: bool = True) -> None:
        super().__init__()
        self.plan = read_plan(model) if plan else {"layers": []}
        self.input_names = [v.name for v in model.graph.input]
        self.output_name = model.graph.output[0].name
        self.weight_seed: int | None = None
        self.constants = {t.name: _tensor(t) for t in model.graph.initializer}
        self.steps = self._fold_constants(model)
        self.layer_outputs = {
            step.node.name: step.node.output[0] for step in self.steps if step.node.name
        }
        self.layer_inputs = {
            step.node.name: list(step.node.input) for step in self.steps if step.node.name
        }
        self.shadows = self._shadows(model)
        self.weights = torch.nn.ParameterList(
            [
                torch.nn.Parameter(self.constants[s.value].to(torch.float32) / self.unit_tensor(s))
                for s in self.shadows
            ]
        )

    def _fold_constants(self, model: onnx.ModelProto) -> list[Step]:
        """Evaluate every node whose inputs are all constant; return the others as steps."""
        runtime = []
        for node in map(_plain_layer, model.graph.node):
            attributes = node_attributes(node) if node.domain != DOMAIN else {}
            if node.domain != DOMAIN and all(not n or n in self.constants for n in node.input):
                inputs = [self.constants[n] if n else None for n in node.input]
                outputs = handler(node)(node, inputs, attributes)
                self.constants.update(zip(node.output, outputs, strict=False))
            else:
                if node.domain == DOMAIN:
                    runtime.append(Step(node, attributes, format_of(node), None))
                else:
                    runtime.append(Step(node, attributes, None, handler(node)))
        return runtime

    def _shadows(self, model: onnx.ModelProto) -> list[Shadow]:
        by_name = {node.name: _plain_layer(node) for node in model.graph.node}
        shadows = []
        for layer in self.plan["layers"]:
            node = by_name[layer["node"]]
            for key, value, axis in (
                ("weights", node.input[1], _axis(node)),
                ("bias", layer["bias"] and self._bias_value(node, by_name), 0),
            ):
                if layer[key]:
                    formats = tuple(parse_format(n) for n in layer[key])
                    stored = stored_codes(model, value)
                    limits = storable_limits(formats, *stored) if stored else None
                    values = self.constants[value].numpy()
                    unit = units(formats, values, axis)
                    if key == "bias" and layer["output"]:
                        # An accumulator-width bias steps in product LSBs; what moves the
                        # layer's result is a step of its output.
                        output = units((parse_format(layer["output"]),), values, 0)
                        unit = np.maximum(unit, output)
                    shadow = Shadow(value, node.name, key, formats, axis, limits, unit)
                    shadows.append(shadow)
        return shadows

    def _bias_value(self, node: onnx.NodeProto, by_name: dict) -> str:
        if len(node.input) > 2 and node.input[2]:
            return node.input[2]
        return by_name[f"{node.name}_add_bias"].input[1]

    def start_from(self, fp32: QuantizedGraph) -> int:
        """Shadow weights from the FP32 model's own weights wherever those quantize to what
        the model holds (Ristretto's full-precision shadows: a weight near a rounding
        boundary then needs a small step to change its code, where one initialised on its
        grid point needs half a step); elsewhere (a bias that bias correction moved, say)
        the held value stays. Returns how many values came from the FP32 model."""
        taken = 0
        with torch.no_grad():
            for shadow, weight in zip(self.shadows, self.weights, strict=True):
                inputs = fp32.layer_inputs.get(shadow.layer, [])
                index = 1 if shadow.role == "weights" else 2
                if len(inputs) <= index or inputs[index] not in fp32.constants:
                    continue
                original = fp32.constants[inputs[index]].to(weight.device, torch.float32)
                if original.shape != weight.shape:
                    continue
                candidate = original / self.unit_tensor(shadow).to(weight.device)
                held = self.quantized_value(shadow, weight, None)
                same = self.quantized_value(shadow, candidate, None) == held
                weight.copy_(torch.where(same, candidate, weight))
                taken += int(same.sum())
        return taken

    def unit_tensor(self, shadow: Shadow) -> torch.Tensor:
        like = self.constants[shadow.value]
        return along(shadow.unit, like, shadow.axis % max(like.dim(), 1))

    def quantized_value(self, shadow: Shadow, weight: torch.Tensor, seed) -> torch.Tensor:
        axis = shadow.axis % max(weight.dim(), 1)
        weight = weight * along(shadow.unit, weight, axis)
        quantized = per_channel(weight, shadow.formats, axis, seed)
        if shadow.limits is None:
            return quantized
        low, high = (along(limit, weight, axis) for limit in shadow.limits)
        return torch.minimum(torch.maximum(quantized, low), high)

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        """Every shadow tensor quantized with its formats (what the exported model holds)."""
        return {
            s.value: self.quantized_value(s, w.detach(), None)
            for s, w in zip(self.shadows, self.weights, strict=True)
        }

    def forward(
        self, inputs: dict[str, torch.Tensor], observe: tuple[str, ...] | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = self.start_values(inputs, self.weight_seed)
        for step in self.steps:
            outputs = step([values[n] if n else None for n in step.node.input])
            values.update(zip(step.node.output, outputs, strict=False))
        if observe is not None:
            return values[self.output_name], {name: values[name] for name in observe}
        return values[self.output_name]

    def start_values(self, inputs: dict[str, torch.Tensor], seed: int | None) -> dict:
        """The values a forward pass starts from: constants, quantized weights, inputs."""
        values = dict(self.constants)
        for shadow, weight in zip(self.shadows, self.weights, strict=True):
            values[shadow.value] = self.quantized_value(shadow, weight, seed)
        values.update(inputs)
        return values

    def layer_steps(self, layer: str) -> list[Step]:
        """The steps that compute a layer's sum and bias: its node, and the Add of a bias
        added after it (see `_bias_value`)."""
        return [s for s in self.steps if s.node.name in (layer, f"{layer}_add_bias")]

    def to_device(self, device: torch.device) -> QuantizedGraph:
        """Move the constants as well as the shadow weights."""
        self.constants = {name: value.to(device) for name, value in self.constants.items()}
        return self.to(device)


def units(formats: tuple[Format, ...], values: np.ndarray, axis: int) -> np.ndarray:
    """Per format, a power of two near its quantization step: DFP's step; for the others
    (whose steps grow with the value), 1/8 of the octave of the largest value it holds."""
    if len(formats) == 1:
        largest = [np.abs(values).max(initial=0.0)]
    else:
        moved = np.moveaxis(values, axis % values.ndim, 0).reshape(len(formats), -1)
        largest = np.abs(moved).max(axis=1, initial=0.0)
    return np.array(
        [
            2.0**-fmt.fl
            if isinstance(fmt, DFP)
            else 2.0 ** (math.floor(math.log2(min(fmt.max, top) or fmt.max)) - 3)
            for fmt, top in zip(formats, largest, strict=True)
        ],
        np.float32,
    )


def along(values: np.ndarray, like: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * like.dim()
    if values.size > 1:
        shape[axis] = values.size
    return torch.from_numpy(values).reshape(shape).to(like.device)


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


def float_arrays(
    batch: dict[str, np.ndarray], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    return {
        name: torch.from_numpy(np.ascontiguousarray(value)).to(device)
        for name, value in batch.items()
    }
