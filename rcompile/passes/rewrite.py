"""Rewrite: insert the quantizer nodes of a plan and replace parameters by their quantized,
compactly stored versions.

For every planned layer (Ristretto's layer model) each activation input passes through a
quantizer before the layer and the output through one after it; the output keeps its name,
so consumers and graph outputs see the quantized value. Parameters are quantized offline.
A tensor already quantized to a format is not quantized to it again.

An input that a zero-padding Pad produces is quantized before the Pad instead, and padded
after: the same values (quantizing +0 gives +0), but the Pad then feeds the layer directly,
so onnxruntime folds it into the convolution, as hardware does, rather than running it alone.

A sim model (`elide`) leaves out what changes no value and rounds convolutions' DFP
quantizers in onnxruntime's blocked layout (`blocked_rounding`), fusing nothing. The search
scores hundreds of configurations, so it asks for an evaluation form (see `rewrite`) on top
of that, which sessions that disable onnxruntime's WeightBiasQuantization run faster.
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
    remove_initializers,
    values_read,
)
from rcompile.onnx_ops import DOMAIN, DOMAIN_VERSION, functions_for, quantizer_node
from rcompile.onnx_ops.dfp import LATE
from rcompile.passes import PassResult
from rcompile.passes.blocked_rounding import BlockedRounding, fits, from_zero
from rcompile.passes.layers import clamp_bounds
from rcompile.passes.store_weights import (
    StoredTensor,
    float_tensor,
    quantize_values,
    store,
)
from rcompile.plan import LayerPlan, Plan, accumulator_fls

# What the evaluation form needs disabled: onnxruntime's WeightBiasQuantization rounds the
# float weights of a layer fed by a DequantizeLinear to int8.
EVALUATION_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)

# Ops whose first output holds only values of their first input (MaxPool pads with -inf,
# which no output takes): it stays on that input's grid and within its bounds.
_PICKS_VALUES = frozenset(
    (
        "MaxPool",
        "GlobalMaxPool",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Identity",
    )
)


class QuantizedValues:
    """Quantized parameters, kept across the rewrites of one model (a search rewrites it
    hundreds of times). The planner hands out one formats tuple per layer rule it has seen,
    so entries are found by tensor and formats identity: each tensor is quantized once per
    rule. The formats are kept alive here, so an identity is never reused."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], tuple[tuple[Format, ...], np.ndarray]] = {}

    def __len__(self) -> int:
        """How many quantized tensors are kept."""
        return len(self._entries)

    def __call__(
        self,
        constants: Constants,
        name: str,
        formats: tuple[Format, ...],
        axis: int | None,
        flat: bool = False,
    ) -> np.ndarray:
        """`name`'s values quantized to `formats` along `axis` (`flat`: as a vector)."""
        key = (name, id(formats))
        if key not in self._entries:
            values = constants(name).astype(np.float32)
            values = values.reshape(-1) if flat else values
            quantized = quantize_values(values, formats, axis)
            quantized.flags.writeable = False
            self._entries[key] = (formats, quantized)
        return self._entries[key][1]


