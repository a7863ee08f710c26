"""Small read helpers over an ONNX graph: who produces and who consumes each value, and the
constant tensors (initializers and Constant nodes) as NumPy arrays."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output if output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    result: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                result[name].append(node)
    return result


def node_attributes(node: onnx.NodeProto) -> dict[str, object]:
    """A node's attributes by name, as Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node's attributes hold (an If's branches, a Loop's body)."""
    graphs = []
    for attribute in node.attribute:
        graphs += [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else []
        graphs += list(attribute.graphs)
    return graphs


def subgraphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """Every graph nested in `graph`'s nodes, at any depth."""
    found = []
    for node in graph.node:
        for body in bodies(node):
            found += [body, *subgraphs(body)]
    return found


def values_read(node: onnx.NodeProto) -> list[str]:
    """The values a node reads, in order, those its subgraphs read from outer scopes included."""
    names = [name for name in node.input if name]
    for body in bodies(node):
        names += [name for inner in body.node for name in values_read(inner)]
    return names


def initializers(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of `name` if it is an initializer or the output of a Constant node."""
    return Constants(graph)(name)


class Constants:
    """The constant tensors of a graph (initializers and Constant node outputs) by name,
    indexed once for a pass that looks up many: scanning the graph for each costs more than
    some passes' own work."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._tensors = {tensor.name: tensor for tensor in graph.initializer}
        for node in graph.node:
            if node.op_type != "Constant":
                continue
            for attribute in node.attribute:
                if attribute.name == "value":
                    self._tensors.setdefault(node.output[0], attribute.t)

    def __call__(self, name: str) -> np.ndarray | None:
        tensor = self._tensors.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def rank(self, name: str) -> int:
        """The number of dimensions of constant `name`, without reading its values."""
        return len(self._tensors[name].dims)


def replace_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    """Set initializer `name` to `value`, adding it if missing."""
    tensor = numpy_helper.from_array(value, name)
    for index, existing in enumerate(graph.initializer):
        if existing.name == name:
            graph.initializer[index].CopyFrom(tensor)
            return
    graph.initializer.append(tensor)


def remove_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the named initializers, and their graph inputs where old IR versions list them."""
    kept = [tensor for tensor in graph.initializer if tensor.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [value for value in graph.input if value.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)


def output_names(graph: onnx.GraphProto) -> set[str]:
    return {value.name for value in graph.output}


class Names:
    """Hands out value and node names that no part of the graph uses yet."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        taken = {tensor.name for tensor in graph.initializer}
        taken |= {value.name for value in (*graph.input, *graph.output, *graph.value_info)}
        for node in graph.node:
            taken |= {*node.input, *node.output, node.name}
        self._taken = taken

    def fresh(self, base: str) -> str:
        candidate, suffix = base, 1
        while candidate in self._taken:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        self._taken.add(candidate)
        return candidate


def remove_unread(graph: onnx.GraphProto) -> None:
    """Remove the nodes whose outputs nothing reads (repeatedly, so whole dead chains go),
    then the initializers nothing reads."""
    while True:
        read = {name for node in graph.node for name in values_read(node)}
        read |= output_names(graph)
        live = [node for node in graph.node if any(out in read for out in node.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    read = {name for node in graph.node for name in values_read(node)} | output_names(graph)
    remove_initializers(graph, {t.name for t in graph.initializer if t.name not in read})


def per_axis(node: onnx.NodeProto, values: np.ndarray, ndim: int) -> np.ndarray:
    """A DequantizeLinear's scale or zero point (`values`) shaped to broadcast against its
    codes of rank `ndim`: as it is when it is one value, else along the node's axis."""
    if values.size <= 1:
        return values.reshape(())
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % ndim
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)
