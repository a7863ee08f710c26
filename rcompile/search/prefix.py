"""Reusing the start of a network across candidates that differ only from one layer on.

The per-layer search lowers one knob at a time: every trial of that knob computes the same
values up to the knob's layer. A trial keeps the values that cross from the start of the
network into the part from the knob's layer on; later trials whose nodes and constants before
the cut are the same run only that part, from those values. The next knob's first trial, when
its layer comes later and nothing before the old cut changed, likewise starts at the old cut
and keeps the values at its own. The kept values are exact copies of what the whole network
computes, so the outputs do not change (tests compare them bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from rcompile.graph import values_read
from rcompile.lowering.rewrite import Rewritten

# Values kept across the cut, at most (beyond it every trial runs whole).
MAX_KEPT_BYTES = 2 * 1024**3

# Opens a session on a serialized model; the session maps (output names, feeds) to outputs.
OpenSession = Callable[[bytes], Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]]


class SharedPrefix:
    """Values kept at the cut before one layer, for candidates that differ from `layer` on
    (`layer` may move on to another knob's; the values kept stay until replaced)."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self._at: str | None = None
        self._before: bytes | None = None
        self._names: tuple[str, ...] = ()
        self._kept: list[dict[str, np.ndarray]] = []

    def outputs(
        self, rewritten: Rewritten, batches: list[dict[str, np.ndarray]], session: OpenSession
    ) -> tuple[np.ndarray, bool]:
        """The model's first output over the batches, and whether kept values were used."""
        model = rewritten.model
        nodes = list(model.graph.node)
        position = {node.name: index for index, node in enumerate(nodes)}
        first = model.graph.output[0].name
        cut = self._cut(rewritten, position, first, self.layer)
        source = self._reusable(rewritten, nodes, position, first, cut)
        keep = _crossing(nodes[:cut], nodes[cut:]) if cut > source else []
        made = {name for node in nodes[source:] for name in node.output}
        extra = [name for name in keep if name in made]
        runnable = model if not source else _suffix(model, nodes[source:], list(self._names))
        run = session(_with_outputs(runnable, extra).SerializeToString())
        wanted = {value.name for value in runnable.graph.input}
        outputs, kept, size = [], [], 0
        previous = self._kept if source else [{} for _ in batches]
        for batch, old in zip(batches, previous, strict=True):
            feeds = {k: v for k, v in {**batch, **old}.items() if k in wanted}
            results = run([first, *extra], feeds)
            outputs.append(results[0])
            values = dict(zip(extra, results[1:], strict=True))
            kept.append({name: values[name] if name in values else old[name] for name in keep})
            size += sum(kept[-1][name].nbytes for name in keep)
            if size > MAX_KEPT_BYTES:
                keep, kept = [], []
        if keep:
            self._at, self._names, self._kept = self.layer, tuple(keep), kept
            self._before = _fingerprint(model, nodes[:cut])
        return np.concatenate(outputs), bool(source)

    @staticmethod
    def _cut(rewritten: Rewritten, position: dict[str, int], first: str, layer: str) -> int:
        """Where the nodes of `layer` start, or 0 where the network cannot be cut there (the
        layer is not in it, or the first output is made before it)."""
        cut = position.get(rewritten.starts.get(layer, ""), 0)
        nodes = rewritten.model.graph.node
        return cut if any(first in node.output for node in nodes[cut:]) else 0

    def _reusable(self, rewritten, nodes, position, first, cut) -> int:
        """The cut of the kept values when this candidate can start there: at or before its
        own cut, with the same nodes and constants before it. Else 0 (run whole)."""
        if self._at is None:
            return 0
        kept_cut = self._cut(rewritten, position, first, self._at)
        if not 0 < kept_cut <= cut:
            return 0
        if not set(_crossing(nodes[:kept_cut], nodes[kept_cut:])) <= set(self._names):
            return 0
        same = _fingerprint(rewritten.model, nodes[:kept_cut]) == self._before
        return kept_cut if same else 0


def _fingerprint(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> bytes:
    """The nodes and the constants they read: equal for two networks that compute the same
    values before a cut."""
    read = {name for node in nodes for name in values_read(node)}
    constants = [tensor for tensor in model.graph.initializer if tensor.name in read]
    return b"".join(item.SerializeToString() for item in (*nodes, *constants))


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
