"""The canonical lowering of a plan: insert its quantizer nodes and replace parameters by
their quantized, compactly stored versions. The targets (`rcompile.lowering`) and the
search's evaluation form (`rcompile.search.evaluation_form`) differ only in the `Form`
they ask for.

For every planned layer (Ristretto's layer model) each activation input passes through a
quantizer before the layer and the output through one after it; the output keeps its name,
so consumers and graph outputs see the quantized value. Parameters are quantized offline.
A tensor already quantized to a format is not quantized to it again.

An input that a zero-padding Pad produces is quantized before the Pad instead, and padded
after: the same values (quantizing +0 gives +0), but the Pad then feeds the layer directly,
so onnxruntime folds it into the convolution, as hardware does, rather than running it alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from rcompile.formats import DFP, Format
from rcompile.graph import (
    Constants,
    Names,
    consumers,
    output_names,
    producers,
    remove_unread,
)
from rcompile.lowering.blocked_rounding import BlockedRounding, Channels, fits, from_zero
from rcompile.lowering.grids import Grids
from rcompile.lowering.values import QuantizedValues
from rcompile.onnx_ops import DOMAIN, DOMAIN_VERSION, functions_for, quantizer_node
from rcompile.onnx_ops.dfp import LATE
from rcompile.passes import PassResult
from rcompile.passes.store_weights import StoredTensor, float_tensor, store
from rcompile.plan import LayerPlan, Plan, accumulator_fls


@dataclass(frozen=True)
class Form:
    """What a lowering makes of a plan beyond its values.

    `elide`: no layer fuses into integer kernels, and what changes no value is left out: an
    input quantizer of values already on its format's grid and within its range (a layer's
    quantized output read through a ReLU6, MaxPool or Reshape, say), and a Relu or constant
    Clip of values within its bounds, which becomes an Identity (`Grids`). The DFP
    quantizers of convolutions round in the blocked form (`blocked_rounding`), taking over
    a clamp after the layer.
    `float_parameters`: quantized parameters as float constants, the bias inside the layer.
    `unclipped_clamped_outputs`: a narrow DFP output that a clamp alone reads within its
    range is not clipped to its width (the clamp does it).
    `linear_float_layer_inputs`: layers with FP32 weights keep QuantizeLinear/
    DequantizeLinear input quantizers, for a session where onnxruntime's
    WeightBiasQuantization (which would round those weights to int8) is disabled."""

    elide: bool = False
    float_parameters: bool = False
    unclipped_clamped_outputs: bool = False
    linear_float_layer_inputs: bool = False


# Plain QDQ: every quantizer written, layers free to fuse.
QDQ = Form()
# Bit-true at every optimisation level (with `rcompile.lowering.sim`'s passes after it).
SIM = Form(elide=True)


class _Rewriter:
    """The state of one rewrite: fresh names and the quantizers placed so far."""

    def __init__(self, graph: onnx.GraphProto, form: Form, values: QuantizedValues) -> None:
        self.graph = graph
        self.form = form
        self.elide = form.elide
        self.values = values
        self.names = Names(graph)
        self.producers = producers(graph)
        self.constants = Constants(graph)
        self.consumers = consumers(graph)
        self.graph_outputs = output_names(graph)
        self.weight_dims = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
        self.rounding = BlockedRounding(graph, self.names)
        # Clamps that a blocked output quantizer took over.
        self.absorbed: set[str] = set()
        self.quantized: dict[tuple[str, Format, str], str] = {}
        self.grids = Grids(graph, self.constants, self.consumers, self.graph_outputs)

    def layer(self, node: onnx.NodeProto, plan: LayerPlan) -> list[onnx.NodeProto]:
        emitted: list[onnx.NodeProto] = []
        layer = onnx.NodeProto()
        layer.CopyFrom(node)
        # A layer with FP32 weights does not fuse; one without parameters might (QLinearMatMul),
        # except in an elided form, which leaves onnxruntime no integer kernel.
        fuses = not self.elide and plan.layer.weight is None and _inputs_may_fuse(plan)
        bias = None
        if plan.weights:
            layer.input[1], bias, fuses = self.parameters(node, plan, emitted)
        channels = self._channels(node, plan) if self.elide and not fuses else None
        # onnxruntime's WeightBiasQuantization would quantize the FP32 weights of a layer fed
        # by a DequantizeLinear to int8, so such a layer gets arithmetic input quantizers.
        arithmetic = bool(plan.layer.weight) and not plan.weights
        arithmetic &= not self.form.linear_float_layer_inputs
        for source, fmt in zip(plan.layer.inputs, plan.inputs, strict=True):
            if fmt is not None:
                position = list(node.input).index(source)
                layer.input[position] = self.quantizer(
                    source, fmt, node.name, emitted, arithmetic, fuses, channels and channels[0]
                )
        result = self.names.fresh(f"{plan.layer.output}_unquantized")
        layer.output[0] = result
        if bias is not None:
            bias_name, inside = bias
            if inside:
                layer.input[2] = bias_name
            else:
                del layer.input[2]
                layer.output[0] = self.names.fresh(f"{plan.layer.output}_without_bias")
                add = onnx.helper.make_node(
                    "Add", [layer.output[0], bias_name], [result], name=f"{node.name}_add_bias"
                )
                emitted.append(layer)
                layer = add
        emitted.append(layer)
        if plan.output is None:
            layer.output[0] = plan.layer.output
            return emitted
        name = self.names.fresh(f"{node.name}_output_quantizer")
        if channels is not None and fits(plan.output):
            blocked = self._blocked_output(plan, result, name, channels[1])
            if blocked is not None:
                emitted.extend(blocked)
                return emitted
        body = "late"
        clamped = _clamped_within(plan.layer.output_bounds, plan.output)
        if self.form.unclipped_clamped_outputs and clamped:
            # The one consumer clamps to within the format's range, so the clip to `bw` bits
            # changes nothing that the clamp leaves.
            body = "unclipped"
        quantizer = quantizer_node(plan.output, result, plan.layer.output, name, body)
        emitted.append(quantizer)
        if isinstance(plan.output, DFP):
            # An unclipped output keeps the storage width's range; only its clamp reads it.
            fmt, clipped = plan.output, body != "unclipped"
            low, high = (fmt.min, fmt.max) if clipped else (-math.inf, math.inf)
            self.grids[plan.layer.output] = (fmt.step, low, high)
        if body == "late" and not quantizer.overload.endswith(LATE):
            # A late clip ends in Clip, not DequantizeLinear: a consumer layer then gets its own
            # input quantizer (idempotent), so that it too can be fused.
            self.quantized[(plan.layer.output, plan.output, "default")] = plan.layer.output
        return emitted

    def _channels(self, node: onnx.NodeProto, plan: LayerPlan) -> tuple[Channels, Channels] | None:
        """A convolution's input and output channels (axis 1 of its input and output), each
        with the number of spatial axes."""
        dims = self.weight_dims.get(plan.layer.weight or "")
        if node.op_type != "Conv" or not dims or len(dims) < 3:
            return None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        spatial = len(dims) - 2
        return (dims[1] * group, spatial), (dims[0], spatial)

    def _blocked_output(
        self, plan: LayerPlan, result: str, name: str, channels: Channels
    ) -> list[onnx.NodeProto] | None:
        """The output quantizer of a layer that does not fuse, in the blocked
        form (`blocked_rounding`), taking over the Relu or constant Clip that alone reads the
        output where its bounds lie on the format's grid: rounding and clipping to bounds on
        the grid commute. None where onnxruntime could add another value into the general
        form's last node inexactly (`Grids.sums_exactly`); the one-pass form ends in a Relu,
        which keeps onnxruntime from adding anything into it."""
        fmt = plan.output
        low, high, target = fmt.min, fmt.max, plan.layer.output
        clamp = self.grids.sole_clamp(plan.layer.output, fmt.step)
        if clamp is not None:
            node, bounds = clamp
            low, high, target = max(low, bounds[0]), min(high, bounds[1]), node.output[0]
        ends_in_relu = from_zero(fmt.step, low, high)
        if low > high or not (ends_in_relu or self.grids.sums_exactly(target, fmt.step, low, high)):
            return None
        if clamp is not None:
            self.absorbed.add(clamp[0].name)
        self.grids[target] = (fmt.step, low, high)
        return self.rounding.nodes(fmt.step, low, high, result, target, name, channels, True)

    def quantizer(
        self,
        source: str,
        fmt: Format,
        owner: str,
        emitted: list,
        arithmetic: bool = False,
        fuses: bool = True,
        channels: Channels | None = None,
    ) -> str:
        """The name of `source` quantized to `fmt` for the layer `owner`, emitting what that
        needs. In an elided form, a source already on the format's grid and within its
        range keeps only what onnxruntime needs to fuse a layer (a bare QuantizeLinear and
        DequantizeLinear pair), and nothing for a layer that will not fuse (`fuses`); other
        sources of a convolution (`channels` known) that will not fuse get the blocked form."""
        blocked = self.elide and not fuses and channels is not None and fits(fmt)
        kind = "arithmetic" if arithmetic else "blocked" if blocked else "default"
        key = (source, fmt, kind)
        pad = self.producers.get(source)
        if key not in self.quantized and pad is not None and self._pads_with_zero(pad):
            padded = self.quantizer(pad.input[0], fmt, owner, emitted, arithmetic, fuses, channels)
            copy = onnx.NodeProto()
            copy.CopyFrom(pad)
            copy.name = self.names.fresh(f"{pad.name}_{fmt.name}")
            copy.input[0] = padded
            copy.output[0] = self.names.fresh(f"{source}_{fmt.name}")
            emitted.append(copy)
            self.quantized[key] = copy.output[0]
        if key in self.quantized:
            return self.quantized[key]
        body = "arithmetic" if arithmetic else "default"
        if self.elide and self.grids.unchanged_by(fmt, source):
            if not fuses:
                return source
            body = "unclipped"
        target = self.names.fresh(f"{source}_{fmt.name}")
        name = self.names.fresh(f"{owner}_input_quantizer")
        if blocked:
            rounding = self.rounding.nodes(
                fmt.step, fmt.min, fmt.max, source, target, name, channels
            )
            emitted.extend(rounding)
        else:
            emitted.append(quantizer_node(fmt, source, target, name, body))
        self.quantized[key] = target
        return target

    def _pads_with_zero(self, node: onnx.NodeProto) -> bool:
        """A constant-mode Pad whose pad value is +0 (absent means +0)."""
        if node.op_type != "Pad" or any(
            a.name == "mode" and a.s not in (b"", b"constant") for a in node.attribute
        ):
            return False
        if len(node.input) < 3 or not node.input[2]:
            return True
        value = self.constants(node.input[2])
        return value is not None and value.size == 1 and not np.signbit(value) and value == 0

    def parameters(
        self, node: onnx.NodeProto, plan: LayerPlan, emitted: list
    ) -> tuple[str, tuple[str, bool] | None, bool]:
        """The quantized weights; the quantized bias (if any) with whether it goes inside
        the layer: as int32 codes on the accumulator grid, where integer hardware adds it and
        onnxruntime fuses it. Otherwise it is added by a separate Add after the layer:
        onnxruntime's WeightBiasQuantization would re-quantize a float bias left inside a
        layer with quantized inputs onto that grid, overflowing int32 where it does not fit.
        Last, whether onnxruntime can fuse the layer into integer kernels: its weights are
        int8 codes and its inputs 8-bit DFP. Float parameters (`Form.float_parameters`)
        fuse nothing, the bias inside the layer."""
        axis = _normalised_axis(plan.layer.weight_axis, self.constants.rank(plan.layer.weight))
        weights = self.values(self.constants, plan.layer.weight, plan.weights, axis)
        weight_name = self.names.fresh(f"{node.name}_weight")
        fuses, floats = False, self.form.float_parameters
        if floats:
            self._emit(float_tensor(weight_name, weights), emitted)
        else:
            stored_weights = store(weight_name, weights, plan.weights, axis)
            int8_codes = stored_weights.initializers[0].data_type == TensorProto.INT8
            fuses = int8_codes and _inputs_may_fuse(plan) and not self.elide
            weight_name = self._emit(stored_weights, emitted)
        if not plan.bias:
            return weight_name, None, fuses
        bias = self.values(self.constants, plan.layer.bias, plan.bias, 0, flat=True)
        target = self.names.fresh(f"{node.name}_bias")
        if floats:
            return weight_name, (self._emit(float_tensor(target, bias), emitted), True), fuses
        steps = _accumulator_steps(bias, plan)
        if steps is not None:
            types = (TensorProto.INT32,)
            stored = store(target, bias, (DFP(32, 0),) * bias.size, 0, steps, types)
            return weight_name, (self._emit(stored, emitted), True), fuses
        if plan.layer.op_type in ("Conv", "ConvTranspose"):
            bias = bias.reshape(-1, *([1] * (weights.ndim - 2)))
        stored = store(target, bias, plan.bias, 0)
        return weight_name, (self._emit(stored, emitted), False), fuses

    def _emit(self, stored: StoredTensor, emitted: list) -> str:
        self.graph.initializer.extend(stored.initializers)
        emitted.extend(stored.nodes)
        return stored.output


def rewrite(
    model: onnx.ModelProto,
    plan: Plan,
    form: Form = QDQ,
    values: QuantizedValues | None = None,
) -> Rewritten:
    """Apply `plan` to a copy of `model`, in `form`. The result also says where each
    layer's nodes start (the search cuts networks there). `values` keeps quantized
    parameters for later rewrites of the same model."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    values = values if values is not None else QuantizedValues()
    elide = form.elide
    rewriter = _Rewriter(result.graph, form, values)
    by_node = {layer_plan.layer.node: layer_plan for layer_plan in plan.layers}
    nodes: list[onnx.NodeProto] = []
    starts: dict[str, str] = {}
    for node in model.graph.node:
        if node.name in rewriter.absorbed:
            continue
        layer_plan = by_node.get(node.name)
        if elide and not layer_plan and rewriter.grids.clamps_nothing(node):
            node = onnx.helper.make_node("Identity", node.input[:1], node.output, name=node.name)
        emitted = rewriter.layer(node, layer_plan) if layer_plan else [node]
        if layer_plan:
            starts[node.name] = emitted[0].name
        nodes.extend(emitted)
        if elide and not layer_plan:
            rewriter.grids.note(node)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    remove_unread(result.graph)
    quantizers = [node for node in nodes if node.domain == DOMAIN]
    if quantizers:
        result.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        result.functions.extend(functions_for(quantizers))
    return Rewritten(result, bool(plan.layers), starts)