class _Rewriter:
    """The state of one rewrite: fresh names and the quantizers placed so far."""

    def __init__(
        self, graph: onnx.GraphProto, evaluation: bool, elide: bool, values: QuantizedValues
    ) -> None:
        self.graph = graph
        self.evaluation = evaluation
        # Leave out input quantizers that change nothing (for layers that do not fuse).
        self.elide = elide
        self.values = values
        self.names = Names(graph)
        self.producers = producers(graph)
        self.constants = Constants(graph)
        self.consumers = consumers(graph)
        self.graph_outputs = output_names(graph)
        self.weight_dims = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
        self.rounding = BlockedRounding(graph, self.names)
        # Clamps that a blocked output quantizer took over (the evaluation form drops them).
        self.absorbed: set[str] = set()
        self.moved_pads: set[str] = set()
        self.quantized: dict[tuple[str, Format, str], str] = {}
        # Evaluation form: for values known to lie on a grid, (grid step, lowest value,
        # highest value), the bounds infinite where unknown.
        self.on_grid: dict[str, tuple[float, float, float]] = {}

    def layer(self, node: onnx.NodeProto, plan: LayerPlan) -> list[onnx.NodeProto]:
        emitted: list[onnx.NodeProto] = []
        layer = onnx.NodeProto()
        layer.CopyFrom(node)
        # A layer with FP32 weights does not fuse; one without parameters might (QLinearMatMul),
        # except in the evaluation form, which leaves onnxruntime no integer kernel.
        fuses = not self.elide and plan.layer.weight is None and _inputs_may_fuse(plan)
        bias = None
        if plan.weights:
            layer.input[1], bias, fuses = self.parameters(node, plan, emitted)
        channels = self._channels(node, plan) if self.elide and not fuses else None
        # onnxruntime's WeightBiasQuantization would quantize the FP32 weights of a layer fed
        # by a DequantizeLinear to int8, so such a layer gets arithmetic input quantizers.
        arithmetic = bool(plan.layer.weight) and not plan.weights and not self.evaluation
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
        form = "late"
        if self.evaluation and _clamped_within(plan.layer.output_bounds, plan.output):
            # The one consumer clamps to within the format's range, so the clip to `bw` bits
            # changes nothing that the clamp leaves.
            form = "unclipped"
        quantizer = quantizer_node(plan.output, result, plan.layer.output, name, form)
        emitted.append(quantizer)
        if isinstance(plan.output, DFP):
            # An unclipped output keeps the storage width's range; only its clamp reads it.
            fmt, clipped = plan.output, form != "unclipped"
            low, high = (fmt.min, fmt.max) if clipped else (-math.inf, math.inf)
            self.on_grid[plan.layer.output] = (fmt.step, low, high)
        if form == "late" and not quantizer.overload.endswith(LATE):
            # A late clip ends in Clip, not DequantizeLinear: a consumer layer then gets its own
            # input quantizer (idempotent), so that it too can be fused.
            self.quantized[(plan.layer.output, plan.output, "default")] = plan.layer.output
        return emitted

    def _channels(self, node: onnx.NodeProto, plan: LayerPlan) -> tuple[int, int] | None:
        """A convolution's input and output channels (axis 1 of its input and output)."""
        dims = self.weight_dims.get(plan.layer.weight or "")
        if node.op_type != "Conv" or not dims or len(dims) < 3:
            return None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return dims[1] * group, dims[0]

    def _blocked_output(
        self, plan: LayerPlan, result: str, name: str, channels: int
    ) -> list[onnx.NodeProto] | None:
        """Evaluation form: the output quantizer of a layer that does not fuse, in the blocked
        form (`blocked_rounding`), taking over the Relu or constant Clip that alone reads the
        output where its bounds lie on the format's grid: rounding and clipping to bounds on
        the grid commute. None where onnxruntime could add another value into the general
        form's last node inexactly (`_sums_exactly`); the one-pass form ends in a Relu, which
        keeps onnxruntime from adding anything into it."""
        fmt = plan.output
        low, high, target = fmt.min, fmt.max, plan.layer.output
        clamp = self._sole_clamp(plan.layer.output, fmt.step)
        if clamp is not None:
            node, bounds = clamp
            low, high, target = max(low, bounds[0]), min(high, bounds[1]), node.output[0]
        ends_in_relu = from_zero(fmt.step, low, high)
        if low > high or not (ends_in_relu or self._sums_exactly(target, fmt.step, low, high)):
            return None
        if clamp is not None:
            self.absorbed.add(clamp[0].name)
        self.on_grid[target] = (fmt.step, low, high)
        return self.rounding.nodes(fmt.step, low, high, result, target, name, channels, True)

    def _sole_clamp(self, value: str, step: float):
        """The Relu or constant Clip that alone reads `value` (not a graph output) and its
        bounds, when they are infinite or multiples of `step`."""
        users = self.consumers.get(value, [])
        if value in self.graph_outputs or len(users) != 1:
            return None
        bounds = clamp_bounds(self.graph, users[0], self.constants)
        return (users[0], bounds) if _on_step(bounds, step) else None

    def _sums_exactly(self, value: str, step: float, low: float, high: float) -> bool:
        """Whether every Add or Sum that reads `value` (quantized to multiples of `step` in
        [low, high] by a blocked quantizer) adds values on a grid of `step` or coarser, whose
        sum float32 holds exactly near the rounding constant. onnxruntime may fuse such an
        Add into the quantizer's last node, which then adds the other value before it
        subtracts the constant: the same result only when that sum does not round. It fuses
        only into a node whose output nothing else reads, so a value with other readers is
        safe."""
        users = self.consumers.get(value, [])
        if len(users) > 1:
            return True
        for user in users:
            if user.op_type not in ("Add", "Sum"):
                continue
            for other in user.input:
                grid = (step, low, high) if other == value else self.on_grid.get(other)
                if grid is None or not (grid[0] / step).is_integer():
                    return False
                reach = max(abs(low), abs(high)) + max(abs(grid[1]), abs(grid[2]))
                if reach >= math.ldexp(step, 22):
                    return False
        return True

    def note_grid(self, node: onnx.NodeProto) -> None:
        """Evaluation form: note what a node that is not a layer leaves on a grid (see
        `_unchanged_by`): a Relu or constant Clip of values on a grid, with bounds on it,
        an exact sum of two such values, or values that a node only picks or moves."""
        if node.op_type in ("Add", "Sum"):
            self._note_sum(node)
            return
        grid = self.on_grid.get(node.input[0] if node.input else "")
        if grid is None:
            return
        if node.op_type in _PICKS_VALUES:
            self.on_grid[node.output[0]] = grid
            return
        bounds = clamp_bounds(self.graph, node, self.constants)
        if _on_step(bounds, grid[0]):
            low, high = max(bounds[0], grid[1]), min(bounds[1], grid[2])
            self.on_grid[node.output[0]] = (grid[0], low, high)

    def clamps_nothing(self, node: onnx.NodeProto) -> bool:
        """Evaluation form: whether a Relu or constant Clip reads values on a grid that lie
        within its bounds already (a layer's quantized output, say). It is then an Identity,
        which onnxruntime removes."""
        grid = self.on_grid.get(node.input[0] if node.input else "")
        bounds = clamp_bounds(self.graph, node, self.constants) if grid else None
        return bounds is not None and bounds[0] <= grid[1] and grid[2] <= bounds[1]

    def _note_sum(self, node: onnx.NodeProto) -> None:
        """Two values on power-of-two grids sum onto the finer grid, exactly while the sum
        stays within 2**24 of its steps."""
        grids = [self.on_grid.get(name) for name in node.input]
        if len(grids) != 2 or None in grids:
            return
        step = min(grid[0] for grid in grids)
        low, high = sum(grid[1] for grid in grids), sum(grid[2] for grid in grids)
        if max(abs(low), abs(high)) <= math.ldexp(step, 24):
            self.on_grid[node.output[0]] = (step, low, high)

    def quantizer(
        self,
        source: str,
        fmt: Format,
        owner: str,
        emitted: list,
        arithmetic: bool = False,
        fuses: bool = True,
        channels: int | None = None,
    ) -> str:
        """The name of `source` quantized to `fmt` for the layer `owner`, emitting what that
        needs. In the evaluation form, a source already on the format's grid and within its
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
            self.moved_pads.add(pad.name)
            self.quantized[key] = copy.output[0]
        if key in self.quantized:
            return self.quantized[key]
        form = "arithmetic" if arithmetic else "default"
        if self.elide and _unchanged_by(fmt, self.on_grid.get(source)):
            if not fuses:
                return source
            form = "unclipped"
        target = self.names.fresh(f"{source}_{fmt.name}")
        name = self.names.fresh(f"{owner}_input_quantizer")
        if blocked:
            rounding = self.rounding.nodes(
                fmt.step, fmt.min, fmt.max, source, target, name, channels
            )
            emitted.extend(rounding)
        else:
            emitted.append(quantizer_node(fmt, source, target, name, form))
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
        int8 codes and its inputs 8-bit DFP.

        The evaluation form takes the parameters as float constants, the bias inside the
        layer, and fuses nothing (integer kernels' results depend on the CPU): onnxruntime
        runs its fastest convolutions only on constant weights. The products and their sum
        are float32 arithmetic, bit for bit the written (sim) model's where float32 sums the
        products exactly (every partial sum within 2**24 steps of the product grid, as with
        narrow widths); a sim model sums the other layers in float64, so there the two forms
        may differ in the last bits."""
        axis = _normalised_axis(plan.layer.weight_axis, self.constants.rank(plan.layer.weight))
        weights = self.values(self.constants, plan.layer.weight, plan.weights, axis)
        weight_name = self.names.fresh(f"{node.name}_weight")
        fuses = False
        if self.evaluation:
            self._emit(float_tensor(weight_name, weights), emitted)
        else:
            stored_weights = store(weight_name, weights, plan.weights, axis)
            int8_codes = stored_weights.initializers[0].data_type == TensorProto.INT8
            fuses = int8_codes and _inputs_may_fuse(plan) and not self.elide
            self._emit(stored_weights, emitted)
        floats = self.evaluation
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
    evaluation: bool = False,
    values: QuantizedValues | None = None,
    elide: bool = False,
) -> Rewritten:
    """Apply `plan` to a copy of `model`.

    With `elide` (the sim target; the evaluation form implies it), no layer fuses into
    integer kernels, and what changes no value is left out: an input quantizer of values
    already on its format's grid and within its range (a layer's quantized output read
    through a ReLU6, MaxPool or Reshape, say), and a Relu or constant Clip of values within
    its bounds, which becomes an Identity. The DFP quantizers of convolutions round in the
    blocked form (`blocked_rounding`), taking over a clamp after the layer.

    With `evaluation`, the form the search scores, for a session that disables
    WeightBiasQuantization (`EVALUATION_DISABLED_OPTIMIZERS`): the same values with fewer
    passes over the data.
    - Layers with FP32 weights get QuantizeLinear/DequantizeLinear input quantizers instead of
      the float-arithmetic ones (six elementwise passes each).
    - Quantized parameters become float constants, the bias inside the layer: no layer fuses
      into onnxruntime's integer kernels, whose results depend on the CPU (`parameters`).
    - A narrow output that a clamp alone reads within its range is not clipped to its width,
      and an input already on its format's grid is not quantized again beyond what fusion
      needs (`quantizer`); a clamp of values within its bounds becomes an Identity.
    The values are the written model's bit for bit where every layer with quantized inputs
    has a quantized output and float32 sums it exactly; elsewhere float sums may round in
    another order (onnxruntime may, for one, add a residual into a float layer's sum).
    The result also says where each layer's nodes start (the search cuts networks there).
    `values` keeps quantized parameters for later rewrites of the same model.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    values = values if values is not None else QuantizedValues()
    elide = elide or evaluation
    rewriter = _Rewriter(result.graph, evaluation, elide, values)
    by_node = {layer_plan.layer.node: layer_plan for layer_plan in plan.layers}
    nodes: list[onnx.NodeProto] = []
    starts: dict[str, str] = {}
    for node in model.graph.node:
        if node.name in rewriter.absorbed:
            continue
        layer_plan = by_node.get(node.name)
        if elide and not layer_plan and rewriter.clamps_nothing(node):
            node = onnx.helper.make_node("Identity", node.input[:1], node.output, name=node.name)
        emitted = rewriter.layer(node, layer_plan) if layer_plan else [node]
        if layer_plan:
            starts[node.name] = emitted[0].name
        nodes.extend(emitted)
        if elide and not layer_plan:
            rewriter.note_grid(node)
    del result.graph.node[:]
    result.graph.node.extend(_without_unused(nodes, rewriter.moved_pads, result.graph))
    _drop_unused_initializers(result.graph)
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


def _on_step(bounds: tuple[float, float] | None, step: float) -> bool:
    """Whether clamp bounds are known and each infinite or a multiple of `step`."""
    return bounds is not None and all(math.isinf(b) or (b / step).is_integer() for b in bounds)


def _clamped_within(bounds: tuple[float, float] | None, fmt: Format) -> bool:
    return (
        isinstance(fmt, DFP) and bounds is not None and fmt.min <= bounds[0] <= bounds[1] <= fmt.max
    )


def _unchanged_by(fmt: Format, values: tuple[float, float, float] | None) -> bool:
    """Whether quantizing to `fmt` leaves values on a grid of `step` within [low, high]
    unchanged: the format's step divides the grid's, and its range holds them."""
    if values is None or not isinstance(fmt, DFP):
        return False
    step, low, high = values
    return (step / fmt.step).is_integer() and fmt.min <= low and high <= fmt.max


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


def _without_unused(nodes: list[onnx.NodeProto], pads: set[str], graph) -> list[onnx.NodeProto]:
    """`nodes` less the original `pads` that nothing uses any more (their layer now reads a
    copy placed after its quantizer)."""
    used = output_names(graph) | {name for node in nodes for name in values_read(node)}
    return [node for node in nodes if node.name not in pads or node.output[0] in used]


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the FP32 parameters that their quantized versions replaced."""
    used = {name for node in graph.node for name in node.input}
    used |= {value.name for value in graph.output}
    remove_initializers(graph, {t.name for t in graph.initializer if t.name not in used})
