"""Quantizer nodes replaced by their function bodies with the attributes bound.

onnxruntime inlines a model-local function at every session it builds and then folds the
constants the body derives from the node's attributes. The search builds a session per
candidate, so its evaluation form carries each quantizer's body with those constants
already folded (`bound_body`, once per op, overload and attributes): the same values bit
for bit, and sessions that build faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import onnx
from onnx import helper

from rcompile.onnx_ops import DOMAIN, bound_body


@dataclass(frozen=True)
class FoldedBody:
    """A quantizer's body reading `X` and writing `Y`; `constants` are the folded values
    its nodes read, named as they read them."""

    nodes: tuple[onnx.NodeProto, ...]
    constants: tuple[onnx.TensorProto, ...]


def specialise(model: onnx.ModelProto) -> None:
    """Replace every quantizer node of `model` by its folded body, in place, and drop the
    functions. A body's values are named after its node; its first node keeps the node's
    name. Constants are shared by the nodes of one key."""
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    constants: dict[str, onnx.TensorProto] = {}
    for node in graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        attributes = tuple(sorted((a.name, helper.get_attribute_value(a)) for a in node.attribute))
        body = _folded(node.op_type, node.overload, attributes)
        prefix = f"{node.op_type}_{node.overload}_" + "_".join(
            f"{k}{_text(v)}" for k, v in attributes
        )
        for constant in body.constants:
            constants.setdefault(f"{prefix}/{constant.name}", constant)
        nodes.extend(_renamed(body, node, prefix))
    del graph.node[:]
    graph.node.extend(nodes)
    for name, constant in constants.items():
        copy = onnx.TensorProto()
        copy.CopyFrom(constant)
        copy.name = name
        graph.initializer.append(copy)
    kept = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(kept)
    imports = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)


def _renamed(body: FoldedBody, node: onnx.NodeProto, prefix: str) -> list[onnx.NodeProto]:
    """The body's nodes for `node`: `X` and `Y` become its input and output, constants
    the shared names, other values names of its own; the first node keeps its name."""
    constant_names = {constant.name for constant in body.constants}

    def name(value: str) -> str:
        if value == "X":
            return node.input[0]
        if value == "Y":
            return node.output[0]
        if value in constant_names:
            return f"{prefix}/{value}"
        return f"{node.name}/{value}"

    renamed = []
    for index, part in enumerate(body.nodes):
        copy = onnx.NodeProto()
        copy.CopyFrom(part)
        copy.name = node.name if index == 0 else f"{node.name}/{index}"
        copy.input[:] = [name(value) if value else "" for value in part.input]
        copy.output[:] = [name(value) for value in part.output]
        renamed.append(copy)
    return renamed


@cache
def _folded(
    op_type: str, overload: str, attributes: tuple[tuple[str, int | bytes], ...]
) -> FoldedBody:
    body = bound_body(op_type, overload, dict(attributes))
    nodes, constants = [], []
    for node in body.node:
        if node.op_type == "Constant":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            constants.append(tensor)
        else:
            nodes.append(node)
    return FoldedBody(tuple(nodes), tuple(constants))


def _text(value: int | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