@dataclass(frozen=True)
class Rewritten(PassResult):
    """`starts`: for each planned layer, the name of the first node emitted for it (its
    quantizers and parameters come before the layer node itself)."""

    starts: dict[str, str]


def _normalised_axis(axis: int | None, ndim: int) -> int | None:
    if axis is None or ndim == 0:
        return None
    return axis + ndim if axis < 0 else axis


def _clamped_within(bounds: tuple[float, float] | None, fmt: Format) -> bool:
    return (
        isinstance(fmt, DFP) and bounds is not None and fmt.min <= bounds[0] <= bounds[1] <= fmt.max
    )


def _accumulator_steps(bias: np.ndarray, plan: LayerPlan) -> np.ndarray | None:
    """The steps of the grid of the input-times-weight products, one per bias element, when
    that grid holds the bias exactly as 32-bit codes. Only such a bias may be stored int32:
    onnxruntime fuses any int32 bias assuming this grid."""
    grids = accumulator_fls(plan.inputs[0], plan.weights)
    if grids is None or len(grids) not in (1, bias.size):
        return None
    steps = np.broadcast_to(np.ldexp(1.0, -grids), bias.shape)
    codes = bias.astype(np.float64) / steps
    if not (np.array_equal(codes, np.rint(codes)) and np.all(np.abs(codes) < 2**31)):
        return None
    return steps.astype(np.float32)


def _inputs_may_fuse(plan: LayerPlan) -> bool:
    """onnxruntime fuses only layers whose inputs are 8-bit codes (DFP of at most 8 bits,
    rounded half to even: QuantizeLinear rounds no other way)."""
    return all(
        isinstance(fmt, DFP) and fmt.bw <= 8 and fmt.rounding == "even" for fmt in plan.inputs
    )
