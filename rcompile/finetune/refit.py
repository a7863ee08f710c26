"""Re-choosing the activations' fractional lengths after training (`--refit-activations`).

Compile chose each activation's fractional length from the FP32 model's ranges; trained
weights move what the layers compute, and the loss the student trained on is a better judge
than a range. Each DFP activation grid in turn (in graph order; a layer's output and the
inputs that read it through Relu, pooling or reshapes, where their formats agree) tries one
fractional bit less and one more; a change stays where it lowers the distillation loss on
the training samples, measured with onnxruntime on the model lowered from the changed plan
(what is judged is what is written). Widths, signedness and the weights' formats stay; a
bias on the accumulator grid follows its input's grid. The cost: two lowerings and two
onnxruntime passes over the training samples per grid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from rcompile.api import Source
from rcompile.errors import SchemeError
from rcompile.exporter import finish_model, rcompile_entries
from rcompile.finetune.graph import Shadow
from rcompile.finetune.train import Samples, distillation_loss
from rcompile.formats import DFP, Format
from rcompile.graph import producers, replace_initializer
from rcompile.lowering import lower
from rcompile.lowering.grids import PICKS_VALUES
from rcompile.passes.declared_shapes import keep_declared_shapes
from rcompile.passes.equalize import equalize_layers
from rcompile.passes.layers import find_layers
from rcompile.plan import (
    PLAN_KEY,
    Accumulator,
    LayerPlan,
    Plan,
    accumulator_biases,
    named_format,
    plan_record,
    recorded_plan,
    within_accumulator,
)
from rcompile.progress import progress_bar
from rcompile.score import predictions

# Ops after which a value keeps the grid of the one it came from.
_KEEPS_GRID = PICKS_VALUES | {"Relu"}


@dataclass(frozen=True)
class Refit:
    """Activation tensors (of one grid) whose fractional length changed, their formats, and
    the training loss before and after the change."""

    tensors: list[str]
    before: list[str]
    after: list[str]
    loss_before: float
    loss_after: float


def plan_of(model: onnx.ModelProto, source: onnx.ModelProto) -> Plan:
    """The plan `model` (written by rcompile from `source`) carries, as a `Plan` on the
    layers of `source`."""
    record = recorded_plan(model)
    layers = {layer.node: layer for layer in find_layers(source)}
    planned = []
    for entry in record["layers"]:
        planned.append(
            LayerPlan(
                layers[entry["node"]],
                tuple(named_format(name) for name in entry["inputs"]),
                named_format(entry["output"]),
                tuple(named_format(name) for name in entry["weights"]),
                tuple(named_format(name) for name in entry["bias"]),
                Accumulator(**entry["accumulator"]),
            )
        )
    return Plan(record["scheme"], tuple(planned), tuple(record["skipped"]))


def check_refittable(model: onnx.ModelProto) -> None:
    """Refuse, before any training, a plan without fixed-point activations: there is no
    fractional length to re-choose."""
    for layer in recorded_plan(model)["layers"]:
        names = [*layer["inputs"], layer["output"]]
        if any(isinstance(named_format(name), DFP) for name in names):
            return
    raise SchemeError(
        "--refit-activations re-chooses fixed-point activation formats, and this model's "
        "plan has none"
    )


def trained_source(
    model: onnx.ModelProto,
    source: onnx.ModelProto,
    values: dict[str, np.ndarray],
    shadows: list[Shadow],
) -> onnx.ModelProto:
    """The FP32 model `model` was lowered from, with the trained weights and biases (`values`
    by graph value, `shadows` saying whose layer and role each is): lowering it with the
    model's plan gives the fine-tuned model."""
    options = json.loads(rcompile_entries(model).get("rcompile.options", "{}"))
    if options.get("equalization"):
        source = equalize_layers(source).model
    layers = {layer.node: layer for layer in find_layers(source)}
    result = onnx.ModelProto()
    result.CopyFrom(source)
    shapes = {tensor.name: tuple(tensor.dims) for tensor in source.graph.initializer}
    for shadow in shadows:
        layer = layers[shadow.layer]
        name = layer.weight if shadow.role == "weights" else layer.bias
        value = values[shadow.value].astype(np.float32).reshape(shapes[name])
        replace_initializer(result.graph, name, value)
    return result


def lowered(
    model: onnx.ModelProto, source: onnx.ModelProto, plan: Plan, declared: frozenset[str]
) -> onnx.ModelProto:
    """`source` lowered with `plan` for the target `model` was written for."""
    target = rcompile_entries(model).get("rcompile.target", "sim")
    return keep_declared_shapes(lower(source, plan, target).model, declared).model


