"""Reusing the start of a network across candidates that differ only from one layer on.

The per-layer search bisects one knob at a time: every trial of that knob computes the same
values up to the knob's layer. The first trial runs whole and keeps the values that cross into
the rest of the network; later trials whose nodes before the cut are the same run only the
rest, from those values. The kept values are exact copies of what the whole network computes,
so the outputs do not change (tests compare them bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from rcompile.graph import values_read
from rcompile.passes.rewrite import Rewritten

# Values kept across the cut, at most (beyond it every trial runs whole).
MAX_KEPT_BYTES = 2 * 1024**3

# Opens a session on a serialized model; the session maps (output names, feeds) to outputs.
OpenSession = Callable[[bytes], Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]]


class SharedPrefix:
    """The values before layer `layer` of the last candidate that ran whole."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self._before: bytes | None = None
        self._names: tuple[str, ...] = ()
        self._kept: list[dict[str, np.ndarray]] = []

    def outputs(
        self, rewritten: Rewritten, batches: list[dict[str, np.ndarray]], session: OpenSession
    ) -> tuple[np.ndarray, bool]:
        """The model's first output over the batches, and whether kept values were used."""
        model = rewritten.model
        nodes = list(model.graph.node)
        names = [node.name for node in nodes]
        start = rewritten.starts.get(self.layer)
        cut = names.index(start) if start in names else 0
        before = b"".join(node.SerializeToString() for node in nodes[:cut])
        crossing = _crossing(nodes[:cut], nodes[cut:])
        first = model.graph.output[0].name
        made_after = {name for node in nodes[cut:] for name in node.output}
        cuttable = bool(cut) and first in made_after
        if cuttable and before == self._before and set(crossing) <= set(self._names):
            suffix = _suffix(model, nodes[cut:], crossing)
            wanted = {value.name for value in suffix.graph.input}
            run = session(suffix.SerializeToString())
            outputs = [
                run([first], {k: v for k, v in {**batch, **kept}.items() if k in wanted})[0]
                for batch, kept in zip(batches, self._kept, strict=True)
            ]
            return np.concatenate(outputs), True
        crossing = crossing if cuttable else []
        run = session(_with_outputs(model, crossing).SerializeToString())
        outputs, kept, size = [], [], 0
        for batch in batches:
            results = run([first, *crossing], batch)
            outputs.append(results[0])
            kept.append(dict(zip(crossing, results[1:], strict=True)))
            size += sum(value.nbytes for value in results[1:])
            if size > MAX_KEPT_BYTES:
                crossing, kept = [], []
        if crossing:
            self._before, self._names, self._kept = before, tuple(crossing), kept
        return np.concatenate(outputs), False


def _crossing(before: list[onnx.NodeProto], after: list[onnx.NodeProto]) -> list[str]:
    """The values that nodes `before` the cut produce and nodes `after` it read, in a fixed
    order."""
    produced = {name for node in before for name in node.output if name}
    read = []
    for node in after:
        read += [name for name in values_read(node) if name in produced and name not in read]
    return read


def _value_info(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    """The type the model records for `name`; values without one are quantizer outputs and
    the like, all float."""
    for value in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        if value.name == name:
            return value
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    present = {value.name for value in result.graph.output}
    result.graph.output.extend(_value_info(model, n) for n in names if n not in present)
    return result


def _suffix(model: onnx.ModelProto, nodes: list[onnx.NodeProto], crossing: list[str]):
    """The network from the cut on: `nodes`, reading the crossing values as inputs."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    read = {name for node in nodes for name in values_read(node)}
    inputs = [value for value in model.graph.input if value.name in read]
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    del result.graph.input[:]
    result.graph.input.extend([*inputs, *(_value_info(model, name) for name in crossing)])
    kept = [tensor for tensor in model.graph.initializer if tensor.name in read]
    del result.graph.initializer[:]
    result.graph.initializer.extend(kept)
    return result
