"""The reference datapath of a compiled model: its graph run by `onnx.reference`, the
quantizers by their NumPy references and every planned layer by `IntegerLayer`. It reads the
plan from the model's `rcompile.plan` metadata, so it runs any model rcompile wrote, in
either target; the ops outside the layer model run in float32 as ONNX defines them, those
whose rounding ONNX leaves to the runtime by onnxruntime's CPU kernels (`runtime_ops`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from rcompile.errors import ReferenceError
from rcompile.graph import consumers
from rcompile.onnx_ops import DOMAIN
from rcompile.plan import Accumulator, named_format, recorded_plan
from rcompile.reference.layer import LayerCodes, LayerSpec
from rcompile.reference.ops import QUANTIZERS, REFERENCE_DOMAIN, integer_layer_kernel
from rcompile.reference.runtime_ops import runtime_kernels


class Reference:
    """Runs a compiled model through the reference datapath. After each run, `codes` holds
    every integer layer's tensors (`LayerCodes`) by node name, and `specs` the layers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        prepared, self.specs = _prepared(model)
        self.codes: dict[str, LayerCodes] = {}
        kernels = [*QUANTIZERS, integer_layer_kernel(self.specs, self.codes)]
        kernels += runtime_kernels(prepared)
        self._evaluator = ReferenceEvaluator(prepared, new_ops=kernels)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The model's outputs for `feeds`, in the order of its graph outputs."""
        return self._evaluator.run(None, feeds)


def plan_layers(model: onnx.ModelProto) -> list[dict]:
    """The plan's layers as the model's metadata records them."""
    plan = recorded_plan(model)
    if plan is None:
        raise ReferenceError("the model has no rcompile plan (rcompile.plan metadata)")
    return plan["layers"]


def _prepared(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, LayerSpec]]:
    """A copy of `model` whose layer nodes are `IntegerLayer` nodes, the quantizer functions
    dropped (kernels replace them), and the specs of its layers by node name."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    plans = {entry["node"]: entry for entry in plan_layers(model)}
    users = consumers(graph)
    specs, absorbed, nodes = {}, {}, []
    for node in graph.node:
        if node.name not in plans:
            nodes.append(node)
            continue
        entry = plans[node.name]
        bias_add = _bias_add(node, entry, users)
        spec = _spec(node, entry, bias_add is not None)
        layer = onnx.NodeProto()
        layer.CopyFrom(node)
        layer.op_type, layer.domain = "IntegerLayer", REFERENCE_DOMAIN
        if bias_add is not None:
            layer.input.append(_other(bias_add, node.output[0]))
            layer.output[0] = bias_add.output[0]
            absorbed[bias_add.name] = True
        specs[node.name] = spec
        nodes.append(layer)
    missing = sorted(set(plans) - set(specs))
    if missing:
        raise ReferenceError(f"planned layer {missing[0]!r} is not in the model")
    del graph.node[:]
    graph.node.extend(node for node in nodes if node.name not in absorbed)
    kept = [f for f in result.functions if f.domain != DOMAIN]
    del result.functions[:]
    result.functions.extend(kept)
    result.opset_import.append(onnx.helper.make_opsetid(REFERENCE_DOMAIN, 1))
    return result, specs


def _bias_add(node: onnx.NodeProto, entry: dict, users) -> onnx.NodeProto | None:
    """The Add that adds a planned bias after a layer node that has none inside."""
    has_bias = len(node.input) > 2 and node.input[2]
    readers = users.get(node.output[0], [])
    if not entry["bias"] or has_bias:
        return None
    if len(readers) != 1 or readers[0].op_type != "Add":
        raise ReferenceError(f"layer {node.name!r}: its planned bias is not in the model")
    return readers[0]


def _other(add: onnx.NodeProto, value: str) -> str:
    return next(name for name in add.input if name != value)


def _spec(node: onnx.NodeProto, entry: dict, bias_outside: bool) -> LayerSpec:
    """The layer's spec; its node as the plan's op (a wide layer is a function call)."""
    layer = onnx.NodeProto()
    layer.CopyFrom(node)
    layer.op_type, layer.domain, layer.overload = entry["op_type"], "", ""
    return LayerSpec(
        node=layer,
        inputs=tuple(named_format(name) for name in entry["inputs"]),
        output=named_format(entry["output"]),
        weights=tuple(named_format(name) for name in entry["weights"]),
        bias=tuple(named_format(name) for name in entry["bias"]),
        weight_axis=entry.get("weight_axis"),
        bias_outside=bias_outside,
        accumulator=Accumulator(**entry.get("accumulator", {})),
    )