def finished(model: onnx.ModelProto, candidate: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """`candidate` with `model`'s rcompile metadata and `plan`'s record."""
    return finish_model(candidate, {**rcompile_entries(model), PLAN_KEY: plan_record(plan)})


@dataclass(frozen=True)
class Knob:
    """Plan entries that move together: (layer node, input index or OUTPUT), and the
    activation tensors they quantize."""

    entries: frozenset[tuple[str, int]]
    tensors: tuple[str, ...]


OUTPUT = -1


def activation_knobs(plan: Plan, graph: onnx.GraphProto) -> list[Knob]:
    """The DFP activation entries of `plan` in graph order, one knob per grid: a layer's
    output and the inputs of the layers that read it through Relu and ops that pick values
    (MaxPool, Flatten, ...) hold values of one grid where their formats agree."""
    entries = []
    for layer_plan in plan.layers:
        node, layer = layer_plan.layer.node, layer_plan.layer
        slots = [*enumerate(zip(layer.inputs, layer_plan.inputs, strict=True))]
        for slot, (tensor, fmt) in [*slots, (OUTPUT, (layer.output, layer_plan.output))]:
            if isinstance(fmt, DFP):
                entries.append(((node, slot), tensor, fmt))
    made_by = producers(graph)
    grid_of: dict[str, str] = {}
    for _, tensor, _ in entries:
        source, producer = tensor, made_by.get(tensor)
        while producer is not None and producer.op_type in _KEEPS_GRID and source not in grid_of:
            source = producer.input[0]
            producer = made_by.get(source)
        grid_of.setdefault(tensor, grid_of.get(source, source))
    knobs: dict[tuple[str, Format], list] = {}
    for entry, tensor, fmt in entries:
        knobs.setdefault((grid_of[tensor], fmt), []).append((entry, tensor))
    return [
        Knob(frozenset(e for e, _ in members), tuple(dict.fromkeys(t for _, t in members)))
        for members in knobs.values()
    ]


def shifted(plan: Plan, knob: Knob, delta: int, biases: dict[str, float]) -> Plan | None:
    """`plan` with the formats of `knob` `delta` fractional bits finer, and the
    accumulator-grid biases of the layers it feeds on their new grid; None where that is not
    a plan compile could have made (a fractional length out of range, a bias grid too fine
    for the accumulator)."""
    layers = []
    for layer_plan in plan.layers:
        node = layer_plan.layer.node
        inputs = tuple(
            _finer(fmt, delta) if (node, slot) in knob.entries else fmt
            for slot, fmt in enumerate(layer_plan.inputs)
        )
        output = layer_plan.output
        if (node, OUTPUT) in knob.entries:
            output = _finer(output, delta)
        before, after = (*layer_plan.inputs, layer_plan.output), (*inputs, output)
        if any(old is not None and new is None for old, new in zip(before, after, strict=True)):
            return None
        bias = layer_plan.bias
        if inputs[:1] != layer_plan.inputs[:1] and bias:
            bias = _bias_on_grid(layer_plan, inputs[0], biases.get(layer_plan.layer.bias, 0.0))
            if bias is None:
                return None
        layers.append(replace(layer_plan, inputs=inputs, output=output, bias=bias))
    return replace(plan, layers=tuple(layers))


def _finer(fmt: Format | None, delta: int) -> Format | None:
    if not isinstance(fmt, DFP):
        return fmt
    low, high = DFP.fl_range(fmt.bw)
    if not low <= fmt.fl + delta <= high:
        return None
    return DFP.of(fmt.bw, fmt.fl + delta, fmt.signed, fmt.rounding)


def _bias_on_grid(
    layer_plan: LayerPlan, new_input: Format, bias_max: float
) -> tuple[Format, ...] | None:
    """The layer's bias formats for input format `new_input`: a bias on its accumulator's
    grid (32-bit, one format per product grid) is planned again on the new grid, as compile
    plans it; any other bias keeps its formats. None where compile would coarsen the
    weights for the bias (`rcompile.plan.within_accumulator`): a plan with other weights."""
    planned = accumulator_biases(new_input, layer_plan.weights, bias_max)
    on_grid = all(isinstance(f, DFP) and f.bw == 32 for f in layer_plan.bias)
    if planned is None or not on_grid or len(planned) != len(layer_plan.bias):
        return layer_plan.bias
    if within_accumulator(new_input, layer_plan.weights, bias_max) != layer_plan.weights:
        return None
    return planned


def refit_activations(
    model: onnx.ModelProto,
    teacher: Source,
    trained: dict[str, np.ndarray],
    shadows: list[Shadow],
    samples: Samples,
    temperature: float,
    batch_size: int,
    show_progress: bool = False,
) -> tuple[onnx.ModelProto, list[Refit]]:
    """The greedy re-choice (see the module's docstring) for the fine-tuned `model`, whose
    trained values are `trained` (by graph value, `shadows` saying whose they are), judged
    by the distillation loss from `teacher` on `samples`. Returns the model and what
    changed."""
    source = trained_source(model, teacher.model, trained, shadows)
    plan = plan_of(model, source)
    initializers = {tensor.name: tensor for tensor in source.graph.initializer}
    biases = {
        name: float(np.abs(numpy_helper.to_array(initializers[name])).max(initial=0.0))
        for name in (layer_plan.layer.bias for layer_plan in plan.layers)
        if name in initializers
    }
    data = samples.dataset("training")
    target = torch.from_numpy(predictions(teacher.model, data, batch_size))

    def loss(candidate: onnx.ModelProto) -> float:
        student = torch.from_numpy(predictions(candidate, data, batch_size))
        return float(distillation_loss(student, target, temperature))

    best, changes, chosen = loss(model), [], None
    knobs = activation_knobs(plan, source.graph)
    with progress_bar("refitting activations", len(knobs), show_progress) as advance:
        for knob in knobs:
            tried = []
            for delta in (-1, 1):
                candidate = shifted(plan, knob, delta, biases)
                if candidate is not None:
                    written = lowered(model, source, candidate, teacher.declared_shapes)
                    tried.append((loss(written), delta, candidate, written))
            advance(1)
            if not tried:
                continue
            value, _, candidate, written = min(tried, key=lambda t: t[:2])
            if value < best:
                before, after = _names(plan, knob), _names(candidate, knob)
                changes.append(Refit(list(knob.tensors), before, after, best, value))
                best, plan, chosen = value, candidate, written
    return (model if chosen is None else finished(model, chosen, plan)), changes


def _names(plan: Plan, knob: Knob) -> list[str]:
    """The format names of `knob`'s entries in `plan`."""
    names = []
    for layer_plan in plan.layers:
        formats = [*layer_plan.inputs, layer_plan.output]
        for node, slot in knob.entries:
            if node == layer_plan.layer.node:
                names.append(formats[slot].name)
    return sorted(set(names))
